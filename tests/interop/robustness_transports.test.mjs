// Raw-socket and raw-fetch abuse of every SignalR transport: malformed Server-Sent Events and
// Long Polling requests, unknown and missing connection ids, duplicate and abandoned polls,
// garbage POST bodies, DELETE twice, floods of invocations (one POST body, one WebSocket frame,
// the real client's concurrent invokes) with the server's memory checked, half-open sockets, and
// clients that stop reading while updates are pushed. Every test ends with proof that the same
// server process is alive and a normal client (rotating over the three transports) still gets
// its balances; at the end the server exits 0 (under ASan: no leaks).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  OP,
  RS,
  RawSocket,
  RawWs,
  assertDemoSnapshot,
  decodeFrame,
  explained,
  makeTempDir,
  parseHttpResponse,
  recordSecrets,
  removeTempDir,
  signalR,
  startServer,
  withTimeout,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const T = signalR.HttpTransportType;
const FAT = 'rt-fat'; // a user with 512 assets: every update is ~55 KB
const HANDSHAKE_TIMEOUT_MS = 2000;
const LP_POLL_TIMEOUT_MS = 1500;
const REQUEST_TIMEOUT_MS = 10_000; // the HTTP layer's, fixed in serve.c

let dir;
let token;
let server;
let fatKey;
const ex = (fn) => explained(() => server, fn);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  dir = makeTempDir();
  token = randomBytes(32).toString('hex');
  const tokenFile = path.join(dir, 'admin-token');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  server = await startServer({
    dataDir: dir,
    ownDataDir: true,
    // The RSS checks measure the server, not ASan's quarantine of freed memory (256 MB by
    // default, so under ASan RSS would grow with every flood); a small quarantine still catches
    // use-after-free in these tests. Ignored by a build without ASan.
    env: { ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=16'].filter(Boolean).join(':') },
    extraArgs: [
      '--admin-token-file', tokenFile,
      '--handshake-timeout-ms', String(HANDSHAKE_TIMEOUT_MS),
      '--lp-poll-timeout-ms', String(LP_POLL_TIMEOUT_MS),
      // These floods test backpressure and output caps, so every invocation must be answered
      // in full: the per-key command rate limit (tests/interop/limits.test.mjs) is lifted here.
      '--rate-limit', '1000000', '--rate-burst', '1000000',
    ],
  });
  await admin('POST', '/admin/users', { userId: FAT, baseCurrency: 'EUR', totalMaxExposure: '1000', opId: `create-${FAT}` }, 201);
  fatKey = (await admin('POST', `/admin/users/${FAT}/keys`, {}, 201)).apiKey;
  for (let k = 0; k < 16; k++) {
    const legs = Array.from({ length: 32 }, (_, i) => ({ asset: `ASSET${String(k * 32 + i).padStart(10, '0')}`, amount: '123456.123456789012345678' }));
    await admin('POST', `/admin/users/${FAT}/ops`, { opId: `fat-${k}`, op: 'trade', legs });
  }
});

after(async () => {
  if (server) await server.stop();
  else removeTempDir(dir);
});

// ---------------------------------------------------------------------------------------------
// helpers

async function http(method, target, { key = server.apiKey, headers = {}, body, ms = 10_000, base = server.url } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  const res = await withTimeout(fetch(base + target, { method, headers: h, body }), ms, `${method} ${target}`);
  const buf = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, text: buf.toString('utf8'), buf };
}

// On the operations listener; keys in the answers are recorded for the log scan.
async function admin(method, urlPath, body, status = 200) {
  const r = await http(method, urlPath, { base: server.adminUrl, key: token, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  assert.equal(r.status, status, `${method} ${urlPath} -> ${r.status} ${r.text}`);
  return recordSecrets(JSON.parse(r.text));
}

let opCounter = 0;
const fatDeposit = () => admin('POST', `/admin/users/${FAT}/ops`, { opId: `rt-${process.pid}-${++opCounter}`, op: 'deposit', asset: 'ASSET0000000000', amount: '1' });

const hub = (id) => `${HUB_PATH}?id=${encodeURIComponent(id)}`;
const records = (text) => text.split(RS).filter((s) => s.length > 0).map((s) => JSON.parse(s));
const inv = (i, clientId = `f${i}`) => `{"type":1,"invocationId":"${i}","target":"GetBalances","arguments":["${clientId}"]}${RS}`;
const invs = (n) => Array.from({ length: n }, (_, i) => inv(i)).join('');

async function negotiate(key = server.apiKey) {
  const r = await http('POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { key });
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text).connectionToken;
}

// A raw Long Polling connection through the handshake; returns its id.
async function lpOpen({ protocol = 'json', key = server.apiKey } = {}) {
  const id = await negotiate(key);
  const first = await http('GET', hub(id), { key });
  assert.equal(first.status, 200, 'the first poll answers at once');
  assert.equal(first.text, '');
  assert.equal((await http('POST', hub(id), { key, body: `{"protocol":"${protocol}","version":1}${RS}` })).status, 200);
  const hs = await http('GET', hub(id), { key });
  assert.equal(hs.status, 200);
  assert.equal(hs.text, `{}${RS}`);
  return id;
}

// A raw SSE stream for a negotiated id: next() returns the next event's data.
async function sseOpen(id, { key = server.apiKey } = {}) {
  const s = await RawSocket.connect(server.port, server);
  s.write(`GET ${hub(id)}&access_token=${encodeURIComponent(key)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
  const res = await s.waitFor(parseHttpResponse, 5_000, 'the SSE response head');
  s.take(res.length);
  assert.equal(res.status, 200);
  const next = async (ms = 5_000) => {
    const ev = await s.waitFor((b) => parseSseEvent(b), ms, 'an SSE event');
    s.take(ev.len);
    return ev.data;
  };
  return { socket: s, next };
}

// One SSE event from the front of buf ({len, data}) or undefined; leading blank lines skipped.
function parseSseEvent(buf) {
  const t = buf.toString('latin1');
  const m = /^(?:\r\n)*((?:data: [^\r\n]*\r\n)+)\r\n/.exec(t);
  if (!m) return undefined;
  return { len: m[0].length, data: Buffer.from(m[1].split('\r\n').filter(Boolean).map((l) => l.slice(6)).join('\n'), 'latin1').toString('utf8') };
}

// Raw bytes out, one response back (parsed), socket closed.
async function raw(bytes, ms = 5_000) {
  const s = await RawSocket.connect(server.port, server);
  s.write(bytes);
  const res = await s.waitFor(parseHttpResponse, ms, 'an HTTP response');
  s.destroy();
  return res;
}

const rawReq = (method, target, { key = server.apiKey, extra = '', body } = {}) =>
  `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${key ? `Authorization: Bearer ${key}\r\n` : ''}${extra}` +
  `${body !== undefined ? `Content-Length: ${Buffer.byteLength(body)}\r\n` : ''}\r\n${body ?? ''}`;

function rssKiB() {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.proc.pid}/status`, 'utf8'));
  assert.ok(m, 'VmRSS in /proc/PID/status');
  return Number(m[1]);
}

// The growth of the server's RSS a flood may cause: its answers are about 1.3 MB; anything near
// this means memory the server holds on to (ASan's quarantine keeps freed memory too).
const RSS_GROWTH_MAX_KIB = 48 * 1024;

function build(url, key, { transport = T.WebSockets, msgpack = false } = {}) {
  const b = new signalR.HubConnectionBuilder()
    .withUrl(url, { transport, accessTokenFactory: () => key })
    .configureLogging(process.env.BALANCEHUB_TEST_SIGNALR_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None);
  if (msgpack) b.withHubProtocol(new MessagePackHubProtocol());
  return b.build();
}

// The proof after each abuse: the process is alive and a normal client, on the next transport
// in turn, starts, gets the exact demo snapshot and stops cleanly.
let rotation = 0;
async function stillServes(label, transport) {
  assert.ok(server.alive(), `server process alive after: ${label}`);
  const tp = transport ?? [T.WebSockets, T.ServerSentEvents, T.LongPolling][rotation++ % 3];
  const conn = build(server.hubUrl, server.apiKey, { transport: tp });
  const events = new EventQueue(conn);
  let closed;
  conn.onclose((e) => (closed = { error: e }));
  await withTimeout(conn.start(), 5_000, `start (${T[tp]}) after: ${label}`);
  const clientId = `alive-${rotation}-${tp}`;
  await withTimeout(conn.invoke('GetBalances', clientId), 5_000, `GetBalances (${T[tp]}) after: ${label}`);
  const got = events.drain();
  assert.equal(got.length, 1, JSON.stringify(got));
  assertDemoSnapshot(got[0], clientId);
  await withTimeout(conn.stop(), 5_000, `stop (${T[tp]}) after: ${label}`);
  assert.deepEqual(closed, { error: undefined }, `clean stop after: ${label}`);
  assert.ok(server.alive(), `server process alive after: ${label}`);
}

// Checks n GetBalances answers in order: for invocation i an executionEvents event for clientId
// f<i> (the exact demo snapshot, or the spec's rate-limit error) and then completion i.
function assertFloodAnswers(recs, n, what) {
  assert.equal(recs.length, 2 * n, `${what}: ${2 * n} records (an event and a completion per invocation), got ${recs.length}`);
  for (let i = 0; i < n; i++) {
    const ev = recs[2 * i];
    const done = recs[2 * i + 1];
    assert.equal(ev.type, 1, `${what}: record ${2 * i} is an invocation: ${JSON.stringify(ev).slice(0, 200)}`);
    assert.equal(ev.target, 'executionEvents');
    const env = ev.arguments[0];
    if (env.subject === 'account.balances.error') {
      assert.equal(env.clientId, `f${i}`);
      assert.match(env.data.message, /rate limit/i);
    } else {
      assertDemoSnapshot(env, `f${i}`);
    }
    assert.deepEqual(done, { type: 3, invocationId: String(i), result: null }, `${what}: completion ${i} in order`);
  }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

test('SSE: no id -> 400, empty id -> 400, over-long or badly escaped id -> 400, with or without a key', { timeout: 15_000 }, ex(async () => {
  const accept = 'Accept: text/event-stream\r\n';
  for (const key of [server.apiKey, null]) {
    for (const [target, body] of [
      [HUB_PATH, 'Connection ID required'],
      [`${HUB_PATH}?id=`, 'Connection ID required'],
      [`${HUB_PATH}?other=1`, 'Connection ID required'],
      [`${HUB_PATH}?id=${'a'.repeat(300)}`, 'bad id parameter'],
      [`${HUB_PATH}?id=%zz`, 'bad id parameter'],
    ]) {
      const res = await raw(rawReq('GET', target, { key, extra: accept }));
      assert.equal(res.status, 400, `${target}: ${res.body}`);
      assert.equal(res.body, body);
    }
  }
  await stillServes('malformed SSE ids');
}));

test('SSE: an id never negotiated, a forged token, a finished connection -> 404; no key -> 401; another key -> 403', { timeout: 15_000 }, ex(async () => {
  const accept = 'Accept: text/event-stream\r\n';
  const real = await negotiate();
  // same length and alphabet as a real token, other bytes: the HMAC fails
  const forged = real.slice(0, 30) + (real[30] === 'A' ? 'B' : 'A') + real.slice(31);
  for (const id of ['nope', 'A'.repeat(54), forged, randomBytes(40).toString('base64url')]) {
    const res = await raw(rawReq('GET', hub(id), { extra: accept }));
    assert.equal(res.status, 404, `${id}: ${res.body}`);
  }
  assert.equal((await raw(rawReq('GET', hub(real), { key: null, extra: accept }))).status, 401);
  assert.equal((await raw(rawReq('GET', hub(real), { key: 'not-a-key', extra: accept }))).status, 401);
  const other = await admin('POST', `/admin/users/${FAT}/keys`, {}, 201);
  assert.equal((await raw(rawReq('GET', hub(real), { key: other.apiKey, extra: accept }))).status, 403);
  // the token is still good for its own key: open, then end the stream, then it is gone
  const sse = await sseOpen(real);
  sse.socket.destroy();
  let status;
  for (let i = 0; i < 40 && status !== 404; i++, await sleep(50)) status = (await raw(rawReq('GET', hub(real), { extra: accept }))).status;
  assert.equal(status, 404, 'an ended SSE connection is forgotten');
  await stillServes('unknown SSE ids');
}));

test('SSE: POST before the stream is open -> 400; SSE GET on a Long Polling or WebSocket connection -> 400', { timeout: 15_000 }, ex(async () => {
  const accept = 'Accept: text/event-stream\r\n';
  const pending = await negotiate();
  const post = await http('POST', hub(pending), { body: `{"protocol":"json","version":1}${RS}` });
  assert.equal(post.status, 400, post.text);
  const lp = await lpOpen();
  const res = await raw(rawReq('GET', hub(lp), { extra: accept }));
  assert.equal(res.status, 400);
  assert.equal(res.body, 'This connection uses another transport.');
  const wsId = await negotiate();
  const ws = await RawWs.open(server, { query: `id=${wsId}&access_token=${encodeURIComponent(server.apiKey)}` });
  await ws.handshake();
  assert.equal((await raw(rawReq('GET', hub(wsId), { extra: accept }))).status, 400);
  assert.equal((await http('GET', hub(wsId))).status, 400, 'a poll on a WebSocket connection');
  assert.equal((await http('DELETE', hub(wsId))).status, 400, 'DELETE on a WebSocket connection');
  // the pending one still works as SSE after the refused POST
  const sse = await sseOpen(pending);
  assert.equal((await http('POST', hub(pending), { body: `{"protocol":"json","version":1}${RS}` })).status, 200);
  assert.equal(await sse.next(), `{}${RS}`);
  assert.equal((await http('DELETE', hub(pending))).status, 400, 'DELETE on an SSE connection');
  await http('POST', hub(pending), { body: inv(1, 'sse-after') });
  assertDemoSnapshot(JSON.parse((await sse.next()).slice(0, -1)).arguments[0], 'sse-after');
  sse.socket.destroy();
  await ws.close();
  assert.equal((await http('DELETE', hub(lp))).status, 202);
  await stillServes('SSE on the wrong connections');
}));

test('SSE: requests pipelined behind the stream request are ignored; the stream works', { timeout: 15_000 }, ex(async () => {
  const id = await negotiate();
  const s = await RawSocket.connect(server.port, server);
  s.write(
    `GET ${hub(id)}&access_token=${encodeURIComponent(server.apiKey)} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n` +
      `GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nDELETE ${hub(id)} HTTP/1.1\r\nHost: x\r\n\r\n`,
  );
  const res = await s.waitFor(parseHttpResponse, 5_000, 'the SSE head');
  s.take(res.length);
  assert.equal(res.status, 200);
  assert.equal((await http('POST', hub(id), { body: `{"protocol":"json","version":1}${RS}` })).status, 200);
  const ev = await s.waitFor(parseSseEvent, 5_000, 'the handshake event');
  assert.equal(ev.data, `{}${RS}`);
  s.take(ev.len);
  assert.ok(!s.buf.toString('latin1').includes('HTTP/1.1'), 'no HTTP answer inside the event stream');
  s.destroy();
  await stillServes('pipelined SSE');
}));

test('SSE: garbage POST bodies close the connection with a Close message (error) on the stream', { timeout: 15_000 }, ex(async () => {
  for (const body of [
    Buffer.from(`hello${RS}`),
    Buffer.from([0x00, 0xff, 0xfe, 0x1e]),
    Buffer.concat([Buffer.from('{"type":1,"target":"GetBalances","arguments":["'), Buffer.from([0xc3, 0x28]), Buffer.from(`"]}${RS}`)]),
    Buffer.from(`{"type":1,"invocationId":"1","target":"GetBalances","arguments":["${'z'.repeat(40 * 1024)}"]}${RS}`),
  ]) {
    const id = await negotiate();
    const sse = await sseOpen(id);
    await http('POST', hub(id), { body: `{"protocol":"json","version":1}${RS}` });
    assert.equal(await sse.next(), `{}${RS}`);
    assert.equal((await http('POST', hub(id), { body })).status, 200, 'the body is taken; the session decides');
    const close = JSON.parse((await sse.next()).slice(0, -1));
    assert.equal(close.type, 7, JSON.stringify(close));
    assert.match(close.error, /^Connection closed with an error\. InvalidDataException: /);
    await sse.socket.waitClosed(3_000);
    let status;
    for (let i = 0; i < 40 && status !== 404; i++, await sleep(50)) status = (await http('POST', hub(id), { body: `{"type":6}${RS}` })).status;
    assert.equal(status, 404, 'the closed connection is gone');
  }
  await stillServes('garbage SSE bodies');
}));

// ---------------------------------------------------------------------------------------------
// Long Polling

test('LP: GET, POST and DELETE without an id -> 400; with an unknown id -> 404 (also a forged token)', { timeout: 15_000 }, ex(async () => {
  for (const method of ['GET', 'POST', 'DELETE']) {
    const body = method === 'POST' ? `{"type":6}${RS}` : undefined;
    const none = await http(method, HUB_PATH, { body });
    assert.equal(none.status, 400, `${method} without id: ${none.text}`);
    assert.equal(none.text, 'Connection ID required');
    for (const id of ['unknown', 'A'.repeat(54), randomBytes(40).toString('base64url')]) {
      const r = await http(method, hub(id), { body });
      assert.equal(r.status, 404, `${method} ${id}: ${r.text}`);
      assert.equal(r.text, 'No Connection with that ID');
    }
  }
  await stillServes('LP unknown ids');
}));

test('LP: duplicate polls: each newer poll ends the older with 204; the newest gets the data', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen();
  const p1 = http('GET', hub(id));
  await sleep(100);
  const p2 = http('GET', hub(id));
  const r1 = await withTimeout(p1, 1_000, 'the first poll ends when the second arrives');
  assert.equal(r1.status, 204);
  const p3 = http('GET', hub(id));
  assert.equal((await withTimeout(p2, 1_000, 'the second poll ends when the third arrives')).status, 204);
  await sleep(100);
  assert.equal((await http('POST', hub(id), { body: inv(1, 'dup') })).status, 200);
  const r3 = await p3;
  assert.equal(r3.status, 200);
  const recs = records(r3.text);
  assert.equal(recs.length, 2);
  assertDemoSnapshot(recs[0].arguments[0], 'dup');
  assert.deepEqual(recs[1], { type: 3, invocationId: '1', result: null });
  // ten polls at once: all but one end with 204, the one left is answered at the poll timeout
  const many = await Promise.all(Array.from({ length: 10 }, () => http('GET', hub(id))));
  const statuses = many.map((r) => r.status).sort();
  assert.deepEqual(statuses, [200, ...Array(9).fill(204)], `ten concurrent polls: ${statuses}`);
  assert.equal(many.find((r) => r.status === 200).text, '', 'the surviving poll timed out empty');
  assert.equal((await http('DELETE', hub(id))).status, 202);
  await stillServes('duplicate polls');
}));

test('LP: two polls pipelined on one socket are answered in order; an aborted poll loses no data', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen();
  const s = await RawSocket.connect(server.port, server);
  const poll = rawReq('GET', hub(id));
  s.write(poll + poll);
  await sleep(150);
  await http('POST', hub(id), { body: inv(1, 'pipe-1') });
  const a = await s.waitFor(parseHttpResponse, 5_000, 'the first pipelined poll');
  s.take(a.length);
  assert.equal(a.status, 200);
  assertDemoSnapshot(records(a.body)[0].arguments[0], 'pipe-1');
  await sleep(150); // the second poll is held now
  await http('POST', hub(id), { body: inv(2, 'pipe-2') });
  const b = await s.waitFor(parseHttpResponse, 5_000, 'the second pipelined poll');
  assert.equal(b.status, 200);
  assertDemoSnapshot(records(b.body)[0].arguments[0], 'pipe-2');
  s.destroy();
  // A held poll whose socket goes away: what comes next waits for the next poll.
  const gone = await RawSocket.connect(server.port, server);
  gone.write(rawReq('GET', hub(id)));
  await sleep(150);
  gone.destroy();
  await sleep(100);
  await http('POST', hub(id), { body: inv(3, 'after-abort') });
  const c = await http('GET', hub(id));
  assert.equal(c.status, 200);
  const recs = records(c.text);
  assertDemoSnapshot(recs[0].arguments[0], 'after-abort');
  assert.deepEqual(recs[1], { type: 3, invocationId: '3', result: null });
  assert.equal((await http('DELETE', hub(id))).status, 202);
  await stillServes('pipelined and aborted polls');
}));

test('LP: DELETE twice -> 202 then 404; the held poll ends 204; later GET/POST -> 404; DELETE of a pending id -> 202', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen();
  const held = http('GET', hub(id));
  await sleep(100);
  const [d1, d2] = [await http('DELETE', hub(id)), await http('DELETE', hub(id))];
  assert.equal(d1.status, 202);
  assert.equal(d2.status, 404);
  assert.equal((await held).status, 204);
  assert.equal((await http('GET', hub(id))).status, 404);
  assert.equal((await http('POST', hub(id), { body: inv(1) })).status, 404);
  // two DELETEs at once: one 202, one 404
  const id2 = await lpOpen();
  const both = (await Promise.all([http('DELETE', hub(id2)), http('DELETE', hub(id2))])).map((r) => r.status).sort();
  assert.deepEqual(both, [202, 404]);
  const pending = await negotiate();
  assert.equal((await http('DELETE', hub(pending))).status, 202);
  assert.equal((await http('GET', hub(pending))).status, 404);
  await stillServes('DELETE twice');
}));

test('LP: a handshake that is not JSON -> the next poll carries {"error":...} and the connection ends', { timeout: 15_000 }, ex(async () => {
  for (const body of [`garbage${RS}`, `{"protocol":"json"}${RS}`, `{"protocol":"nope","version":1}${RS}`, Buffer.from([0xff, 0x00, 0x1e])]) {
    const id = await negotiate();
    assert.equal((await http('GET', hub(id))).status, 200);
    assert.equal((await http('POST', hub(id), { body })).status, 200);
    const r = await http('GET', hub(id));
    assert.equal(r.status, 200);
    const recs = records(r.text);
    assert.equal(recs.length, 1, r.text);
    assert.deepEqual(Object.keys(recs[0]), ['error'], r.text);
    assert.ok(recs[0].error.length > 0);
    assert.equal((await http('GET', hub(id))).status, 404, 'the connection ended after the handshake error');
  }
  await stillServes('bad LP handshakes');
}));

test('LP: garbage POST bodies after the handshake -> 200, then the next poll carries Close with an error, then 404', { timeout: 15_000 }, ex(async () => {
  const bodies = [
    Buffer.from(`hello${RS}`),
    Buffer.from([0x00, 0xff, 0xfe, 0x1e]),
    Buffer.from(`{"type":1,"invocationId":"1","target":"GetBalances","arguments":["x"]${RS}`), // cut JSON
    Buffer.concat([Buffer.from('{"type":1,"invocationId":"1","target":"GetBalances","arguments":["'), Buffer.from([0xc3, 0x28]), Buffer.from(`"]}${RS}`)]),
    Buffer.from(`{"type":1,"invocationId":"1","target":"GetBalances","arguments":["${'z'.repeat(40 * 1024)}"]}${RS}`),
    Buffer.from(`${'['.repeat(5000)}${RS}`),
    Buffer.from(`{"type":"1"}${RS}`),
  ];
  for (const body of bodies) {
    const id = await lpOpen();
    const post = await http('POST', hub(id), { body });
    assert.equal(post.status, 200, post.text);
    const r = await http('GET', hub(id));
    assert.equal(r.status, 200);
    const recs = records(r.text);
    assert.equal(recs.length, 1, `only the Close: ${r.text.slice(0, 300)}`);
    assert.equal(recs[0].type, 7);
    assert.match(recs[0].error, /^Connection closed with an error\. InvalidDataException: /, `for body ${JSON.stringify(body.subarray(0, 60).toString('latin1'))}`);
    assert.equal(recs[0].allowReconnect, undefined);
    assert.equal((await http('GET', hub(id))).status, 404);
    assert.equal((await http('POST', hub(id), { body: `{"type":6}${RS}` })).status, 404);
  }
  // With a poll held: the garbage ends it with the Close at once.
  const id = await lpOpen();
  const held = http('GET', hub(id));
  await sleep(100);
  assert.equal((await http('POST', hub(id), { body: `garbage${RS}` })).status, 200);
  const r = await withTimeout(held, 1_000, 'the held poll answered with the Close');
  assert.equal(r.status, 200);
  assert.deepEqual(records(r.text), [{ type: 7, error: 'Connection closed with an error. InvalidDataException: Message is not valid JSON.' }]);
  assert.equal((await http('GET', hub(id))).status, 404);
  await stillServes('garbage LP bodies');
}));

test('LP: a message split over two POSTs works; empty POSTs do nothing; a cut message is dropped with the connection', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen();
  const m = inv(5, 'split');
  assert.equal((await http('POST', hub(id), { body: m.slice(0, 20) })).status, 200);
  assert.equal((await http('POST', hub(id), { body: '' })).status, 200);
  assert.equal((await http('POST', hub(id), { body: m.slice(20) })).status, 200);
  const r = await http('GET', hub(id));
  const recs = records(r.text);
  assertDemoSnapshot(recs[0].arguments[0], 'split');
  assert.deepEqual(recs[1], { type: 3, invocationId: '5', result: null });
  assert.equal((await http('POST', hub(id), { body: m.slice(0, 30) })).status, 200);
  assert.equal((await http('DELETE', hub(id))).status, 202);
  assert.equal((await http('GET', hub(id))).status, 404);
  await stillServes('split LP messages');
}));

test('LP messagepack: garbage binary bodies -> Close with an error (MessagePack) in the next poll', { timeout: 15_000 }, ex(async () => {
  const proto = new MessagePackHubProtocol();
  for (const body of [
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), // VarInt longer than 5 bytes
    Buffer.from([0x03, 0xc1, 0xc1, 0xc1]), // reserved type bytes
    Buffer.from([0x01, 0x90]), // an empty array: no message type
    Buffer.from([0x02, 0x91, 0xc0]), // [nil]: the message type is not an integer
    Buffer.from([0x05, 0x95, 0x01, 0x80, 0xc0, 0xa1]), // cut string in a declared-complete message
  ]) {
    const id = await lpOpen({ protocol: 'messagepack' });
    assert.equal((await http('POST', hub(id), { body, headers: { 'content-type': 'application/octet-stream' } })).status, 200);
    const r = await http('GET', hub(id));
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'application/octet-stream');
    const msgs = proto.parseMessages(r.buf.buffer.slice(r.buf.byteOffset, r.buf.byteOffset + r.buf.length), signalR.NullLogger.instance);
    assert.equal(msgs.length, 1, JSON.stringify(msgs));
    assert.equal(msgs[0].type, 7);
    assert.match(msgs[0].error, /^Connection closed with an error\. InvalidDataException: /, `body ${body.toString('hex')}`);
    assert.equal((await http('GET', hub(id))).status, 404);
  }
  await stillServes('garbage MessagePack bodies');
}));

test('hub path: other methods -> 405; chunked POST bodies are refused without harm', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen();
  for (const method of ['PUT', 'PATCH']) {
    const res = await raw(rawReq(method, hub(id), { body: 'x' }));
    assert.equal(res.status, 405, `${method}: ${res.body}`);
  }
  const chunked = await raw(rawReq('POST', hub(id), { extra: 'Transfer-Encoding: chunked\r\n' }) + `5\r\n{"typ\r\n0\r\n\r\n`);
  assert.ok(chunked.status >= 400 && chunked.status < 600, `chunked: ${chunked.status}`);
  // the connection is untouched by both
  await http('POST', hub(id), { body: inv(1, 'after-405') });
  assertDemoSnapshot(records((await http('GET', hub(id))).text)[0].arguments[0], 'after-405');
  assert.equal((await http('DELETE', hub(id))).status, 202);
  await stillServes('other methods');
}));

test('1000 negotiates never followed by a transport: no harm, memory bounded, each id still usable once', { timeout: 30_000 }, ex(async () => {
  const rss0 = rssKiB();
  const ids = [];
  for (let k = 0; k < 50; k++) ids.push(...(await Promise.all(Array.from({ length: 20 }, () => negotiate()))));
  assert.equal(new Set(ids).size, 1000, 'every connection token is different');
  const grown = rssKiB() - rss0;
  assert.ok(grown < 16 * 1024, `RSS grew by ${grown} KiB for 1000 pending connections`);
  // the first and the last are still pending: a poll opens Long Polling, DELETE ends it
  for (const id of [ids[0], ids[999]]) {
    assert.equal((await http('GET', hub(id))).status, 200);
    assert.equal((await http('DELETE', hub(id))).status, 202);
  }
  await stillServes('1000 unused negotiates');
}));

// ---------------------------------------------------------------------------------------------
// floods

// Polls id until `want` records came (or the deadline), returns them.
async function pollRecords(id, want, ms) {
  const out = [];
  const deadline = Date.now() + ms;
  while (out.length < want && Date.now() < deadline) {
    const r = await http('GET', hub(id), { ms: deadline - Date.now() + 2_000 });
    assert.equal(r.status, 200, `poll during the flood: ${r.status} ${r.text.slice(0, 200)} (after ${out.length} records)`);
    out.push(...records(r.text));
    if (out.some((m) => m.type === 7)) break;
  }
  return out;
}

async function wsRecords(ws, want, ms) {
  const out = [];
  const deadline = Date.now() + ms;
  while (out.length < want) {
    const m = await ws.nextRecord(Math.max(1, deadline - Date.now()));
    assert.ok(!m.close, `close frame ${JSON.stringify(m)} after ${out.length} records`);
    out.push(m);
    if (m.type === 7) break;
  }
  return out;
}

test('flood, Long Polling: 2000 GetBalances in one POST body are all answered, in order; memory stays bounded', { timeout: 30_000 }, ex(async () => {
  const rss0 = rssKiB();
  const id = await lpOpen();
  const body = invs(2000);
  const post = await http('POST', hub(id), { body });
  assert.equal(post.status, 200, `POST of ${body.length} bytes (2000 invocations): ${post.status} ${post.text}`);
  const recs = await pollRecords(id, 4000, 15_000);
  assertFloodAnswers(recs, 2000, 'LP flood');
  assert.equal((await http('DELETE', hub(id))).status, 202);
  const grown = rssKiB() - rss0;
  assert.ok(grown < RSS_GROWTH_MAX_KIB, `RSS grew by ${grown} KiB`);
  await stillServes('LP flood');
}));

test('flood, Long Polling: three POSTs of 700 GetBalances each (every one within the limits) before the next poll: all 2100 answered, in order', { timeout: 30_000 }, ex(async () => {
  const id = await lpOpen();
  for (let k = 0; k < 3; k++) {
    const body = Array.from({ length: 700 }, (_, i) => inv(k * 700 + i)).join('');
    assert.ok(body.length < 64 * 1024, `POST ${k} is ${body.length} bytes`);
    const post = await http('POST', hub(id), { body });
    assert.equal(post.status, 200, `POST ${k}: ${post.status} ${post.text}`);
  }
  const recs = await pollRecords(id, 4200, 15_000);
  assertFloodAnswers(recs, 2100, 'LP back-to-back POSTs');
  assert.equal((await http('DELETE', hub(id))).status, 202);
  await stillServes('LP back-to-back POSTs');
}));

test('flood, WebSockets: 2000 GetBalances in one text frame are all answered, in order; memory stays bounded', { timeout: 30_000 }, ex(async () => {
  const rss0 = rssKiB();
  const ws = await RawWs.open(server);
  await ws.handshake();
  ws.sendText(invs(2000));
  const recs = await wsRecords(ws, 4000, 15_000);
  assertFloodAnswers(recs, 2000, 'WebSocket flood');
  await ws.close();
  const grown = rssKiB() - rss0;
  assert.ok(grown < RSS_GROWTH_MAX_KIB, `RSS grew by ${grown} KiB`);
  await stillServes('WebSocket flood');
}));

test('flood, WebSockets: 1700 GetBalances in one 127 KiB frame (within every inbound limit), read as fast as they come, are all answered', { timeout: 30_000 }, ex(async () => {
  const ws = await RawWs.open(server);
  await ws.handshake();
  const frame = invs(1700);
  assert.ok(frame.length < 4 * 32 * 1024, `frame ${frame.length} bytes, under the WebSocket message limit`);
  ws.sendText(frame);
  const recs = await wsRecords(ws, 3400, 15_000);
  assertFloodAnswers(recs, 1700, 'WebSocket frame within limits');
  await ws.close();
  await stillServes('WebSocket flood within limits');
}));

for (const [tname, transport] of [['WebSockets', T.WebSockets], ['ServerSentEvents', T.ServerSentEvents], ['LongPolling', T.LongPolling]]) {
  test(`flood, the real client over ${tname}: 2000 invoke('GetBalances') at once all complete, events in order`, { timeout: 30_000 }, ex(async () => {
    const conn = build(server.hubUrl, server.apiKey, { transport });
    const events = new EventQueue(conn);
    let closed;
    conn.onclose((e) => (closed = { error: e }));
    await withTimeout(conn.start(), 5_000, 'start');
    const settled = await withTimeout(
      Promise.allSettled(Array.from({ length: 2000 }, (_, i) => conn.invoke('GetBalances', `f${i}`))),
      20_000,
      '2000 invocations',
    );
    const failed = settled.filter((s) => s.status === 'rejected');
    assert.equal(failed.length, 0, `${failed.length} of 2000 invocations failed, e.g. ${failed[0]?.reason}`);
    assert.equal(events.items.length, 2000);
    events.items.forEach((e, i) => {
      if (e.subject !== 'account.balances.error') assertDemoSnapshot(e, `f${i}`);
      else assert.equal(e.clientId, `f${i}`);
    });
    await withTimeout(conn.stop(), 5_000, 'stop');
    assert.deepEqual(closed, { error: undefined });
    await stillServes(`real-client flood over ${tname}`);
  }));
}

test('floods within the limits, ten rounds each on WebSockets and Long Polling: all answered; RSS does not keep growing', { timeout: 40_000 }, ex(async (t) => {
  const ws = await RawWs.open(server);
  await ws.handshake();
  const id = await lpOpen();
  const samples = [];
  for (let round = 0; round < 10; round++) {
    ws.sendText(invs(1000));
    assertFloodAnswers(await wsRecords(ws, 2000, 10_000), 1000, `WebSocket round ${round}`);
    const post = await http('POST', hub(id), { body: invs(800) });
    assert.equal(post.status, 200, post.text);
    assertFloodAnswers(await pollRecords(id, 1600, 10_000), 800, `LP round ${round}`);
    samples.push(rssKiB());
  }
  await ws.close();
  assert.equal((await http('DELETE', hub(id))).status, 202);
  // Rounds 1-5 warm the allocator (and ASan's quarantine) up; after that a bounded server
  // stays flat. 4 MiB over five rounds of 1800 invocations is ~460 bytes per invocation.
  const growth = samples[9] - samples[4];
  t.diagnostic(`server RSS after each round (KiB): ${samples.join(', ')}`);
  assert.ok(growth < 4 * 1024, `RSS after rounds 1..10 (KiB): ${samples.join(', ')}: grew ${growth} KiB over the last five`);
  await stillServes('floods within limits');
}));

// ---------------------------------------------------------------------------------------------
// half-open sockets

test('half-open sockets (half a request, half a body, silent, an upgrade that never reads) block nobody and are closed in time', { timeout: 30_000 }, ex(async () => {
  const t0 = Date.now();
  const open = async (bytes) => {
    const s = await RawSocket.connect(server.port, server);
    if (bytes) s.write(bytes);
    return s;
  };
  const halfLine = await Promise.all(Array.from({ length: 10 }, () => open(`GET ${HUB_PATH}/negoti`)));
  const halfHead = await Promise.all(Array.from({ length: 10 }, () => open(`POST ${HUB_PATH}/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nAuthori`)));
  const halfBody = await Promise.all(Array.from({ length: 10 }, async () => open(rawReq('POST', hub(await lpOpen()), { extra: 'Content-Length: 100\r\n' }) + '{"type":1,')));
  const silent = await Promise.all(Array.from({ length: 10 }, () => open()));
  // Upgrades that never read a byte (no handshake either): the 101 and the server's close sit unread.
  const deaf = [];
  for (let i = 0; i < 5; i++) {
    const { res, socket } = await RawWs.upgradeRequest(server, { query: `access_token=${encodeURIComponent(server.apiKey)}` });
    assert.equal(res.status, 101);
    socket.sock.pause();
    deaf.push(socket);
  }
  // Upgrades that hand-shake, then send floods of invocations and never read the answers.
  const hogs = [];
  for (let i = 0; i < 3; i++) {
    const ws = await RawWs.open(server);
    await ws.handshake();
    ws.socket.sock.pause();
    for (let f = 0; f < 15; f++) ws.sendText(invs(1000));
    hogs.push(ws);
  }

  // Meanwhile everybody else is served, on every transport.
  await withTimeout(Promise.all([
    stillServes('half-open sockets (WS)', T.WebSockets),
    stillServes('half-open sockets (SSE)', T.ServerSentEvents),
    stillServes('half-open sockets (LP)', T.LongPolling),
  ]), 8_000, 'normal clients while half-open sockets are around');
  assert.equal((await http('GET', '/healthz', { key: null })).status, 200);

  // Half requests, half bodies and silent sockets: 408 after the request timeout, then closed.
  for (const s of [...halfLine, ...halfHead, ...halfBody, ...silent]) {
    const left = t0 + REQUEST_TIMEOUT_MS + 5_000 - Date.now();
    const res = await s.waitFor(parseHttpResponse, Math.max(1, left), 'the 408 for a half-open request');
    assert.equal(res.status, 408);
    await s.waitClosed(Math.max(1, t0 + REQUEST_TIMEOUT_MS + 6_000 - Date.now()));
  }
  // The deaf upgrades: (handshake timeout) a close frame 1008, then the server hangs up.
  for (const s of deaf) {
    s.sock.resume();
    await s.waitClosed(Math.max(1, t0 + HANDSHAKE_TIMEOUT_MS + 10_000 - Date.now()));
    const f = decodeFrame(s.buf);
    assert.ok(f, `a close frame after the 101: ${s.buf.toString('hex').slice(0, 60)}`);
    assert.equal(f.opcode, OP.CLOSE);
    assert.equal(f.payload.readUInt16BE(0), 1008);
  }
  // The hogs were cut off (output cap) rather than holding megabytes.
  for (const ws of hogs) {
    ws.socket.sock.resume();
    await ws.socket.waitClosed(5_000);
  }
  await stillServes('half-open sockets, afterwards');
}));

// ---------------------------------------------------------------------------------------------
// clients that stop reading while updates are pushed

// Complete WebSocket text frames in buf: their SignalR records.
function wsRecordsIn(buf) {
  const out = [];
  let text = '';
  for (;;) {
    const f = decodeFrame(buf);
    if (!f) break;
    buf = buf.subarray(f.length);
    if (f.opcode === OP.TEXT || f.opcode === OP.CONT) text += f.payload.toString('utf8');
  }
  const parts = text.split(RS);
  parts.pop(); // an unfinished record, if any
  return parts.map((p) => JSON.parse(p));
}

// A subscribed real client of FAT that must see every update; returns {conn, events, s0}.
async function fatWatcher(clientId) {
  const conn = build(server.hubUrl, fatKey, { transport: T.WebSockets });
  const events = new EventQueue(conn);
  await withTimeout(conn.start(), 5_000, 'watcher start');
  await withTimeout(conn.invoke('GetBalances', clientId), 5_000, 'watcher GetBalances');
  const [snap] = events.drain();
  assert.equal(snap.subject, 'account.balances.snapshot');
  return { conn, events, s0: snap.data.sequence };
}

// The most updates to push to FAT: enough to overflow the kernel's socket buffers (both sides,
// at their largest) and the server's 1 MiB output cap twice over.
function updateBudget(updateBytes) {
  const max = (f) => Number(readFileSync(f, 'utf8').trim().split(/\s+/).at(-1));
  const bytes = max('/proc/sys/net/ipv4/tcp_rmem') + max('/proc/sys/net/ipv4/tcp_wmem') + (1 << 20);
  return Math.ceil((2 * bytes) / updateBytes);
}

// Pushes updates to FAT, at most `budget`; stops a few after the server logged a slow-consumer
// close (only a shortcut: the cut itself is checked from the client's side). Then checks that
// the reading watcher got every update, in order. Returns the number pushed.
async function pushAndCheckWatcher(watcher, budget, marker) {
  const count = () => server.stderr().split(marker).length - 1;
  const before = count();
  const answers = [];
  let extra = -1;
  while (answers.length < budget && extra !== 0) {
    answers.push(await fatDeposit());
    if (extra > 0) extra--;
    else if (extra < 0 && count() > before) extra = 5;
  }
  const n = answers.length;
  assert.deepEqual(answers.map((a) => a.sequence), Array.from({ length: n }, (_, i) => watcher.s0 + 1 + i));
  const got = await watcher.events.next(n, 20_000);
  assert.deepEqual(got.map((e) => e.data.sequence), answers.map((a) => a.sequence), 'the reading client got every update, in order');
  assert.deepEqual(got.at(-1).data, answers.at(-1).data);
  return n;
}

test('a WebSocket client that stops reading while updates are pushed is cut off at the output cap; a reading client of the same user gets every update', { timeout: 40_000 }, ex(async (t) => {
  const ws = await RawWs.open(server, { query: `access_token=${encodeURIComponent(fatKey)}` });
  await ws.handshake();
  ws.sendText(inv(1, 'deaf'));
  const snap = await ws.nextRecord();
  const updateBytes = JSON.stringify(snap).length;
  assert.ok(updateBytes > 40_000, `a FAT update is big (${updateBytes} bytes)`);
  assert.deepEqual(await ws.nextRecord(), { type: 3, invocationId: '1', result: null });
  const watcher = await fatWatcher('watch-ws');
  ws.socket.sock.pause();
  const n = await pushAndCheckWatcher(watcher, updateBudget(updateBytes), 'slow consumer');
  ws.socket.sock.resume();
  await ws.socket.waitClosed(10_000);
  const seen = wsRecordsIn(ws.socket.buf).filter((m) => m.type === 1).map((m) => m.arguments[0].data.sequence);
  t.diagnostic(`the deaf WebSocket got ${seen.length} of ${n} updates (${updateBytes} bytes each) before the cut`);
  assert.ok(seen.length < n, `the deaf client was cut off: it got ${seen.length} of ${n} updates`);
  assert.deepEqual(seen, Array.from({ length: seen.length }, (_, i) => snap.arguments[0].data.sequence + 1 + i), 'what it got is an in-order prefix');
  await withTimeout(watcher.conn.stop(), 5_000, 'watcher stop');
  await stillServes('deaf WebSocket');
}));

test('an SSE client that stops reading while updates are pushed is cut off at the output cap; a reading client gets every update', { timeout: 40_000 }, ex(async (t) => {
  const id = await negotiate(fatKey);
  const sse = await sseOpen(id, { key: fatKey });
  await http('POST', hub(id), { key: fatKey, body: `{"protocol":"json","version":1}${RS}` });
  assert.equal(await sse.next(), `{}${RS}`);
  await http('POST', hub(id), { key: fatKey, body: inv(1, 'deaf-sse') });
  const snap = JSON.parse((await sse.next()).slice(0, -1));
  assert.equal(snap.arguments[0].subject, 'account.balances.snapshot');
  await sse.next(); // the completion
  const watcher = await fatWatcher('watch-sse');
  sse.socket.sock.pause();
  const n = await pushAndCheckWatcher(watcher, updateBudget(JSON.stringify(snap).length), 'slow consumer');
  sse.socket.sock.resume();
  await sse.socket.waitClosed(10_000);
  const seen = [];
  for (let ev; (ev = parseSseEvent(sse.socket.buf)); ) {
    sse.socket.take(ev.len);
    seen.push(JSON.parse(ev.data.slice(0, -1)).arguments[0].data.sequence);
  }
  t.diagnostic(`the deaf SSE stream got ${seen.length} of ${n} updates before the cut`);
  assert.ok(seen.length < n, `the deaf SSE client was cut off: it got ${seen.length} of ${n} updates`);
  assert.deepEqual(seen, Array.from({ length: seen.length }, (_, i) => snap.arguments[0].data.sequence + 1 + i));
  let status;
  for (let i = 0; i < 40 && status !== 404; i++, await sleep(50)) status = (await http('POST', hub(id), { key: fatKey, body: `{"type":6}${RS}` })).status;
  assert.equal(status, 404, 'the cut-off connection is gone');
  await withTimeout(watcher.conn.stop(), 5_000, 'watcher stop');
  await stillServes('deaf SSE');
}));

test('a Long Polling client that stops polling while updates are pushed is closed at the queue cap; a reading client gets every update', { timeout: 40_000 }, ex(async () => {
  const id = await lpOpen({ key: fatKey });
  await http('POST', hub(id), { key: fatKey, body: inv(1, 'deaf-lp') });
  const first = records((await http('GET', hub(id), { key: fatKey })).text);
  assert.equal(first[0].arguments[0].subject, 'account.balances.snapshot');
  const watcher = await fatWatcher('watch-lp');
  // at most three times the 1 MiB queue cap
  await pushAndCheckWatcher(watcher, Math.ceil((3 << 20) / JSON.stringify(first[0]).length), 'Long Polling connection: output over');
  const r = await http('GET', hub(id), { key: fatKey });
  assert.equal(r.status, 404, `the connection over its queue cap is gone (poll: ${r.status}, ${r.buf.length} bytes)`);
  await withTimeout(watcher.conn.stop(), 5_000, 'watcher stop');
  await stillServes('LP that stopped polling');
}));
