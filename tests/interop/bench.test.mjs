// `balancehub bench`, the load generator, against a real server started with the limits raised
// as a benchmark needs them: rr mode (pipelined GetBalances, JSON report), idle mode (held
// connections over two loopback source addresses, the hold file), MessagePack, and the failures
// a user meets first (wrong key, no key, a non-loopback source) as one line and an exit code.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { OP, RS, binPath, decodeFrame, encodeFrame, explained, makeTempDir, removeTempDir, startServer, withTimeout, wsAccept } from './harness.mjs';

const LIMITS = ['--max-connections-per-key', '1000000', '--rate-limit', '1000000000', '--rate-burst', '1000000000', '--max-connections', '1000000'];
const ERROR_KINDS = ['connect', 'handshake', 'close', 'completion', 'timeout', 'event', 'protocol'];

let server;
let tmp;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  tmp = makeTempDir('balancehub-bench-');
  server = await startServer({ extraArgs: LIMITS });
});

after(async () => {
  try {
    if (server) await server.stop();
  } finally {
    removeTempDir(tmp);
  }
});

// Runs `balancehub bench ARGS...` with the demo key in the environment (unless env overrides it);
// never throws. Every run bounds itself; the 60 s timeout only guards against a hang.
function bench(args, env = { BALANCEHUB_API_KEY: server.apiKey }) {
  return benchAt(server.url, args, env);
}

function benchAt(url, args, env = { BALANCEHUB_API_KEY: 'bh_fake_key' }) {
  const childEnv = { ...process.env };
  delete childEnv.BALANCEHUB_API_KEY;
  delete childEnv.BALANCEHUB_URL;
  Object.assign(childEnv, env);
  return new Promise((resolve) => {
    execFile(binPath(), ['bench', '--url', url, ...args], { env: childEnv, timeout: 60_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, signal: err?.signal ?? null, stdout, stderr });
    });
  });
}

// Exit 0 and exactly one JSON object on stdout: the report, parsed, with its shape checked.
function report(r, what) {
  assert.equal(r.code, 0, `${what}: exit code (stderr: ${r.stderr})`);
  assert.match(r.stdout, /^\{[^\n]+\}\n$/, `${what}: one JSON line on stdout`);
  const rep = JSON.parse(r.stdout);
  for (const k of ['mode', 'connections', 'connected', 'pipeline', 'threads', 'duration_s', 'completed', 'errors', 'throughput_rps', 'latency_us', 'client_cpu_s']) {
    assert.ok(k in rep, `${what}: report has ${k}: ${r.stdout}`);
  }
  assert.deepEqual(Object.keys(rep.errors).sort(), [...ERROR_KINDS].sort(), `${what}: error kinds`);
  assert.deepEqual(Object.keys(rep.latency_us).sort(), ['max', 'mean', 'p50', 'p90', 'p99', 'p999'], `${what}: latency fields`);
  assert.ok(rep.client_cpu_s >= 0, `${what}: client_cpu_s`);
  return rep;
}

function assertNoErrors(rep, what) {
  for (const k of ERROR_KINDS) assert.equal(rep.errors[k], 0, `${what}: errors.${k} in ${JSON.stringify(rep)}`);
}

function assertRr(rep, what) {
  assert.equal(rep.mode, 'rr');
  assert.equal(rep.connections, 4);
  assert.equal(rep.connected, 4);
  assert.equal(rep.pipeline, 8);
  assert.equal(rep.threads, 1);
  assertNoErrors(rep, what);
  assert.ok(rep.completed > 0, `${what}: completed > 0`);
  // each GetBalances is answered by its snapshot event, then the completion
  assert.ok(Math.abs(rep.events - rep.completed) <= 4 * 8, `${what}: events ${rep.events} ~ completed ${rep.completed}`);
  assert.ok(rep.duration_s > 0.99 && rep.duration_s <= 1.0 + 1e-6, `${what}: measured ${rep.duration_s} s of the 1 s asked`);
  const expected = rep.completed / rep.duration_s;
  assert.ok(Math.abs(rep.throughput_rps - expected) <= expected * 1e-3 + 0.1, `${what}: throughput ${rep.throughput_rps} vs completed/duration ${expected}`);
  const l = rep.latency_us;
  assert.ok(l.p50 > 0, `${what}: p50 > 0`);
  assert.ok(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, `${what}: percentiles ordered: ${JSON.stringify(l)}`);
  assert.ok(l.mean > 0 && l.mean <= l.max, `${what}: mean within range: ${JSON.stringify(l)}`);
}

test('rr: 4 connections, pipeline 8, 1 s: a JSON report with requests completed and no errors', { timeout: 90_000 }, ex(async () => {
  const rep = report(await bench(['--connections', '4', '--pipeline', '8', '--duration-s', '1', '--warmup-s', '0.2', '--format', 'json']), 'rr json');
  assert.equal(rep.protocol, 'json');
  assertRr(rep, 'rr json');
}));

test('rr over MessagePack: the same report', { timeout: 90_000 }, ex(async () => {
  const rep = report(await bench(['--protocol', 'messagepack', '--connections', '4', '--pipeline', '8', '--duration-s', '1', '--warmup-s', '0.2', '--format', 'json']), 'rr messagepack');
  assert.equal(rep.protocol, 'messagepack');
  assertRr(rep, 'rr messagepack');
}));

test('rr --requests stops once that many requests completed', { timeout: 90_000 }, ex(async () => {
  const rep = report(await bench(['--connections', '2', '--pipeline', '4', '--requests', '2000', '--duration-s', '30', '--warmup-s', '0', '--format', 'json']), 'rr --requests');
  assertNoErrors(rep, 'rr --requests');
  // counted in whole reads: a read that crosses 2000 may carry a few more completions
  assert.ok(rep.completed >= 2000 && rep.completed <= 2000 + 2 * 4, `completed ${rep.completed}`);
  assert.ok(rep.duration_s < 30, `stopped early: ${rep.duration_s} s`);
}));

test('idle: 50 connections over 2 source addresses stay connected; the hold file appears', { timeout: 90_000 }, ex(async () => {
  const hold = path.join(tmp, 'hold');
  const r = await bench(['--mode', 'idle', '--connections', '50', '--source-count', '2', '--duration-s', '1', '--hold-file', hold, '--format', 'json']);
  const rep = report(r, 'idle');
  assert.equal(rep.mode, 'idle');
  assert.equal(rep.connections, 50);
  assert.equal(rep.connected, 50);
  assertNoErrors(rep, 'idle');
  // with --format json the all-up line goes to stderr, keeping stdout to the report
  assert.equal(r.stderr, 'idle: 50 connected\n');
  assert.ok(existsSync(hold), 'the hold file was created');
  assert.equal(readFileSync(hold, 'utf8'), '50\n');
}));

test('idle, text: "idle: N connected" once all are up and again at the end', { timeout: 90_000 }, ex(async () => {
  const r = await bench(['--mode', 'idle', '--connections', '20', '--threads', '2', '--duration-s', '0.5']);
  assert.equal(r.code, 0, `exit code (stderr: ${r.stderr})`);
  assert.equal(r.stderr, '');
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('idle: '));
  assert.deepEqual(lines, ['idle: 20 connected', 'idle: 20 connected'], r.stdout);
  assert.match(r.stdout, /errors +connect 0 handshake 0 close 0 completion 0 timeout 0 event 0 protocol 0\n/);
}));

test('a wrong API key: exit 1, one line on stderr naming the 401, nothing on stdout', { timeout: 90_000 }, ex(async () => {
  const r = await bench(['--connections', '3', '--duration-s', '1', '--format', 'json'], { BALANCEHUB_API_KEY: 'bh_0000000000000000_not-a-real-key' });
  assert.equal(r.code, 1, `exit code (stdout: ${r.stdout} stderr: ${r.stderr})`);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^balancehub: no connection came up \(3 of 3 failed\): [^\n]*401[^\n]*API key[^\n]*\n$/);
}));

test('usage errors exit 2 with one line: no key, a non-loopback source, a bad option value', { timeout: 30_000 }, ex(async () => {
  const cases = [
    [[], {}, /no API key/],
    [['--sources', '10.0.0.1-10.0.0.4'], undefined, /loopback/],
    [['--source-count', '0'], undefined, /--source-count/],
    [['--duration-s', '601'], undefined, /--duration-s/],
    [['--mode', 'fast'], undefined, /--mode/],
    [['--url', 'https://127.0.0.1:1'], undefined, /http:\/\//],
    [['--api-key-file', path.join(tmp, 'missing')], {}, /API key file/],
  ];
  for (const [args, env, re] of cases) {
    const r = await bench(args, env);
    assert.equal(r.code, 2, `${args.join(' ')}: exit code (stderr: ${r.stderr})`);
    assert.equal(r.stdout, '', `${args.join(' ')}: stdout`);
    assert.match(r.stderr, /^balancehub: [^\n]+\n$/, `${args.join(' ')}: one stderr line`);
    assert.match(r.stderr, re, args.join(' '));
  }
}));

// ---------------------------------------------------------------------------------------------
// A scripted fake server: what no real server sends, to show the client survives it.

// Listens on 127.0.0.1:0; for each connection calls script.upgrade(sock, key) with the request's
// Sec-WebSocket-Key, then script.record(sock, msg, state) for each JSON record the client sends.
async function fakeServer(script) {
  const sockets = new Set();
  const srv = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let text = '';
    const state = { invocations: 0, queue: Promise.resolve() };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const i = buf.indexOf('\r\n\r\n');
        if (i < 0) return;
        const head = buf.subarray(0, i).toString('latin1');
        buf = buf.subarray(i + 4);
        upgraded = true;
        assert.match(head, /^GET \/ExecutionLiveServer\/v1 HTTP\/1\.1\r\n/);
        assert.match(head, /\r\nAuthorization: Bearer bh_fake_key\r\n/i);
        script.upgrade(sock, /\r\nsec-websocket-key: *([^\r]*)/i.exec(head)[1], state);
      }
      for (;;) {
        const f = decodeFrame(buf);
        if (!f) break;
        buf = buf.subarray(f.length);
        assert.equal(f.masked, true, 'client frames are masked');
        if (f.opcode !== OP.TEXT) continue;
        text += f.payload.toString('utf8');
        let j;
        while ((j = text.indexOf(RS)) >= 0) {
          const rec = JSON.parse(text.slice(0, j));
          text = text.slice(j + 1);
          if (!sock.destroyed) script.record(sock, rec, state);
        }
      }
    });
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await withTimeout(new Promise((resolve) => srv.close(resolve)), 5_000, 'fake server close');
    },
  };
}

const upgrade101 = (key) =>
  `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${wsAccept(key)}\r\n\r\n`;
const textFrame = (s, opts) => encodeFrame(OP.TEXT, s, { mask: false, ...opts });
const event = (type = 'message') =>
  `{"type":1,"target":"executionEvents","arguments":[{"channel":"executionEvents","subject":"x","type":"${type}","data":{"type":"error"}}]}${RS}`;
const completion = (id) => `{"type":3,"invocationId":"${id}","result":null}${RS}`;

// Writes bytes in chunks of 1 to 7 bytes, each in its own turn, after what was queued before.
function dribble(sock, state, bytes) {
  state.queue = state.queue.then(async () => {
    for (let i = 0; i < bytes.length && !sock.destroyed; ) {
      const n = 1 + Math.floor(Math.random() * 7);
      sock.write(bytes.subarray(i, i + n));
      i += n;
      await new Promise((resolve) => setImmediate(resolve));
    }
  });
}

test('every byte boundary: a reply dribbled in 1-7 byte pieces, fragmented, with pings inside, is read right', { timeout: 90_000 }, async () => {
  const fake = await fakeServer({
    upgrade: (sock, key, state) => dribble(sock, state, Buffer.from(upgrade101(key))),
    record: (sock, msg, state) => {
      if (msg.protocol === 'json') return dribble(sock, state, textFrame(`{}${RS}`));
      if (msg.type === 6) return;
      assert.equal(msg.type, 1);
      assert.equal(msg.target, 'GetBalances');
      assert.deepEqual(msg.arguments, ['user-123']);
      // the event and the completion (over 125 bytes: a 16-bit length) split across a
      // fragmented message with a WebSocket ping in between, then a SignalR ping
      const all = Buffer.from(event() + completion(msg.invocationId));
      const cut = all.length - 5;
      dribble(sock, state, Buffer.concat([
        encodeFrame(OP.TEXT, all.subarray(0, cut), { mask: false, fin: false }),
        encodeFrame(OP.PING, 'hi', { mask: false }),
        encodeFrame(OP.CONT, all.subarray(cut), { mask: false }),
        textFrame(`{"type":6}${RS}`),
      ]));
    },
  });
  try {
    const rep = report(await benchAt(fake.url, ['--connections', '2', '--pipeline', '1', '--duration-s', '1', '--warmup-s', '0', '--format', 'json']), 'dribble');
    assertNoErrors(rep, 'dribble');
    assert.equal(rep.connected, 2);
    assert.ok(rep.completed > 0, `completed ${rep.completed}`);
    assert.ok(Math.abs(rep.events - rep.completed) <= 2, `events ${rep.events} vs completed ${rep.completed}`);
  } finally {
    await fake.close();
  }
});

// Bytes sent in answer to the first invocation, and the error kind the client must count.
const HOSTILE = [
  ['a masked server frame', () => encodeFrame(OP.TEXT, `{"type":6}${RS}`, { mask: true }), 'protocol'],
  ['a 2^63-byte frame length', () => Buffer.from([0x81, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), 'protocol'],
  ['a reserved opcode', () => Buffer.from([0x83, 0x00]), 'protocol'],
  ['a binary frame on JSON', () => encodeFrame(OP.BINARY, 'x', { mask: false }), 'protocol'],
  ['a record that is not JSON', () => textFrame(`{"type":3,"invocationId":"1"${RS}`), 'protocol'],
  ['a record without a numeric type', () => textFrame(`{"type":"3"}${RS}`), 'protocol'],
  ['a completion for an invocation never sent', () => textFrame(completion(999)), 'protocol'],
  ['a completion with a non-numeric id', () => textFrame(`{"type":3,"invocationId":"x1","result":null}${RS}`), 'protocol'],
  ['a SignalR Close message', () => textFrame(`{"type":7,"error":"bye"}${RS}`), 'close'],
  ['a WebSocket close frame', () => encodeFrame(OP.CLOSE, Buffer.from([3, 0xe8]), { mask: false }), 'close'],
  ['half a frame, then the end', () => Buffer.from([0x81, 126, 0x01]), 'close'],
  ['an error event', () => textFrame(event('error')), 'event'],
  ['a completion with an error', () => textFrame(`{"type":3,"invocationId":"1","error":"boom"}${RS}`), 'completion'],
];

test('hostile replies after the handshake are counted by kind; the client neither crashes nor hangs', { timeout: 120_000 }, async () => {
  for (const [what, bytes, kind] of HOSTILE) {
    const fake = await fakeServer({
      upgrade: (sock, key) => sock.write(upgrade101(key)),
      record: (sock, msg, state) => {
        if (msg.protocol === 'json') return sock.write(textFrame(`{}${RS}`));
        if (msg.type !== 1) return;
        if (state.invocations++ === 0) {
          sock.write(bytes());
          if (what === 'half a frame, then the end') sock.end();
        } else {
          sock.write(textFrame(event() + completion(msg.invocationId)));
        }
      },
    });
    try {
      const r = await benchAt(fake.url, ['--connections', '1', '--duration-s', '0.3', '--warmup-s', '0', '--format', 'json']);
      const rep = report(r, what);
      assert.ok(rep.errors[kind] >= 1, `${what}: errors.${kind} in ${r.stdout}`);
      for (const k of ERROR_KINDS) {
        if (k !== kind) assert.equal(rep.errors[k], 0, `${what}: errors.${k} in ${r.stdout}`);
      }
      // what is only an error report keeps the connection; the rest end it
      assert.equal(rep.connected, kind === 'event' || kind === 'completion' ? 1 : 0, `${what}: connected`);
    } finally {
      await fake.close();
    }
  }
});

// Answers to the upgrade or handshake: no connection comes up, exit 1 with one line saying why.
const REFUSALS = [
  ['a wrong Sec-WebSocket-Accept', (sock) => sock.write(upgrade101('d3Jvbmc=')), /Sec-WebSocket-Accept/],
  ['HTTP 500', (sock) => sock.write('HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n'), /refused: HTTP\/1\.1 500/],
  ['not HTTP', (sock) => sock.write('SSH-2.0-OpenSSH\r\n\r\n'), /did not answer the upgrade with HTTP/],
  ['an endless head', (sock) => sock.write('HTTP/1.1 101 OK\r\n' + 'X: y\r\n'.repeat(4000)), /head is over 16 KiB/],
  ['a close right away', (sock) => sock.destroy(), /closed the connection/],
  ['a refused SignalR handshake', null, /SignalR handshake refused: \{"error":"nope"\}/],
];

test('refused upgrades and handshakes: exit 1, one line saying why', { timeout: 120_000 }, async () => {
  for (const [what, answer, re] of REFUSALS) {
    const fake = await fakeServer({
      upgrade: (sock, key) => (answer ? answer(sock, key) : sock.write(upgrade101(key))),
      record: (sock, msg) => {
        if (msg.protocol === 'json') sock.write(textFrame(`{"error":"nope"}${RS}`));
      },
    });
    try {
      const r = await benchAt(fake.url, ['--connections', '2', '--duration-s', '0.3', '--format', 'json']);
      assert.equal(r.code, 1, `${what}: exit code (stdout: ${r.stdout} stderr: ${r.stderr})`);
      assert.equal(r.stdout, '', `${what}: stdout`);
      assert.match(r.stderr, /^balancehub: no connection came up \(2 of 2 failed\): [^\n]+\n$/, what);
      assert.match(r.stderr, re, what);
    } finally {
      await fake.close();
    }
  }
});
