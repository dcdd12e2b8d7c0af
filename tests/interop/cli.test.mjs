// `balancehub admin` as a user runs it: HTTP mode against a running server (token from
// BALANCEHUB_ADMIN_TOKEN or --admin-token-file, URL from BALANCEHUB_URL or --url), offline mode
// on a data directory, one JSON line on stdout, exit codes 0/1/2, and --help for every command.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { binPath, explained, makeTempDir, recordSecrets, removeTempDir, startServer } from './harness.mjs';

const TOKEN = 'cli-admin-token-' + 'y'.repeat(16);
let tmp;
let tokenFile;
let server;
const ex = (fn) => explained(() => server, fn);

const COMMANDS = [
  'create-user',
  'delete-user',
  'deposit',
  'withdraw',
  'allocate',
  'release',
  'trade',
  'set-limits',
  'set-rates',
  'create-key',
  'revoke-key',
  'balances',
  'journal',
];

before(async () => {
  tmp = makeTempDir('balancehub-cli-');
  tokenFile = path.join(tmp, 'token');
  writeFileSync(tokenFile, TOKEN + '\n', { mode: 0o600 });
  server = await startServer({
    extraArgs: ['--admin-token-file', tokenFile],
    env: { BALANCEHUB_ADMIN_TOKEN: undefined },
  });
});

after(async () => {
  try {
    if (server) await server.stop();
  } finally {
    removeTempDir(tmp);
  }
});

// Runs `balancehub admin ARGS...` with a clean environment plus env; never throws.
function cli(args, env = {}) {
  const childEnv = { ...process.env };
  delete childEnv.BALANCEHUB_ADMIN_TOKEN;
  delete childEnv.BALANCEHUB_URL;
  Object.assign(childEnv, env);
  return new Promise((resolve) => {
    execFile(binPath(), ['admin', ...args], { env: childEnv, timeout: 20_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, signal: err?.signal ?? null, stdout, stderr });
    });
  });
}

// The server's env: URL (of the operations listener) and token from the environment, as documented.
const online = () => ({ BALANCEHUB_URL: server.adminUrl, BALANCEHUB_ADMIN_TOKEN: TOKEN });

// Exit 0 with exactly one JSON line on stdout and nothing on stderr; returns the parsed JSON.
function okLine(r, what) {
  assert.equal(r.code, 0, `${what}: exit code (stderr: ${r.stderr})`);
  assert.equal(r.stderr, '', `${what}: stderr`);
  assert.match(r.stdout, /^[^\n]+\n$/, `${what}: one line on stdout`);
  return recordSecrets(JSON.parse(r.stdout)); // create-key answers carry a key
}

// Exit code with one stderr line and an empty stdout.
function failLine(r, code, re, what) {
  assert.equal(r.code, code, `${what}: exit code (stdout: ${r.stdout} stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', `${what}: nothing on stdout`);
  assert.match(r.stderr, /^balancehub: [^\n]+\n$/, `${what}: one stderr line`);
  if (re) assert.match(r.stderr, re, `${what}: message`);
}

async function get(p) {
  const res = await fetch(server.adminUrl + p, { headers: { authorization: `Bearer ${TOKEN}` } });
  return { status: res.status, text: await res.text() };
}

test('--help for admin and for every command exits 0 with the usage on stdout', async () => {
  for (const args of [['--help'], ['-h']]) {
    const r = await cli(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^usage: balancehub admin /);
    for (const c of COMMANDS) assert.ok(r.stdout.includes(c), `admin --help lists ${c}`);
    // The admin API lives on the operations listener (serve --admin-listen, default port 5001).
    assert.ok(r.stdout.includes('http://127.0.0.1:5001'), 'admin --help names the default URL http://127.0.0.1:5001');
  }
  for (const c of COMMANDS) {
    for (const args of [[c, '--help'], [c, '-h'], ['--url', 'http://127.0.0.1:1', c, 'x', '--help']]) {
      const r = await cli(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr, '');
      assert.match(r.stdout, new RegExp(`^usage: balancehub admin \\[CONNECTION\\] ${c} `), args.join(' '));
    }
  }
});

test('usage errors exit 2 with one line on stderr', async () => {
  const cases = [
    [[], null],
    [['frobnicate'], /unknown admin command 'frobnicate'/],
    [['--frobnicate', 'balances', 'x'], /--frobnicate/],
    [['balances'], /wrong number of arguments/],
    [['balances', 'a', 'b'], /wrong number of arguments/],
    [['deposit', 'alice', 'BTC'], /wrong number of arguments/],
    [['trade', 'alice'], /wrong number of arguments/],
    [['trade', 'alice', 'BTC'], /ASSET=AMOUNT/],
    [['trade', 'alice', '=1'], /ASSET=AMOUNT/],
    [['trade', 'alice', 'BTC='], /ASSET=AMOUNT/],
    [['set-limits', 'alice'], /--total-max-exposure/],
    [['set-limits', 'alice', 'BTC'], /ASSET=MAX/],
    [['set-rates', 'EUR'], /wrong number of arguments/],
    [['set-rates', 'EUR', 'BTC:1'], /ASSET=RATE/],
    [['balances', 'alice', '--op-id', 'x'], /does not apply to balances/],
    [['create-key', 'alice', '--since', '1'], /does not apply to create-key/],
    [['deposit', 'alice', 'BTC', '1', '--op-id'], /--op-id/],
    [['journal', 'alice', '--since', 'abc'], /whole number/],
    [['journal', 'alice', '--limit', '-3'], /whole number/],
  ];
  for (const [args, re] of cases) {
    const r = await cli(args, online());
    if (args.length === 0) {
      assert.equal(r.code, 2, 'no command');
      assert.match(r.stderr, /^usage: balancehub admin /);
      continue;
    }
    failLine(r, 2, re, `admin ${args.join(' ')}`);
  }
});

test('HTTP mode: every command prints the server\'s answer JSON', { timeout: 60_000 }, ex(async () => {
  const env = online();
  let r = okLine(await cli(['create-user', 'cli-alice', '--base-currency', 'EUR', '--total-max-exposure', '1000'], env), 'create-user');
  assert.deepEqual(r, {
    userId: 'cli-alice',
    sequence: 1,
    assets: [],
    baseCurrency: 'EUR',
    totalCurrentExposure: 0,
    totalMaxExposure: 1000,
    deleted: false,
  });
  // Repeating create-user answers the first result (default op id).
  assert.deepEqual(okLine(await cli(['create-user', 'cli-alice', '--total-max-exposure', '1000'], env), 'create again'), r);

  const dep = await cli(['deposit', 'cli-alice', 'BTC', '1.5', '--op-id', 'cli-dep-1'], env);
  r = okLine(dep, 'deposit');
  assert.equal(r.sequence, 2);
  assert.deepEqual(r.data.assets, [{ name: 'BTC', available: 1.5, allocated: 0, currentExposure: 0, maxExposure: 0 }]);
  // The exact bytes: the CLI prints the server's body unchanged.
  const bal = await get('/admin/users/cli-alice/balances');
  assert.equal(dep.stdout, `{"sequence":2,"data":${bal.text}}\n`);
  const again = await cli(['deposit', 'cli-alice', 'BTC', '1.5', '--op-id', 'cli-dep-1'], env);
  assert.equal(again.code, 0);
  assert.equal(again.stdout, dep.stdout, 'a repeated --op-id answers the first result');

  // Without --op-id every run is a new operation with a random id.
  assert.equal(okLine(await cli(['deposit', 'cli-alice', 'ETH', '1'], env), 'deposit a').sequence, 3);
  assert.equal(okLine(await cli(['deposit', 'cli-alice', 'ETH', '1'], env), 'deposit b').sequence, 4);
  assert.equal(okLine(await cli(['withdraw', 'cli-alice', 'ETH', '0.5'], env), 'withdraw').sequence, 5);
  r = okLine(await cli(['allocate', 'cli-alice', 'BTC', '0.5'], env), 'allocate');
  assert.deepEqual(r.data.assets[0], { name: 'BTC', available: 1, allocated: 0.5, currentExposure: 0, maxExposure: 0 });
  r = okLine(await cli(['release', 'cli-alice', 'BTC', '0.25'], env), 'release');
  assert.deepEqual(r.data.assets[0], { name: 'BTC', available: 1.25, allocated: 0.25, currentExposure: 0, maxExposure: 0 });
  r = okLine(await cli(['trade', 'cli-alice', 'BTC=-0.25', 'EUR=15000', '--op-id', 'cli-trade'], env), 'trade');
  assert.deepEqual(r.data.assets.map((a) => [a.name, a.available]), [['BTC', 1], ['ETH', 1.5], ['EUR', 15000]]);
  r = okLine(await cli(['set-limits', 'cli-alice', 'BTC=1500', 'ETH=10', '--total-max-exposure', '2000'], env), 'set-limits');
  assert.equal(r.data.totalMaxExposure, 2000);
  assert.deepEqual(r.data.assets.map((a) => [a.name, a.maxExposure]), [['BTC', 1500], ['ETH', 10], ['EUR', 0]]);
  r = okLine(await cli(['set-limits', 'cli-alice', '--total-max-exposure', '2500'], env), 'set-limits total');
  assert.equal(r.data.totalMaxExposure, 2500);
  assert.deepEqual(okLine(await cli(['set-rates', 'EUR', 'BTC=60000.0', 'ETH=3000'], env), 'set-rates'), {
    baseCurrency: 'EUR',
    rates: { BTC: '60000', ETH: '3000' },
  });

  const b = await cli(['balances', 'cli-alice'], env);
  okLine(b, 'balances');
  assert.equal(b.stdout, (await get('/admin/users/cli-alice/balances')).text + '\n');

  const j = okLine(await cli(['journal', 'cli-alice', '--since', '1', '--limit', '2'], env), 'journal');
  assert.deepEqual(j.entries.map(({ time, ...e }) => e), [
    { sequence: 2, opId: 'cli-dep-1', op: 'deposit', asset: 'BTC', amount: '1.5' },
    { sequence: 3, opId: j.entries[1].opId, op: 'deposit', asset: 'ETH', amount: '1' },
  ]);
  assert.match(j.entries[1].opId, /^cli-[0-9a-f]{16}$/);
  const all = okLine(await cli(['journal', 'cli-alice'], env), 'journal all');
  assert.deepEqual(all.entries.map((e) => e.sequence), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(all.entries[7].op, 'trade');
  assert.deepEqual(all.entries[7].legs, [{ asset: 'BTC', amount: '-0.25' }, { asset: 'EUR', amount: '15000' }]);

  const key = okLine(await cli(['create-key', 'cli-alice'], env), 'create-key');
  assert.deepEqual(Object.keys(key), ['keyId', 'apiKey']);
  const negotiate = () =>
    fetch(`${server.hubUrl}/negotiate?negotiateVersion=1`, { method: 'POST', headers: { authorization: `Bearer ${key.apiKey}` } });
  assert.equal((await negotiate()).status, 200);
  assert.deepEqual(okLine(await cli(['revoke-key', key.keyId], env), 'revoke-key'), { keyId: key.keyId, revoked: true });
  assert.equal((await negotiate()).status, 401);

  r = okLine(await cli(['delete-user', 'cli-alice', '--op-id', 'cli-del'], env), 'delete-user');
  assert.equal(r.deleted, true);
  assert.equal(r.sequence, 11);
}));

test('HTTP mode: --url and --admin-token-file, error answers and failures exit 1', { timeout: 60_000 }, ex(async () => {
  // Flags instead of the environment; options may follow the command too.
  okLine(await cli(['--url', server.adminUrl + '/', '--admin-token-file', tokenFile, 'balances', 'user-123']), 'flags before');
  okLine(await cli(['balances', 'user-123', '--url', server.adminUrl, '--admin-token-file', tokenFile]), 'flags after');
  // --url wins over BALANCEHUB_URL.
  okLine(await cli(['--url', server.adminUrl, 'balances', 'user-123'], { BALANCEHUB_URL: 'http://127.0.0.1:1', BALANCEHUB_ADMIN_TOKEN: TOKEN }), '--url over env');

  failLine(await cli(['balances', 'user-123'], { BALANCEHUB_URL: server.adminUrl }), 1, /HTTP 401.*BALANCEHUB_ADMIN_TOKEN/, 'no token');
  failLine(await cli(['balances', 'user-123'], { BALANCEHUB_URL: server.adminUrl, BALANCEHUB_ADMIN_TOKEN: 'wrong' }), 1, /HTTP 401/, 'wrong token');
  failLine(await cli(['balances', 'nobody'], online()), 1, /unknown user 'nobody'.*HTTP 404/, 'unknown user');
  failLine(await cli(['deposit', 'user-123', 'BTC', '-1'], online()), 2, null, 'a negative amount looks like an option');
  failLine(await cli(['deposit', 'user-123', 'BTC', '--', '-1'], online()), 1, /amount.*HTTP 400/, 'negative amount');
  failLine(await cli(['deposit', 'user-123', 'BTC', '1'.repeat(40)], online()), 1, /out of range.*HTTP 400/, '40 digits');
  failLine(await cli(['withdraw', 'user-123', 'DOGE', '1'], online()), 1, /HTTP 422/, 'rejected');
  failLine(await cli(['create-user', 'user-123', '--op-id', 'x'], online()), 1, /HTTP 409/, 'conflict');
  failLine(await cli(['revoke-key', 'ffffffffffffffff'], online()), 1, /HTTP 404/, 'unknown key');
  failLine(await cli(['balances', 'user-123'], { BALANCEHUB_URL: 'http://127.0.0.1:1', BALANCEHUB_ADMIN_TOKEN: TOKEN }), 1, /cannot reach http:\/\/127\.0\.0\.1:1/, 'connection refused');
  failLine(await cli(['--admin-token-file', path.join(tmp, 'missing'), 'balances', 'user-123'], { BALANCEHUB_URL: server.adminUrl }), 2, /token file/, 'missing token file');
  // Nothing changed the demo user.
  const b = JSON.parse((await get('/admin/users/user-123/balances')).text);
  assert.equal(b.userId, 'user-123');
  assert.equal(b.assets.length, 3);
}));

test('offline mode (--data DIR) works on a stopped server\'s data and answers alike', { timeout: 60_000 }, async () => {
  const dir = makeTempDir('balancehub-cli-offline-');
  try {
    const run = (...args) => cli(['--data', dir, ...args], { BALANCEHUB_URL: 'http://127.0.0.1:1' });
    const u = okLine(await run('create-user', 'off', '--total-max-exposure', '10'), 'create-user');
    assert.deepEqual(u, { userId: 'off', sequence: 1, assets: [], baseCurrency: 'EUR', totalCurrentExposure: 0, totalMaxExposure: 10, deleted: false });
    const d = await run('deposit', 'off', 'BTC', '0.000000000000000001', '--op-id', 'o1');
    okLine(d, 'deposit');
    assert.equal(
      d.stdout,
      '{"sequence":2,"data":{"userId":"off","sequence":2,"assets":[{"name":"BTC","available":0.000000000000000001,"allocated":0,"currentExposure":0,"maxExposure":0}],"baseCurrency":"EUR","totalCurrentExposure":0,"totalMaxExposure":10,"deleted":false}}\n',
    );
    assert.equal((await run('deposit', 'off', 'BTC', '5', '--op-id', 'o1')).stdout, d.stdout, 'repeat across processes');
    const k = okLine(await run('create-key', 'off'), 'create-key');
    assert.deepEqual(okLine(await run('revoke-key', k.keyId), 'revoke-key'), { keyId: k.keyId, revoked: true });
    const j = okLine(await run('journal', 'off'), 'journal');
    assert.deepEqual(j.entries.map((e) => e.opId), ['create-user', 'o1']);
    failLine(await run('balances', 'nobody'), 1, /unknown user 'nobody'/, 'offline error answer');
    failLine(await run('withdraw', 'off', 'BTC', '1'), 1, /HTTP 422/, 'offline rejection');
    // --url wins over --data.
    failLine(await cli(['--data', dir, '--url', 'http://127.0.0.1:1', 'balances', 'off']), 1, /cannot reach/, '--url wins');
  } finally {
    removeTempDir(dir);
  }
});
