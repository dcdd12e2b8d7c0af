// The C client library through its two front ends, against a real balancehub demo server:
// `balancehub balances` (table and JSON, JSON and MessagePack hub protocols, base or hub URL,
// key from the environment or a file), `balancehub watch` printing exactly the updates caused
// by admin deposits made during the test and surviving a server restart on the same port and
// data directory, a refused key (exit 1, one line), usage errors (exit 2), --help; and
// examples/get_balances (the seed's JavaScript example in C), built by `make examples` against
// the installed library, shared and static. Sequence-gap detection is unit-tested with a fake
// transport (tests/unit/test_client.c): a real server never skips a sequence.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { DEMO_DATA, HUB_PATH, binPath, explained, makeTempDir, removeTempDir, startServer, withTimeout } from './harness.mjs';

const TOKEN = randomBytes(24).toString('hex');
let dir; // data directory, kept across the restart test
let tokenFile;
let server;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  dir = makeTempDir('balancehub-client-');
  tokenFile = path.join(dir, 'admin-token');
  writeFileSync(tokenFile, TOKEN + '\n', { mode: 0o600 });
  server = await startServer({ dataDir: dir, ownDataDir: false, extraArgs: ['--admin-token-file', tokenFile] });
});

after(async () => {
  try {
    if (server) await server.stop();
  } finally {
    removeTempDir(dir);
  }
});

// A clean environment: nothing inherited that the client reads, plus env.
function clientEnv(env = {}) {
  const e = { ...process.env };
  delete e.BALANCEHUB_API_KEY;
  delete e.BALANCEHUB_URL;
  return Object.assign(e, env);
}

// Runs a program to completion; never throws.
function run(file, args, env = {}) {
  return new Promise((resolve) => {
    execFile(file, args, { env: clientEnv(env), timeout: 20_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, signal: err?.signal ?? null, stdout, stderr });
    });
  });
}

const balances = (args, env = { BALANCEHUB_API_KEY: server.apiKey }) => run(binPath(), ['balances', ...args], env);

function assertOk(r, what) {
  assert.deepEqual({ code: r.code, signal: r.signal }, { code: 0, signal: null }, `${what}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

let opCounter = 0;
async function deposit(amount, asset = 'BTC') {
  const res = await withTimeout(
    fetch(`${server.adminUrl}/admin/users/user-123/ops`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ opId: `client-test-${process.pid}-${++opCounter}`, op: 'deposit', asset, amount }),
    }),
    10_000,
    'admin deposit',
  );
  const text = await res.text();
  assert.equal(res.status, 200, text);
  const body = JSON.parse(text);
  // the data object's exact text ({"sequence":N,"data":{...}}), to compare digit for digit
  assert.ok(text.startsWith(`{"sequence":${body.sequence},"data":{`) && text.endsWith('}}'), text);
  body.dataText = text.slice(text.indexOf('"data":') + 7, -1);
  return body; // {sequence, data, dataText}
}

async function currentData() {
  const r = await balances(['--url', server.url, '--format', 'json']);
  assertOk(r, 'balances --format json');
  return JSON.parse(r.stdout);
}

// ---------------------------------------------------------------------------------------------
// balances

test('balances --format json prints the demo data object on one line, with either protocol', ex(async () => {
  const seen = [];
  for (const protocol of ['json', 'messagepack']) {
    const r = await balances(['--url', server.url, '--format', 'json', '--protocol', protocol]);
    assertOk(r, protocol);
    assert.equal(r.stderr, '');
    assert.ok(r.stdout.endsWith('}\n') && r.stdout.indexOf('\n') === r.stdout.length - 1, `one line: ${JSON.stringify(r.stdout)}`);
    const { sequence, ...data } = JSON.parse(r.stdout);
    assert.equal(typeof sequence, 'number');
    assert.deepEqual(data, DEMO_DATA);
    seen.push(r.stdout);
  }
  // Same bytes from both protocols (the demo amounts are exact in float64 too).
  assert.equal(seen[0], seen[1]);
  // Member order and number forms are the server's own.
  assert.match(seen[0], /^\{"userId":"user-123","sequence":\d+,"assets":\[\{"name":"BTC","available":0\.5,"allocated":0,"currentExposure":0,"maxExposure":1500\},/);
}));

test('balances prints a table by default', ex(async () => {
  const { sequence } = await currentData();
  const r = await balances(['--url', server.hubUrl]);
  assertOk(r, 'balances');
  assert.equal(
    r.stdout,
    `user-123  sequence ${sequence}  base currency EUR\n` +
      'ASSET  AVAILABLE  ALLOCATED  CURRENT EXPOSURE  MAX EXPOSURE\n' +
      'BTC          0.5          0                 0          1500\n' +
      'ETH            5          0                 0          1500\n' +
      'USDT        1000        250                 0          1500\n' +
      'TOTAL                                       0          1500\n',
  );
}));

test('the URL may be the base or the hub URL, from --url or BALANCEHUB_URL; the key from a file', ex(async () => {
  const keyFile = path.join(dir, 'api-key');
  writeFileSync(keyFile, `  ${server.apiKey}  \n`, { mode: 0o600 });
  const variants = [
    [['--url', server.url + '/'], { BALANCEHUB_API_KEY: server.apiKey }],
    [['--url', server.hubUrl + '/'], { BALANCEHUB_API_KEY: server.apiKey }],
    [[], { BALANCEHUB_API_KEY: server.apiKey, BALANCEHUB_URL: server.url }],
    [['--api-key-file', keyFile, '--url', server.url], { BALANCEHUB_API_KEY: 'bh_not_this_one' }],
  ];
  for (const [args, env] of variants) {
    const r = await balances(['--format', 'json', '--client-id', 'url-variants', ...args], env);
    assertOk(r, args.join(' '));
    assert.equal(JSON.parse(r.stdout).userId, 'user-123');
  }
}));

test('a refused key exits 1 with one line saying so', ex(async () => {
  for (const protocol of ['json', 'messagepack']) {
    const r = await balances(['--url', server.url, '--protocol', protocol], { BALANCEHUB_API_KEY: 'bh_wrong_key' });
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^balancehub: the server refused the API key \(HTTP 401\)/);
  }
  // watch too
  const w = await run(binPath(), ['watch', '--url', server.url], { BALANCEHUB_API_KEY: 'bh_wrong_key' });
  assert.equal(w.code, 1, w.stderr);
  assert.match(w.stderr, /refused the API key \(HTTP 401\)/);
}));

test('errors from the server and the network: exit 1, one line', ex(async () => {
  const long = await balances(['--url', server.url, '--client-id', 'x'.repeat(37)]);
  assert.equal(long.code, 1);
  assert.equal(long.stderr, 'balancehub: preChecksError: clientId must be at most 36 characters\n');
  const wrongPath = await balances(['--url', server.url + '/nope']);
  assert.equal(wrongPath.code, 1);
  assert.match(wrongPath.stderr, /^balancehub: negotiate failed: HTTP 404.*hub URL/);
  // a port nobody listens on (the server's port + an unlikely offset is not guaranteed free:
  // use a port that was just freed instead)
  const net = await import('node:net');
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const freePort = probe.address().port;
  await new Promise((resolve) => probe.close(resolve));
  const down = await balances(['--url', `http://127.0.0.1:${freePort}`]);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /^balancehub: cannot connect to http:\/\/127\.0\.0\.1:\d+: .*refused.*is the server running/);
  assert.equal(down.stderr.trim().split('\n').length, 1);
}));

test('usage errors exit 2; --help exits 0', ex(async () => {
  const key = { BALANCEHUB_API_KEY: server.apiKey };
  for (const cmd of ['balances', 'watch']) {
    for (const args of [['--bogus'], ['--format', 'xml'], ['--protocol', 'xml'], [server.apiKey], ['--url', 'ftp://x'], ['--url']]) {
      const r = await run(binPath(), [cmd, ...args], key);
      assert.equal(r.code, 2, `${cmd} ${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.ok(!r.stderr.includes(server.apiKey), 'the key is never echoed');
    }
    const nokey = await run(binPath(), [cmd, '--url', server.url]);
    assert.equal(nokey.code, 2);
    assert.match(nokey.stderr, /BALANCEHUB_API_KEY or use --api-key-file/);
    const missing = await run(binPath(), [cmd, '--api-key-file', path.join(dir, 'no-such-file')]);
    assert.equal(missing.code, 2);
    const help = await run(binPath(), [cmd, '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, new RegExp(`^usage: balancehub ${cmd} `));
    for (const opt of ['--url', '--client-id', '--protocol', '--format', '--ca-file', '--api-key-file']) assert.ok(help.stdout.includes(opt), opt);
  }
  const top = await run(binPath(), ['--help']);
  assert.match(top.stdout, /balances/);
  assert.match(top.stdout, /watch/);
}));

// ---------------------------------------------------------------------------------------------
// watch

// Starts `balancehub watch --format json ...`; lines() gives the stdout lines so far.
function startWatch(args = []) {
  const child = spawn(binPath(), ['watch', '--url', server.url, '--format', 'json', ...args], {
    env: clientEnv({ BALANCEHUB_API_KEY: server.apiKey }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const w = { child, out: '', err: '', exit: null };
  w.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve((w.exit = { code, signal }))));
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  let wake = () => {};
  child.stdout.on('data', (d) => {
    w.out += d;
    wake();
  });
  child.stderr.on('data', (d) => {
    w.err += d;
    wake();
  });
  w.lines = () => w.out.split('\n').filter(Boolean);
  // Resolves once pred() holds (checked on every output), or rejects after ms.
  w.until = async (pred, ms, what) => {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (w.exit) throw new Error(`watch exited (${JSON.stringify(w.exit)}) while waiting for ${what}\nstdout: ${w.out}\nstderr: ${w.err}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}\nstdout: ${w.out}\nstderr: ${w.err}`);
      await withTimeout(new Promise((resolve) => (wake = resolve)), left, what).catch(() => {});
    }
  };
  w.stop = async () => {
    if (!w.exit) child.kill('SIGINT');
    return withTimeout(w.exited, 10_000, 'watch to exit after SIGINT');
  };
  return w;
}

const READY = /^balancehub: watching user-123 from sequence (\d+) \(Ctrl-C to stop\)$/m;

for (const protocol of ['json', 'messagepack']) {
  test(`watch --format json (${protocol}) prints exactly the updates the deposits cause, then exits 0 on SIGINT`, { timeout: 60_000 }, ex(async () => {
    const w = startWatch(['--protocol', protocol, '--client-id', `watch-${protocol}`]);
    try {
      await w.until(() => READY.test(w.err), 10_000, 'the "watching" line');
      const start = Number(READY.exec(w.err)[1]);
      assert.equal(w.out, '', 'nothing on stdout before the first change');
      const amounts = ['0.25', '0.000000000000000001', '1000', '0.1'];
      const expected = [];
      for (const amount of amounts) expected.push(await deposit(amount));
      await w.until(() => w.lines().length >= amounts.length, 10_000, `${amounts.length} update lines`);
      const got = w.lines().map((l) => JSON.parse(l));
      assert.deepEqual(got.map((d) => d.sequence), amounts.map((_, i) => start + i + 1));
      if (protocol === 'json') {
        // every digit, byte for byte as the admin API answered (0.000000000000000001 included)
        assert.deepEqual(w.lines(), expected.map((e) => e.dataText));
      } else {
        // float64 on the wire: each amount is the shortest decimal of its double
        for (const [i, d] of got.entries()) {
          const want = expected[i].data;
          assert.equal(d.assets[0].name, 'BTC');
          assert.equal(d.assets[0].available, Number(want.assets[0].available));
          assert.deepEqual(d.assets.slice(1), want.assets.slice(1));
        }
      }
      const status = await w.stop();
      assert.deepEqual(status, { code: 0, signal: null }, w.err);
      assert.equal(w.lines().length, amounts.length, 'exactly the updates, nothing more');
    } finally {
      if (!w.exit) w.child.kill('SIGKILL');
    }
  }));
}

test('watch --format table prints a table per change; SIGTERM ends it with 0', { timeout: 30_000 }, ex(async () => {
  const w = startWatch(['--format', 'table']);
  try {
    await w.until(() => READY.test(w.err), 10_000, 'the "watching" line');
    const { sequence } = await deposit('1', 'ETH');
    await w.until(() => w.out.includes('TOTAL'), 10_000, 'a table');
    assert.match(w.out, new RegExp(`^user-123  sequence ${sequence}  base currency EUR\nASSET +AVAILABLE +ALLOCATED +CURRENT EXPOSURE +MAX EXPOSURE\n`));
    assert.match(w.out, /\nETH +\d+ +0 +0 +1500\n/);
    w.child.kill('SIGTERM');
    const status = await withTimeout(w.exited, 10_000, 'watch exit');
    assert.deepEqual(status, { code: 0, signal: null }, w.err);
  } finally {
    if (!w.exit) w.child.kill('SIGKILL');
  }
}));

test('watch survives a server restart on the same port and data: it reconnects, re-subscribes and goes on', { timeout: 90_000 }, ex(async () => {
  const w = startWatch(['--client-id', 'restart']);
  try {
    await w.until(() => READY.test(w.err), 10_000, 'the "watching" line');
    const first = await deposit('0.5');
    await w.until(() => w.lines().length === 1, 10_000, 'the first update');

    const port = server.port;
    await server.stop(); // SIGTERM: Close with allowReconnect, exit 0; the data stays
    server = null;
    await w.until(() => /connection lost .*reconnecting/.test(w.err), 10_000, 'the "reconnecting" line');
    server = await startServer({
      dataDir: dir,
      ownDataDir: false,
      extraArgs: ['--admin-token-file', tokenFile, '--listen', `127.0.0.1:${port}`],
    });
    assert.equal(server.port, port);
    await w.until(() => /\nbalancehub: reconnected\n/.test(w.err), 30_000, 'the "reconnected" line');
    const second = await deposit('0.5');
    assert.equal(second.sequence, first.sequence + 1, 'sequences continue across the restart');
    await w.until(() => w.lines().length === 2, 10_000, 'the update after the restart');
    assert.deepEqual(w.lines(), [first.dataText, second.dataText]);
    const status = await w.stop();
    assert.deepEqual(status, { code: 0, signal: null }, w.err);
  } finally {
    if (!w.exit) w.child.kill('SIGKILL');
  }
}));

// ---------------------------------------------------------------------------------------------
// examples/get_balances.c

test('examples/get_balances (shared and static) prints Connected, Command sent successfully and the event data', ex(async () => {
  const current = await currentData();
  for (const name of ['get_balances', 'get_balances-static']) {
    const exe = path.join(path.dirname(binPath()), 'examples', name);
    assert.ok(existsSync(exe), `${exe} is missing: run \`make examples\``);
    const r = await run(exe, [server.hubUrl], { BALANCEHUB_API_KEY: server.apiKey });
    assertOk(r, name);
    const lines = r.stdout.split('\n');
    assert.equal(lines[0], 'Connected to WebSocket');
    assert.equal(lines[1], 'Command sent successfully');
    assert.match(lines[2], /^Received event: \{/);
    assert.equal(lines.length, 4, r.stdout);
    assert.deepEqual(JSON.parse(lines[2].slice('Received event: '.length)), current);
    assert.equal(r.stderr, '');
  }
  // A refused key: "Connection failed", exit 1; BALANCEHUB_URL is read when no argument is given.
  const exe = path.join(path.dirname(binPath()), 'examples', 'get_balances');
  const bad = await run(exe, [], { BALANCEHUB_API_KEY: 'bh_wrong', BALANCEHUB_URL: server.url + HUB_PATH });
  assert.equal(bad.code, 1);
  assert.equal(bad.stdout, '');
  assert.equal(bad.stderr, 'Connection failed: the server refused the API key (HTTP 401)\n');
}));
