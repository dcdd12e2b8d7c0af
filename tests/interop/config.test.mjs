// Configuration and process control of `balancehub serve`: the precedence flag > environment >
// config file > default, observed through what the server does (the port it binds, the hub path
// it answers on, the per-key connection limit); the exact one-line errors (exit 2) for unknown
// flags, unknown and repeated config keys and bad values; `balancehub config check`; `serve
// --help` listing every option with its default; structured logs (--log-format json,
// --log-level); SIGHUP re-reading the log settings and reloading the TLS certificate while an
// open WebSocket stays up; and the operations listener (admin API and /metrics there only,
// 127.0.0.1:5001 by default). SIGTERM with both listeners still commits what was acknowledged.

import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import {
  HUB_PATH,
  RawSocket,
  RawWs,
  adminJson,
  binPath,
  buildConnection,
  makeTempDir,
  parseHttpResponse,
  removeTempDir,
  startConnection,
  startServer,
  withTimeout,
  makeTestPki,
} from './harness.mjs';

// The option table of the contract (docs: issue 7), with the defaults `serve --help` must show.
const OPTIONS = {
  config: 'none',
  listen: '127.0.0.1:5000',
  'admin-listen': '127.0.0.1:5001',
  'admin-token-file': 'none',
  'tls-cert': 'none',
  'tls-key': 'none',
  data: './data',
  store: 'sqlite:DIR/balancehub.db',
  demo: 'false',
  threads: 'number of CPUs',
  'hub-path': '/ExecutionLiveServer/v1',
  'keepalive-ms': '15000',
  'client-timeout-ms': '30000',
  'handshake-timeout-ms': '15000',
  'max-message': '32768',
  'max-body': '1048576',
  'cors-origins': 'none',
  'lp-poll-timeout-ms': '90000',
  'reconnect-window-ms': '30000',
  'replay-buffer': '1048576',
  'max-connections': '100000',
  'max-connections-per-key': '32',
  'rate-limit': '50',
  'rate-burst': '100',
  'max-output': '1048576',
  'max-head': '16384',
  'request-timeout-ms': '10000',
  'idle-timeout-ms': '60000',
  'auth-fail-rate': '1',
  'auth-fail-burst': '20',
  'log-level': 'info',
  'log-format': 'logfmt',
};
const envName = (name) => 'BALANCEHUB_' + name.toUpperCase().replaceAll('-', '_');

let tmp;
let pki;
const servers = new Set(); // spawned by spawnServer, killed in after() if a test left one

before(() => {
  tmp = makeTempDir('balancehub-config-');
  pki = makePki(path.join(tmp, 'pki'));
});

after(async () => {
  for (const s of servers) s.proc.kill('SIGKILL');
  removeTempDir(tmp);
});

// The environment for a child: this one without any BALANCEHUB_* variable, plus extra.
function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('BALANCEHUB_')) env[k] = v;
  return { ...env, ...extra };
}

let dirSeq = 0;
function newDir(prefix) {
  return path.join(tmp, `${prefix}-${++dirSeq}`);
}

function writeFile(name, text) {
  const f = path.join(tmp, name);
  writeFileSync(f, text);
  return f;
}

// `balancehub ARGS` to completion: {code, stdout, stderr}.
function run(args, env = {}) {
  const r = spawnSync(binPath(), args, { encoding: 'utf8', timeout: 15_000, env: childEnv(env) });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// A server started by this file without the harness, for options the harness always sets
// (--listen, --admin-listen). Resolves once "listening on" (and the admin line, if expected).
async function spawnServer(args, env = {}, { expectAdmin = false } = {}) {
  const proc = spawn(binPath(), ['serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env) });
  const s = { proc, out: '', err: '', exit: null };
  servers.add(s);
  s.exited = new Promise((resolve) =>
    proc.on('exit', (code, signal) => {
      s.exit = { code, signal };
      servers.delete(s);
      resolve(s.exit);
    }),
  );
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => (s.err += d));
  await withTimeout(
    new Promise((resolve, reject) => {
      proc.stdout.on('data', (d) => {
        s.out += d;
        const m = /listening on https?:\/\/[^:]+:(\d+)\n/.exec(s.out);
        const a = /^admin: http:\/\/(\S+):(\d+)\n/m.exec(s.out);
        if (m && (!expectAdmin || a)) {
          s.port = Number(m[1]);
          if (a) s.admin = { host: a[1], port: Number(a[2]) };
          resolve();
        }
      });
      s.exited.then(() => reject(new Error(`server exited (${JSON.stringify(s.exit)}) before it was ready:\n${s.out}\n${s.err}`)));
    }),
    10_000,
    'server start',
  );
  s.stop = async () => {
    proc.kill('SIGTERM');
    await withTimeout(s.exited, 10_000, 'server exit after SIGTERM');
    assert.deepEqual(s.exit, { code: 0, signal: null }, `exit status after SIGTERM; stderr:\n${s.err}`);
  };
  return s;
}

// Resolves when `pred(text())` holds (polling), or rejects after ms.
async function waitUntil(pred, text, ms, what) {
  const deadline = Date.now() + ms;
  while (!pred(text())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got:\n${text()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function freePorts(n) {
  const socks = [];
  for (let i = 0; i < n; i++) {
    const s = net.createServer();
    await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
    socks.push(s);
  }
  const ports = socks.map((s) => s.address().port);
  await Promise.all(socks.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function negotiate(port, hubPath, key) {
  const res = await fetch(`http://127.0.0.1:${port}${hubPath}/negotiate?negotiateVersion=1`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}` },
  });
  await res.text();
  return res.status;
}

// Opens n hub connections (WebSockets) with key, then negotiates once more: the status of that
// (429 once the per-key limit is reached). The connections are closed again.
async function limitAfter(port, hubPath, key, n) {
  const conns = [];
  try {
    for (let i = 0; i < n; i++) {
      const c = buildConnection(`http://127.0.0.1:${port}${hubPath}`, { key });
      conns.push(c);
      await startConnection(c);
    }
    return await negotiate(port, hubPath, key);
  } finally {
    for (const c of conns) await c.stop().catch(() => {});
  }
}

const demoKey = (dir) => readFileSync(path.join(dir, 'demo-api-key'), 'utf8').trim();

// ---------------------------------------------------------------------------------------------
// precedence

test('precedence: flag beats environment beats config file beats default', { timeout: 60_000 }, async () => {
  const [pFile, pEnv, pFlag] = await freePorts(3);
  const dir = newDir('prec');
  const conf = writeFile(
    'prec.conf',
    `# every layer names a different port and hub path\nlisten = 127.0.0.1:${pFile}\n\nhub-path = /from-file\n` +
      `max-connections-per-key = 1\nadmin-listen = off\n`,
  );
  const base = ['--data', dir, '--demo'];

  // All four layers: the flag wins.
  let s = await spawnServer([...base, '--config', conf, '--listen', `127.0.0.1:${pFlag}`, '--hub-path', '/from-flag'], {
    BALANCEHUB_LISTEN: `127.0.0.1:${pEnv}`,
    BALANCEHUB_HUB_PATH: '/from-env',
  });
  const key = demoKey(dir);
  assert.equal(s.port, pFlag, 'the flag --listen wins');
  assert.equal(await negotiate(s.port, '/from-flag', key), 200);
  assert.equal(await negotiate(s.port, '/from-env', key), 404);
  assert.equal(await negotiate(s.port, '/from-file', key), 404);
  await s.stop();

  // Environment over file; the file named by BALANCEHUB_CONFIG this time.
  s = await spawnServer(base, {
    BALANCEHUB_CONFIG: conf,
    BALANCEHUB_LISTEN: `127.0.0.1:${pEnv}`,
    BALANCEHUB_HUB_PATH: '/from-env',
    BALANCEHUB_MAX_CONNECTIONS_PER_KEY: '2',
  });
  assert.equal(s.port, pEnv, 'BALANCEHUB_LISTEN beats the file');
  assert.equal(await negotiate(s.port, '/from-file', key), 404);
  assert.equal(await limitAfter(s.port, '/from-env', key, 2), 429, 'BALANCEHUB_MAX_CONNECTIONS_PER_KEY=2 beats the file\'s 1');
  await s.stop();

  // The file over the defaults.
  s = await spawnServer([...base, '--config', conf]);
  assert.equal(s.port, pFile, 'the file\'s listen');
  assert.equal(await negotiate(s.port, HUB_PATH, key), 404, 'the default hub path is replaced');
  assert.equal(await limitAfter(s.port, '/from-file', key, 1), 429, 'the file\'s max-connections-per-key 1');
  await s.stop();

  // Defaults where no layer says anything: the hub path and 32 connections per key.
  const bare = writeFile('bare.conf', `listen = 127.0.0.1:${pFile}\nadmin-listen = off\n`);
  s = await spawnServer([...base, '--config', bare]);
  assert.equal(await limitAfter(s.port, HUB_PATH, key, 32), 429, 'default max-connections-per-key 32');
  await s.stop();
});

test('a boolean: --demo=false beats demo = true in the file', { timeout: 30_000 }, async () => {
  const dir = newDir('bool');
  const conf = writeFile('bool.conf', 'demo = true\nadmin-listen = off\nlisten = 127.0.0.1:0\n');
  let s = await spawnServer(['--data', dir, '--config', conf, '--demo=false']);
  assert.doesNotMatch(s.out, /demo API key/);
  await s.stop();
  s = await spawnServer(['--data', dir, '--config', conf]);
  assert.match(s.out, /demo API key: /);
  await s.stop();
});

// ---------------------------------------------------------------------------------------------
// errors

test('unknown flags, unknown or repeated keys and bad values: exit 2, one exact line each', { timeout: 60_000 }, () => {
  const dir = newDir('err');
  const serve = (args, env) => run(['serve', '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--data', dir, ...args], env);
  const fails = (r, lines, what) => {
    assert.equal(r.code, 2, `${what}: exit code (stderr: ${r.stderr})`);
    assert.equal(r.stderr, lines.map((l) => l + '\n').join(''), `${what}: stderr`);
    assert.doesNotMatch(r.stdout, /listening on/, `${what}: never listened`);
  };
  const usage = "(run 'balancehub serve --help')";

  fails(serve(['--no-such-flag']), [`balancehub: --no-such-flag: unknown option ${usage}`], 'unknown flag');
  fails(serve(['--no-such-flag=1']), [`balancehub: --no-such-flag=1: unknown option ${usage}`], 'unknown flag=value');
  // getopt_long would take an unambiguous prefix: the server does not.
  fails(serve(['--keepalive', '100']), [`balancehub: --keepalive: unknown option ${usage}`], 'abbreviated flag');
  fails(serve(['extra']), [`balancehub: unexpected argument 'extra' ${usage}`], 'positional argument');
  fails(serve(['--keepalive-ms']), ['balancehub: --keepalive-ms: needs a value'], 'missing value');
  fails(serve(['--keepalive-ms', 'soon']), ["balancehub: --keepalive-ms: needs a whole number from 1 to 4294967295, got 'soon'"], 'bad flag value');
  fails(serve(['--log-level', 'loud']), ["balancehub: --log-level: needs debug, info, warn or error, got 'loud'"], 'bad level');
  fails(serve(['--log-format=text']), ["balancehub: --log-format: needs logfmt or json, got 'text'"], 'bad format');
  fails(serve(['--admin-listen', 'nowhere']), ["balancehub: --admin-listen: needs HOST:PORT (e.g. 127.0.0.1:5000) or off, got 'nowhere'"], 'bad address');
  fails(serve(['--auth-fail-rate', '0']), ["balancehub: --auth-fail-rate: needs a number above 0 and at most 1000000000 (e.g. 0.5), got '0'"], 'zero rate');
  fails(serve(['--demo=yes']), ["balancehub: --demo: needs true or false, got 'yes'"], 'bad boolean');
  fails(serve([], { BALANCEHUB_MAX_CONNECTIONS: '0' }), ["balancehub: BALANCEHUB_MAX_CONNECTIONS: needs a whole number from 1 to 1000000000, got '0'"], 'bad env value');

  const conf = writeFile(
    'errors.conf',
    [
      '# a comment',
      'keepalive-ms = 100',
      'no-such-key = 1',
      '',
      'keepalive-ms = 200',
      'max-body = big',
      'config = other.conf',
      'admin-token = s3cret-s3cret',
      'just some words',
      'log-level =',
      'bh_0123456789abcdef_a-pasted-secret',
      '= hunter2',
    ].join('\n') + '\n',
  );
  const want = [
    `${conf}:3: no-such-key: unknown option`,
    `${conf}:5: keepalive-ms: duplicate (already set on line 2)`,
    `${conf}:6: max-body: needs a whole number from 1 to 1073741824, got 'big'`,
    `${conf}:7: config: not allowed in a config file`,
    `${conf}:8: admin-token: unknown option (secrets never go in the config file: use admin-token-file or env BALANCEHUB_ADMIN_TOKEN)`,
    `${conf}:9: not an option name (not shown): expected 'name = value'`,
    `${conf}:10: log-level: missing value`,
    // a line that is not an option is not echoed: it may be a secret pasted by mistake
    `${conf}:11: not an option name (not shown): expected 'name = value'`,
    `${conf}:12: expected 'name = value'`,
  ];
  fails(serve(['--config', conf]), want, 'config file errors');
  fails(serve([], { BALANCEHUB_CONFIG: conf }), want, 'config file errors (BALANCEHUB_CONFIG)');
  const missing = path.join(tmp, 'missing.conf');
  fails(serve(['--config', missing]), [`${missing}: cannot read the config file: No such file or directory`], 'missing file');
});

test('balancehub config check FILE: "FILE: ok" or every error, same parser', { timeout: 30_000 }, () => {
  const good = writeFile(
    'good.conf',
    '# production\nlisten = 0.0.0.0:5000\nadmin-listen = off\n\n  log-format = json  \r\ndemo = false\nauth-fail-rate = 0.5\ncors-origins = *\n',
  );
  let r = run(['config', 'check', good]);
  assert.deepEqual(r, { code: 0, stdout: `${good}: ok\n`, stderr: '' });

  const empty = writeFile('empty.conf', '');
  assert.deepEqual(run(['config', 'check', empty]), { code: 0, stdout: `${empty}: ok\n`, stderr: '' });

  const bad = writeFile('bad.conf', 'listen = 127.0.0.1\nlisten = 127.0.0.1:1\nrate-limit = 0\nlog-level = WARN\nfoo=bar\n');
  r = run(['config', 'check', bad]);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    [
      `${bad}:1: listen: needs HOST:PORT (e.g. 127.0.0.1:5000), got '127.0.0.1'`,
      // a bad first value is not "set": the second line is no duplicate
      `${bad}:3: rate-limit: needs a whole number from 1 to 1000000000, got '0'`,
      `${bad}:4: log-level: needs debug, info, warn or error, got 'WARN'`,
      `${bad}:5: foo: unknown option`,
    ]
      .map((l) => l + '\n')
      .join(''),
  );

  const missing = path.join(tmp, 'nope.conf');
  assert.deepEqual(run(['config', 'check', missing]), {
    code: 2,
    stdout: '',
    stderr: `${missing}: cannot read the config file: No such file or directory\n`,
  });
  for (const args of [['config'], ['config', 'check'], ['config', 'lint', good], ['config', 'check', good, 'more']]) {
    r = run(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, /^usage: balancehub config check FILE/, args.join(' '));
  }
  r = run(['config', '--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^usage: balancehub config check FILE/);
});

test('serve --help lists every option of the table with its default and variable', () => {
  const r = run(['serve', '--help']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /^usage: balancehub serve \[OPTIONS\]\n/);
  const blocks = {};
  let cur = null;
  for (const line of r.stdout.split('\n')) {
    const m = /^ {2}--([a-z-]+)(?: (\S+))?$/.exec(line);
    if (/^ {2}-/.test(line) && !m) {
      cur = null; // -h, --help
    } else if (m) {
      cur = m[1];
      blocks[cur] = [];
    } else if (cur && line.startsWith('        ')) {
      blocks[cur].push(line.trim());
    }
  }
  assert.deepEqual(Object.keys(blocks).sort(), Object.keys(OPTIONS).sort(), 'the options --help lists');
  assert.match(r.stdout, /^ {2}-h, --help$/m);
  for (const [name, def] of Object.entries(OPTIONS)) {
    const last = blocks[name].at(-1);
    const m = /^default: (.*); env (\S+)$/.exec(last);
    assert.ok(m, `--${name}: last help line names the default and variable: ${JSON.stringify(last)}`);
    assert.ok(m[1].startsWith(def), `--${name}: default ${JSON.stringify(m[1])}, want ${def}`);
    assert.equal(m[2], envName(name), `--${name}: variable`);
    assert.ok(blocks[name].length >= 2, `--${name} has a description`);
  }
});

// ---------------------------------------------------------------------------------------------
// logs

// One hub connection over a raw WebSocket (JSON protocol), opened and closed.
async function wsRoundTrip(server) {
  const ws = await RawWs.open(server);
  await ws.handshake();
  await ws.close();
}

test('--log-format json: every stderr line is a JSON object with ts, level and msg', { timeout: 30_000 }, async () => {
  const server = await startServer({ extraArgs: ['--log-format', 'json', '--log-level', 'debug'] });
  let stopped = false;
  try {
    await wsRoundTrip(server);
    assert.equal(await negotiate(server.port, HUB_PATH, 'bh_0000000000000000_wrong"key\\with odd=bytes'), 401);
    server.proc.kill('SIGHUP');
    await waitUntil((t) => t.includes('"msg":"configuration reloaded"'), server.stderr, 5_000, 'the reload line');
    await server.stop();
    stopped = true;
    const lines = server.stderr().split('\n');
    assert.equal(lines.pop(), '', 'stderr ends with a newline');
    assert.ok(lines.length >= 3, `some lines were logged: ${server.stderr()}`);
    for (const line of lines) {
      let j;
      assert.doesNotThrow(() => (j = JSON.parse(line)), `not JSON: ${line}`);
      assert.equal(typeof j, 'object');
      assert.match(j.ts, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, line);
      assert.ok(['debug', 'info', 'warn', 'error'].includes(j.level), line);
      assert.equal(typeof j.msg, 'string', line);
      assert.deepEqual(Object.keys(j).slice(0, 3), ['ts', 'level', 'msg'], line);
    }
    const msgs = lines.map((l) => JSON.parse(l).msg);
    assert.ok(msgs.includes('configuration reloaded'), msgs.join(' | '));
    assert.ok(msgs.includes('shutting down'), msgs.join(' | '));
    assert.ok(!server.stderr().includes('wrong"key'), 'the offered key is never logged');
  } finally {
    if (!stopped) await server.stop().catch(() => {});
  }
});

test('--log-level warn hides info lines; the default shows them', { timeout: 30_000 }, async () => {
  // Default level: the reload and shutdown lines are there, in logfmt.
  let server = await startServer();
  await wsRoundTrip(server);
  server.proc.kill('SIGHUP');
  await waitUntil((t) => t.includes('msg="configuration reloaded"'), server.stderr, 5_000, 'the reload line');
  await server.stop();
  assert.match(server.stderr(), /^ts=\S+ level=info msg="configuration reloaded" /m);
  assert.match(server.stderr(), /^ts=\S+ level=info msg="shutting down" signal=15$/m);

  // warn: a TLS reload that fails logs an error in the same SIGHUP that would log the info line.
  const dir = newDir('warn');
  execFileSync('mkdir', ['-p', dir]);
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  copyFileSync(pki.chainA, cert);
  copyFileSync(pki.keyA, key);
  server = await startServer({ extraArgs: ['--log-level', 'warn', '--tls-cert', cert, '--tls-key', key] });
  copyFileSync(pki.otherKey, key); // no longer matches the certificate
  server.proc.kill('SIGHUP');
  await waitUntil((t) => t.includes('TLS reload failed'), server.stderr, 5_000, 'the TLS reload error');
  await server.stop();
  const err = server.stderr();
  assert.match(err, /^ts=\S+ level=error msg="TLS reload failed: keeping the current certificate" error=".*does not match/m);
  assert.doesNotMatch(err, /level=info/, 'no info line at --log-level warn');
  assert.doesNotMatch(err, /configuration reloaded|shutting down/);
});

// ---------------------------------------------------------------------------------------------
// SIGHUP

// A TLS connection to the server: resolves with the socket once the handshake is done.
function tlsConnect(port) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(pki.ca), servername: 'localhost' }, () => resolve(s));
      s.once('error', reject);
    }),
    5_000,
    'TLS handshake',
  );
}

async function servedSerial(port) {
  const s = await tlsConnect(port);
  const serial = parseInt(s.getPeerCertificate().serialNumber, 16);
  s.destroy();
  return serial;
}

// Bytes that are no ClientHello: the server closes the socket (and logs at debug level).
async function sendGarbage(port) {
  const s = await RawSocket.connect(port);
  s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await s.waitClosed(5_000);
  s.destroy();
}

const countOf = (text, needle) => text.split(needle).length - 1;

test('SIGHUP: log level and format from the file, new certificate for new connections, open WebSocket stays', { timeout: 60_000 }, async () => {
  const dir = newDir('hup');
  execFileSync('mkdir', ['-p', dir]);
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  copyFileSync(pki.chainA, cert);
  copyFileSync(pki.keyA, key);
  const conf = path.join(dir, 'hup.conf');
  writeFileSync(conf, 'log-level = info\n');
  const server = await startServer({ extraArgs: ['--config', conf, '--tls-cert', cert, '--tls-key', key, '--keepalive-ms', '200'] });
  let stopped = false;
  try {
    assert.ok(server.url.startsWith('https://'));
    assert.equal(await servedSerial(server.port), pki.serialA);

    // An open WebSocket (wss) with a finished SignalR handshake.
    const raw = new RawSocket(await tlsConnect(server.port));
    server.sockets.add(raw.sock);
    const wsKey = randomBytes(16).toString('base64');
    raw.write(
      `GET ${HUB_PATH}?access_token=${encodeURIComponent(server.apiKey)} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${wsKey}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const res = await raw.waitFor(parseHttpResponse, 5_000, 'the 101');
    assert.equal(res.status, 101);
    raw.take(res.length);
    const ws = new RawWs(raw);
    await ws.handshake();

    // info: a broken handshake is not logged.
    await sendGarbage(server.port);

    // New certificate and key, debug and json in the file; SIGHUP.
    copyFileSync(pki.chainB, cert);
    copyFileSync(pki.keyB, key);
    writeFileSync(conf, '# reloaded\nlog-level = debug\nlog-format = json\n');
    server.proc.kill('SIGHUP');
    await waitUntil((t) => t.includes('"msg":"configuration reloaded"'), server.stderr, 5_000, 'the reload line');
    assert.match(server.stderr(), /^\{"ts":"[^"]+","level":"info","msg":"TLS certificate reloaded","file":"[^"]+cert\.pem"\}$/m);
    assert.match(server.stderr(), /^\{"ts":"[^"]+","level":"info","msg":"configuration reloaded","log_level":"debug","log_format":"json"\}$/m);
    assert.equal(countOf(server.stderr(), 'TLS handshake failed'), 0, 'no debug line before the reload');

    // New connections get the new certificate; the old WebSocket is still served (pings).
    assert.equal(await servedSerial(server.port), pki.serialB);
    const ping = await ws.nextRecord(5_000, { keepPings: true });
    assert.equal(ping.type, 6, `a ping on the old connection: ${JSON.stringify(ping)}`);
    assert.equal(raw.ended, false, 'the old WebSocket is open');

    // debug now: the broken handshake is logged, as JSON.
    await sendGarbage(server.port);
    await waitUntil((t) => countOf(t, '"msg":"TLS handshake failed"') === 1, server.stderr, 5_000, 'a debug line');
    assert.match(server.stderr(), /^\{"ts":"[^"]+","level":"debug","msg":"TLS handshake failed","conn":\d+,"peer":"127\.0\.0\.1:\d+"/m);

    // A broken file: the error is logged and the settings stay (debug, json).
    writeFileSync(conf, 'log-level = loud\n');
    server.proc.kill('SIGHUP');
    await waitUntil((t) => t.includes('configuration reload failed'), server.stderr, 5_000, 'the reload error');
    const escaped = conf.replaceAll('\\', '\\\\');
    assert.ok(
      server.stderr().includes(
        `"level":"error","msg":"configuration reload failed: keeping the current settings","error":"${escaped}:1: log-level: needs debug, info, warn or error, got 'loud'"}`,
      ),
      server.stderr(),
    );
    await sendGarbage(server.port);
    await waitUntil((t) => countOf(t, '"msg":"TLS handshake failed"') === 2, server.stderr, 5_000, 'debug still on');

    await ws.close();
    await server.stop();
    stopped = true;
  } finally {
    if (!stopped) await server.stop().catch(() => {});
  }
});

test('SIGHUP: flags and environment still beat the reloaded file', { timeout: 30_000 }, async () => {
  const conf = writeFile('hup-win.conf', 'log-level = warn\n');
  const server = await startServer({
    extraArgs: ['--config', conf, '--log-level', 'info'],
    env: { BALANCEHUB_LOG_FORMAT: 'logfmt' },
  });
  try {
    writeFileSync(conf, 'log-level = debug\nlog-format = json\n');
    server.proc.kill('SIGHUP');
    await waitUntil((t) => t.includes('configuration reloaded'), server.stderr, 5_000, 'the reload line');
    assert.match(server.stderr(), /^ts=\S+ level=info msg="configuration reloaded" log_level=info log_format=logfmt$/m);
  } finally {
    await server.stop();
  }
});

// ---------------------------------------------------------------------------------------------
// the operations listener

test('the admin API and /metrics are on the operations listener only', { timeout: 30_000 }, async () => {
  const token = 'ops-listener-token-' + randomBytes(8).toString('hex');
  const tokenFile = writeFile('ops-token', token + '\n');
  const server = await startServer({ extraArgs: ['--admin-token-file', tokenFile] });
  try {
    assert.ok(server.adminUrl, 'the admin line was printed');
    assert.notEqual(server.adminPort, server.port);
    const get = async (base, p, auth = true) => {
      const res = await fetch(base + p, { headers: auth ? { authorization: `Bearer ${token}` } : {} });
      return { status: res.status, body: await res.text() };
    };
    for (const p of ['/admin/users/user-123/balances', '/admin/', '/admin', '/metrics']) {
      assert.equal((await get(server.url, p)).status, 404, `main listener ${p}`);
    }
    assert.deepEqual(await get(server.url, '/healthz'), { status: 200, body: 'ok' });
    assert.equal((await get(server.url, '/readyz')).status, 200);

    const bal = await get(server.adminUrl, '/admin/users/user-123/balances');
    assert.equal(bal.status, 200, bal.body);
    assert.equal(JSON.parse(bal.body).userId, 'user-123');
    assert.equal((await get(server.adminUrl, '/admin/users/user-123/balances', false)).status, 401);
    const metrics = await get(server.adminUrl, '/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^# (HELP|TYPE) /m);
    assert.deepEqual(await get(server.adminUrl, '/healthz'), { status: 200, body: 'ok' });
    assert.equal((await get(server.adminUrl, '/readyz')).status, 200);
    // The hub and the tester page are not on the operations listener.
    assert.equal(await negotiate(server.adminPort, HUB_PATH, server.apiKey), 404);
    assert.equal((await get(server.adminUrl, '/')).status, 404);
  } finally {
    await server.stop();
  }
});

test('admin-listen off: no operations listener, no admin line', { timeout: 30_000 }, async () => {
  const server = await startServer({ extraArgs: ['--admin-listen', 'off'] });
  try {
    assert.equal(server.adminUrl, null);
    assert.doesNotMatch(server.stdout(), /^admin:/m);
  } finally {
    await server.stop();
  }
});

test('by default the operations listener binds 127.0.0.1:5001', { timeout: 30_000 }, async (t) => {
  const busy = await new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(true));
    s.listen(5001, '127.0.0.1', () => s.close(() => resolve(false)));
  });
  if (busy) {
    t.skip('127.0.0.1:5001 is in use on this machine: cannot start a server on the default operations port');
    return;
  }
  const dir = newDir('default-ops');
  const s = await spawnServer(['--listen', '127.0.0.1:0', '--data', dir], {}, { expectAdmin: true });
  try {
    assert.deepEqual(s.admin, { host: '127.0.0.1', port: 5001 });
    assert.match(s.out, /^balancehub: listening on http:\/\/127\.0\.0\.1:\d+\nadmin: http:\/\/127\.0\.0\.1:5001\n/);
    const res = await fetch('http://127.0.0.1:5001/healthz');
    assert.equal(res.status, 200);
    // Not reachable through any other address of this machine.
    const others = Object.values(os.networkInterfaces())
      .flat()
      .filter((a) => a && a.family === 'IPv4' && !a.internal)
      .map((a) => a.address);
    for (const addr of others) {
      const refused = await new Promise((resolve) => {
        const c = net.createConnection({ host: addr, port: 5001 });
        c.setTimeout(2_000, () => {
          c.destroy();
          resolve(true);
        });
        c.once('connect', () => {
          c.destroy();
          resolve(false);
        });
        c.once('error', () => resolve(true));
      });
      assert.ok(refused, `the operations listener answers on ${addr}:5001`);
    }
  } finally {
    await s.stop();
  }
});

test('SIGTERM with both listeners: every acknowledged admin write is durable', { timeout: 60_000 }, async () => {
  const token = 'sigterm-token-' + randomBytes(8).toString('hex');
  const tokenFile = writeFile('term-token', token + '\n');
  const dir = newDir('term');
  const server = await startServer({ dataDir: dir, extraArgs: ['--admin-token-file', tokenFile] });
  const N = 40;
  const writes = [];
  for (let i = 0; i < N; i++) {
    writes.push(
      fetch(`${server.adminUrl}/admin/users/user-123/ops`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ opId: `term-${i}`, op: 'deposit', asset: 'ETH', amount: '1' }),
      })
        .then(async (r) => ({ i, status: r.status, body: await r.text() }))
        .catch(() => ({ i, status: 0 })),
    );
  }
  // Stop while the writes are in flight; the server must drain and commit before exiting.
  await new Promise((r) => setTimeout(r, 5));
  await server.stop();
  const results = await Promise.all(writes);
  const acked = results.filter((r) => r.status === 200).map((r) => `term-${r.i}`);
  const journal = adminJson(dir, 'journal', 'user-123', '--limit', '1000');
  const committed = new Set(journal.entries.map((e) => e.opId));
  for (const id of acked) assert.ok(committed.has(id), `acknowledged ${id} is in the journal`);
  const eth = adminJson(dir, 'balances', 'user-123').assets.find((a) => a.name === 'ETH');
  const deposits = journal.entries.filter((e) => e.opId?.startsWith('term-')).length;
  assert.equal(Number(eth.available), 5 + deposits, 'the balance matches the committed deposits');
});

// ---------------------------------------------------------------------------------------------
// certificates: one CA, two server certificates (A and B) for 127.0.0.1 / localhost

function makePki(dir) {
  const p = makeTestPki(dir, [['a', 4242], ['b', 4343]]);
  return { ca: p.ca, chainA: p.a.chain, keyA: p.a.key, serialA: 4242, chainB: p.b.chain, keyB: p.b.key, serialB: 4343, otherKey: p.otherKey };
}
