// Core checks of every SignalR transport on the server side: negotiate's transports and
// useStatefulReconnect; the real client over WebSockets, Server-Sent Events and Long Polling with
// JSON and MessagePack; raw Long Polling (first poll, held polls, 204 for a replaced poll, poll
// timeout, DELETE, abandoned connections) and raw SSE (event framing, POST, 409); the key on every
// transport request (401/403/404); CORS preflight and headers; stateful reconnect across a dropped
// WebSocket (nothing lost, nothing duplicated, the reconnect window); and graceful shutdown (every
// transport gets Close with allowReconnect:true, exit 0).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  RS,
  RawSocket,
  RawWs,
  assertDemoSnapshot,
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
const ALLOWED = 'http://allowed.example:8080';
const USER = 'transports-core';

let dir;
let token;
let server; // admin API, CORS list, short reconnect window, short LP poll timeout
let userKey; // of USER, whose balances the tests change (the demo user's stay the seed's)
let quick; // short client timeout and poll timeout, CORS *, stateful reconnect off
const ex = (fn) => explained(() => server, fn);
const exq = (fn) => explained(() => quick, fn);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  dir = makeTempDir();
  token = randomBytes(32).toString('hex');
  const tokenFile = path.join(dir, 'admin-token');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  server = await startServer({
    dataDir: dir,
    ownDataDir: true,
    extraArgs: [
      '--admin-token-file', tokenFile,
      '--cors-origins', ` ${ALLOWED} , http://second.example `,
      '--reconnect-window-ms', '1500',
      '--lp-poll-timeout-ms', '3000',
    ],
  });
  quick = await startServer({
    extraArgs: ['--client-timeout-ms', '1500', '--lp-poll-timeout-ms', '600', '--reconnect-window-ms', '0', '--cors-origins', '*'],
  });
  await adminOk('POST', '/admin/users', { userId: USER, baseCurrency: 'EUR', totalMaxExposure: '1000', opId: `create-${USER}` }, 201);
  userKey = (await adminOk('POST', `/admin/users/${USER}/keys`, {}, 201)).apiKey;
});

after(async () => {
  if (quick) await quick.stop();
  if (server) await server.stop();
  else removeTempDir(dir);
});

// ---------------------------------------------------------------------------------------------
// helpers

async function http(srv, method, target, { key = srv.apiKey, headers = {}, body, base = srv.url } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  const res = await withTimeout(fetch(base + target, { method, headers: h, body }), 10_000, `${method} ${target}`);
  const buf = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, text: buf.toString('utf8'), buf };
}

async function negotiate(srv, query = 'negotiateVersion=1', opts) {
  const r = await http(srv, 'POST', `${HUB_PATH}/negotiate?${query}`, opts);
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text);
}

const hub = (id) => `${HUB_PATH}?id=${encodeURIComponent(id)}`;
const records = (text) => text.split(RS).filter((s) => s.length > 0).map((s) => JSON.parse(s));

// On the operations listener; keys in the answers are recorded for the log scan.
async function adminOk(method, urlPath, body, status = 200) {
  const r = await http(server, method, urlPath, { base: server.adminUrl, key: token, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  assert.equal(r.status, status, `${method} ${urlPath} -> ${r.status} ${r.text}`);
  return recordSecrets(JSON.parse(r.text));
}

let ops = 0;
const deposit = () => adminOk('POST', `/admin/users/${USER}/ops`, { opId: `tc-${process.pid}-${++ops}`, op: 'deposit', asset: 'BTC', amount: '0.5' });

// A raw Long Polling connection through its handshake: {id, poll()} with the first poll done.
async function lpOpen(srv) {
  const n = await negotiate(srv);
  const first = await http(srv, 'GET', hub(n.connectionToken));
  assert.equal(first.status, 200, 'the first poll answers at once');
  assert.equal(first.text, '');
  const post = await http(srv, 'POST', hub(n.connectionToken), { body: `{"protocol":"json","version":1}${RS}` });
  assert.equal(post.status, 200);
  const hs = await http(srv, 'GET', hub(n.connectionToken));
  assert.equal(hs.status, 200);
  assert.equal(hs.text, `{}${RS}`);
  return n.connectionToken;
}

// A raw SSE stream: the head, then read() returns the events (data values) seen so far.
async function sseOpen(srv, id, { key = srv.apiKey } = {}) {
  const s = await RawSocket.connect(srv.port, srv);
  s.write(`GET ${hub(id)}&access_token=${encodeURIComponent(key)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
  const res = await s.waitFor(parseHttpResponse, 5_000, 'the SSE response head');
  s.take(res.length);
  // Events end with an empty line; each data line is "data: ...".
  const next = async (ms = 5_000) => {
    const ev = await s.waitFor((b) => {
      const t = b.toString('utf8');
      const m = /^(?:\r\n)*((?:data: [^\r\n]*\r\n)+)\r\n/.exec(t);
      return m ? { len: Buffer.byteLength(m[0]), data: m[1].split('\r\n').filter(Boolean).map((l) => l.slice(6)).join('\n') } : undefined;
    }, ms, 'an SSE event');
    s.take(ev.len);
    return ev.data;
  };
  return { res, socket: s, next };
}

// A TCP proxy in front of the server that can drop every connection and hold new ones.
async function proxy(port) {
  const pairs = new Set();
  const held = [];
  let paused = false;
  const srv = net.createServer((c) => {
    const start = () => {
      const u = net.createConnection({ host: '127.0.0.1', port });
      const p = { c, u };
      pairs.add(p);
      c.pipe(u);
      u.pipe(c);
      const end = () => {
        c.destroy();
        u.destroy();
        pairs.delete(p);
      };
      for (const s of [c, u]) {
        s.on('error', end);
        s.on('close', end);
      }
    };
    if (paused) held.push(start);
    else start();
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}${HUB_PATH}`,
    pause: () => (paused = true),
    resume: () => {
      paused = false;
      for (const s of held.splice(0)) s();
    },
    drop: () => {
      for (const p of pairs) {
        p.c.destroy();
        p.u.destroy();
      }
      pairs.clear();
    },
    close: () => {
      for (const p of pairs) p.c.destroy();
      srv.close();
    },
  };
}

function client(url, key, { transport = T.WebSockets, msgpack = false, stateful = false } = {}) {
  const b = new signalR.HubConnectionBuilder()
    .withUrl(url, { transport, accessTokenFactory: () => key })
    .configureLogging(process.env.BALANCEHUB_TEST_SIGNALR_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None);
  if (msgpack) b.withHubProtocol(new MessagePackHubProtocol());
  if (stateful) b.withStatefulReconnect();
  return b.build();
}

// ---------------------------------------------------------------------------------------------
// negotiate

test('negotiate v1 lists WebSockets [Text, Binary], ServerSentEvents [Text], LongPolling [Text, Binary]', { timeout: 15_000 }, ex(async () => {
  const n = await negotiate(server);
  assert.deepEqual(n.availableTransports, [
    { transport: 'WebSockets', transferFormats: ['Text', 'Binary'] },
    { transport: 'ServerSentEvents', transferFormats: ['Text'] },
    { transport: 'LongPolling', transferFormats: ['Text', 'Binary'] },
  ]);
  assert.equal(n.useStatefulReconnect, undefined, 'not offered unless asked');
  const s = await negotiate(server, 'negotiateVersion=1&useStatefulReconnect=true');
  assert.equal(s.useStatefulReconnect, true);
  const v0 = await negotiate(server, 'useStatefulReconnect=true');
  assert.equal(v0.negotiateVersion, 0);
  assert.equal(v0.useStatefulReconnect, undefined);
  assert.equal(v0.availableTransports.length, 3);
}));

test('negotiate: no useStatefulReconnect when the server turned it off (--reconnect-window-ms 0)', { timeout: 15_000 }, exq(async () => {
  const s = await negotiate(quick, 'negotiateVersion=1&useStatefulReconnect=true');
  assert.equal(s.useStatefulReconnect, undefined);
}));

// ---------------------------------------------------------------------------------------------
// the real client on every transport and protocol

for (const [name, transport, msgpack] of [
  ['WebSockets json', T.WebSockets, false],
  ['WebSockets messagepack', T.WebSockets, true],
  ['ServerSentEvents json', T.ServerSentEvents, false],
  ['LongPolling json', T.LongPolling, false],
  ['LongPolling messagepack', T.LongPolling, true],
]) {
  test(`real client, ${name}: GetBalances, a live update, clean stop`, { timeout: 20_000 }, ex(async () => {
    const conn = client(server.hubUrl, userKey, { transport, msgpack });
    const events = new EventQueue(conn);
    let closed;
    conn.onclose((e) => (closed = e ?? 'clean'));
    await withTimeout(conn.start(), 5_000, 'start');
    await withTimeout(conn.invoke('GetBalances', `c-${name}`), 5_000, 'GetBalances');
    const [snap] = await events.next(1);
    assert.equal(snap.subject, 'account.balances.snapshot');
    assert.equal(snap.clientId, `c-${name}`);
    assert.equal(snap.data.userId, USER);
    const seq = snap.data.sequence;
    await deposit();
    const [upd] = await events.next(1);
    assert.equal(upd.subject, 'account.balances.update');
    assert.equal(upd.clientId, `c-${name}`);
    assert.equal(upd.data.sequence, seq + 1);
    await withTimeout(conn.stop(), 5_000, 'stop');
    assert.equal(closed, 'clean');
  }));
}

// ---------------------------------------------------------------------------------------------
// Long Polling, raw

test('LP: 400 without id, 401 without or with a bad key, 404 unknown id, 403 another key', { timeout: 15_000 }, ex(async () => {
  const n = await negotiate(server);
  assert.equal((await http(server, 'GET', HUB_PATH)).status, 400);
  assert.equal((await http(server, 'GET', hub(n.connectionToken), { key: null })).status, 401);
  assert.equal((await http(server, 'GET', hub(n.connectionToken), { key: 'nope' })).status, 401);
  assert.equal((await http(server, 'POST', hub(n.connectionToken), { key: null, body: 'x' })).status, 401);
  assert.equal((await http(server, 'DELETE', hub(n.connectionToken), { key: null })).status, 401);
  assert.equal((await http(server, 'GET', hub('A'.repeat(54)))).status, 404);
  assert.equal((await http(server, 'GET', hub('unknown'))).status, 404);
  const other = await adminOk('POST', '/admin/users/user-123/keys', {}, 201);
  assert.equal((await http(server, 'GET', hub(n.connectionToken), { key: other.apiKey })).status, 403);
  assert.equal((await http(server, 'POST', hub(n.connectionToken), { key: other.apiKey, body: 'x' })).status, 403);
  // The connection is still there for its own key.
  assert.equal((await http(server, 'GET', hub(n.connectionToken))).status, 200);
  assert.equal((await http(server, 'DELETE', hub(n.connectionToken))).status, 202);
}));

test('LP: a poll takes everything queued (event + completion in one text/plain body)', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen(server);
  const post = await http(server, 'POST', hub(id), { body: `{"type":1,"invocationId":"7","target":"GetBalances","arguments":["lp"]}${RS}` });
  assert.equal(post.status, 200);
  const r = await http(server, 'GET', hub(id));
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain/);
  const recs = records(r.text);
  assert.equal(recs.length, 2, r.text);
  assert.equal(recs[0].target, 'executionEvents');
  assertDemoSnapshot(recs[0].arguments[0], 'lp');
  assert.deepEqual(recs[1], { type: 3, invocationId: '7', result: null });
  assert.equal((await http(server, 'DELETE', hub(id))).status, 202);
}));

test('LP: a held poll is answered when data comes; a newer poll ends the held one with 204', { timeout: 15_000 }, ex(async () => {
  const id = await lpOpen(server);
  const held = http(server, 'GET', hub(id));
  await sleep(150);
  const post = await http(server, 'POST', hub(id), { body: `{"type":1,"invocationId":"1","target":"NoSuch","arguments":[]}${RS}` });
  assert.equal(post.status, 200);
  const r = await held;
  assert.equal(r.status, 200);
  assert.deepEqual(records(r.text), [{ type: 3, invocationId: '1', error: "Unknown hub method 'NoSuch'" }]);
  const first = http(server, 'GET', hub(id));
  await sleep(150);
  const second = http(server, 'GET', hub(id));
  assert.equal((await first).status, 204);
  await sleep(100);
  // DELETE: 202, the pending poll gets 204, then the id is gone.
  assert.equal((await http(server, 'DELETE', hub(id))).status, 202);
  assert.equal((await second).status, 204);
  assert.equal((await http(server, 'GET', hub(id))).status, 404);
  assert.equal((await http(server, 'POST', hub(id), { body: `{"type":6}${RS}` })).status, 404);
}));

test('LP: a poll without data is answered 200 empty after the poll timeout', { timeout: 15_000 }, exq(async () => {
  const id = await lpOpen(quick);
  const t0 = Date.now();
  const r = await http(quick, 'GET', hub(id));
  assert.equal(r.status, 200);
  assert.equal(r.text, '');
  assert.ok(Date.now() - t0 >= 500, `answered after ${Date.now() - t0} ms (timeout 600)`);
  // Still alive: the next poll gets what is sent.
  const p = http(quick, 'GET', hub(id));
  await sleep(100);
  await http(quick, 'POST', hub(id), { body: `{"type":1,"invocationId":"2","target":"x","arguments":[]}${RS}` });
  assert.equal(records((await p).text)[0].invocationId, '2');
}));

test('LP: a connection nobody polls for the client timeout is cleaned up (404 afterwards)', { timeout: 15_000 }, exq(async () => {
  const id = await lpOpen(quick);
  await sleep(2_200); // client timeout 1.5 s
  assert.equal((await http(quick, 'GET', hub(id))).status, 404);
}));

test('LP messagepack: binary bodies (application/octet-stream), VarInt-framed messages', { timeout: 15_000 }, ex(async () => {
  const n = await negotiate(server);
  const id = n.connectionToken;
  assert.equal((await http(server, 'GET', hub(id))).status, 200);
  await http(server, 'POST', hub(id), { body: `{"protocol":"messagepack","version":1}${RS}` });
  const hs = await http(server, 'GET', hub(id));
  assert.equal(hs.headers.get('content-type'), 'application/octet-stream');
  assert.equal(hs.text, `{}${RS}`);
  // [1, {}, "9", "GetBalances", ["mp"]] as an invocation, VarInt length prefix.
  const msg = Buffer.from([0x95, 0x01, 0x80, 0xa1, 0x39, 0xab, ...Buffer.from('GetBalances'), 0x91, 0xa2, 0x6d, 0x70]);
  await http(server, 'POST', hub(id), { body: Buffer.concat([Buffer.from([msg.length]), msg]), headers: { 'content-type': 'application/octet-stream' } });
  const r = await http(server, 'GET', hub(id));
  assert.equal(r.headers.get('content-type'), 'application/octet-stream');
  const p = new MessagePackHubProtocol().parseMessages(r.buf.buffer.slice(r.buf.byteOffset, r.buf.byteOffset + r.buf.length), signalR.NullLogger.instance);
  assert.equal(p.length, 2);
  assert.equal(p[0].target, 'executionEvents');
  assertDemoSnapshot(p[0].arguments[0], 'mp');
  assert.equal(p[1].type, 3);
  assert.equal(p[1].invocationId, '9');
  assert.equal((await http(server, 'DELETE', hub(id))).status, 202);
}));

// ---------------------------------------------------------------------------------------------
// Server-Sent Events, raw

test('SSE: text/event-stream, no-cache, no Content-Length; messages as data: events; 409 for a second stream', { timeout: 15_000 }, ex(async () => {
  const n = await negotiate(server);
  const id = n.connectionToken;
  const sse = await sseOpen(server, id);
  assert.equal(sse.res.status, 200);
  assert.equal(sse.res.headers['content-type'], 'text/event-stream');
  assert.match(sse.res.headers['cache-control'], /no-cache/);
  assert.equal(sse.res.headers['content-length'], undefined);
  assert.equal(sse.res.headers['transfer-encoding'], undefined);
  assert.equal((await http(server, 'GET', hub(id), { headers: { accept: 'text/event-stream' } })).status, 409);
  assert.equal((await http(server, 'POST', hub(id), { body: `{"protocol":"json","version":1}${RS}` })).status, 200);
  assert.equal(await sse.next(), `{}${RS}`);
  await http(server, 'POST', hub(id), { body: `{"type":1,"invocationId":"s","target":"GetBalances","arguments":["sse"]}${RS}` });
  const ev = JSON.parse((await sse.next()).slice(0, -1));
  assertDemoSnapshot(ev.arguments[0], 'sse');
  assert.equal(await sse.next(), `{"type":3,"invocationId":"s","result":null}${RS}`);
  // A Close from the client ends the stream.
  await http(server, 'POST', hub(id), { body: `{"type":7}${RS}` });
  await sse.socket.waitClosed(3_000);
  // The session ends when the server sees the stream's TCP connection go.
  let status;
  for (let i = 0; i < 40 && status !== 404; i++, await sleep(50))
    status = (await http(server, 'GET', hub(id), { headers: { accept: 'text/event-stream' } })).status;
  assert.equal(status, 404);
}));

test('SSE: messagepack is refused at the handshake (SSE carries text only); 401 without a key', { timeout: 15_000 }, ex(async () => {
  const n = await negotiate(server);
  assert.equal((await http(server, 'GET', hub(n.connectionToken), { key: null, headers: { accept: 'text/event-stream' } })).status, 401);
  const sse = await sseOpen(server, n.connectionToken);
  await http(server, 'POST', hub(n.connectionToken), { body: `{"protocol":"messagepack","version":1}${RS}` });
  const ans = JSON.parse((await sse.next()).slice(0, -1));
  assert.match(ans.error, /does not support 'Binary'/);
  await sse.socket.waitClosed(3_000);
}));

test('POST to a WebSocket connection is 405; a second WebSocket for it is 409; the wrong key is 403', { timeout: 15_000 }, ex(async () => {
  const n = await negotiate(server);
  const ws = await RawWs.open(server, { query: `id=${n.connectionToken}&access_token=${encodeURIComponent(server.apiKey)}` });
  await ws.handshake();
  assert.equal((await http(server, 'POST', hub(n.connectionToken), { body: `{"type":6}${RS}` })).status, 405);
  const again = await RawWs.upgradeRequest(server, { query: `id=${n.connectionToken}&access_token=${encodeURIComponent(server.apiKey)}` });
  assert.equal(again.res.status, 409);
  again.socket.destroy();
  const other = await adminOk('POST', '/admin/users/user-123/keys', {}, 201);
  const wrong = await RawWs.upgradeRequest(server, { query: `id=${n.connectionToken}&access_token=${encodeURIComponent(other.apiKey)}` });
  assert.equal(wrong.res.status, 403);
  wrong.socket.destroy();
  await ws.close();
}));

// ---------------------------------------------------------------------------------------------
// CORS

test('CORS: preflight for an allowed origin is 204 with the allow headers; others get 403 and nothing', { timeout: 15_000 }, ex(async () => {
  for (const target of [`${HUB_PATH}/negotiate?negotiateVersion=1`, `${HUB_PATH}?id=x`]) {
    const ok = await http(server, 'OPTIONS', target, {
      key: null,
      headers: { origin: ALLOWED, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,x-signalr-user-agent' },
    });
    assert.equal(ok.status, 204);
    assert.equal(ok.headers.get('access-control-allow-origin'), ALLOWED);
    assert.equal(ok.headers.get('access-control-allow-credentials'), 'true');
    assert.match(ok.headers.get('access-control-allow-methods'), /POST/);
    assert.match(ok.headers.get('access-control-allow-methods'), /DELETE/);
    for (const h of ['Authorization', 'Content-Type', 'X-Requested-With', 'X-SignalR-User-Agent'])
      assert.match(ok.headers.get('access-control-allow-headers'), new RegExp(h));
    assert.ok(Number(ok.headers.get('access-control-max-age')) > 0);
    const bad = await http(server, 'OPTIONS', target, { key: null, headers: { origin: 'http://evil.example', 'access-control-request-method': 'POST' } });
    assert.equal(bad.status, 403);
    assert.equal(bad.headers.get('access-control-allow-origin'), null);
  }
  const second = await http(server, 'OPTIONS', HUB_PATH, { key: null, headers: { origin: 'http://second.example' } });
  assert.equal(second.headers.get('access-control-allow-origin'), 'http://second.example');
}));

test('CORS: actual responses carry the headers for an allowed origin only (also on 401)', { timeout: 15_000 }, ex(async () => {
  const ok = await http(server, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { headers: { origin: ALLOWED } });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('access-control-allow-origin'), ALLOWED);
  assert.equal(ok.headers.get('access-control-allow-credentials'), 'true');
  const denied = await http(server, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { key: null, headers: { origin: ALLOWED } });
  assert.equal(denied.status, 401);
  assert.equal(denied.headers.get('access-control-allow-origin'), ALLOWED);
  const evil = await http(server, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { headers: { origin: 'http://evil.example' } });
  assert.equal(evil.status, 200);
  assert.equal(evil.headers.get('access-control-allow-origin'), null);
  const any = await http(quick, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { headers: { origin: 'http://anything.example' } });
  assert.equal(any.headers.get('access-control-allow-origin'), 'http://anything.example', '* echoes the origin');
}));

// ---------------------------------------------------------------------------------------------
// stateful reconnect

for (const msgpack of [false, true]) {
  test(`stateful reconnect (${msgpack ? 'messagepack' : 'json'}): a dropped WebSocket resumes; updates sent meanwhile arrive once, in order`, { timeout: 20_000 }, ex(async () => {
    const px = await proxy(server.port);
    try {
      const conn = client(px.url, userKey, { stateful: true, msgpack });
      let reconnecting = 0;
      conn.onreconnecting(() => reconnecting++);
      const events = new EventQueue(conn);
      await withTimeout(conn.start(), 5_000, 'start');
      await conn.invoke('GetBalances', 'sr');
      const [snap] = await events.next(1);
      const s0 = snap.data.sequence;
      await deposit();
      assert.equal((await events.next(1))[0].data.sequence, s0 + 1); // not acknowledged yet: replayed, ignored
      px.pause();
      px.drop();
      await sleep(100);
      for (let i = 0; i < 5; i++) await deposit();
      const call = conn.invoke('GetBalances', 'gap'); // buffered by the client, sent on resume
      await sleep(100);
      px.resume();
      await withTimeout(call, 5_000, 'GetBalances sent during the gap');
      const got = await events.next(6);
      assert.deepEqual(got.map((e) => [e.subject, e.data.sequence]), [
        ...[2, 3, 4, 5, 6].map((d) => ['account.balances.update', s0 + d]),
        ['account.balances.snapshot', s0 + 6],
      ]);
      await sleep(1_300); // past the client's 1 s Ack timer: anything duplicated would be here
      assert.equal(events.drain().length, 0);
      assert.equal(conn.state, signalR.HubConnectionState.Connected);
      assert.equal(reconnecting, 0, 'stateful reconnect is invisible to the application');
      await deposit();
      assert.equal((await events.next(1))[0].data.sequence, s0 + 7);
      await conn.stop();
    } finally {
      px.close();
    }
  }));
}

test('stateful reconnect: after the reconnect window the session is gone and the client closes', { timeout: 20_000 }, ex(async () => {
  const px = await proxy(server.port);
  try {
    const conn = client(px.url, userKey, { stateful: true });
    const closed = new Promise((resolve) => conn.onclose((e) => resolve(e ?? null)));
    await withTimeout(conn.start(), 5_000, 'start');
    await conn.invoke('GetBalances', 'late');
    px.pause();
    px.drop();
    await sleep(2_000); // window 1.5 s
    px.resume();
    const err = await withTimeout(closed, 5_000, 'onclose after a failed resume');
    assert.ok(err, 'closed with an error');
  } finally {
    px.close();
  }
}));

// ---------------------------------------------------------------------------------------------
// graceful shutdown

test('SIGTERM: WebSockets, SSE and Long Polling each get Close with allowReconnect:true; exit 0', { timeout: 20_000 }, async () => {
  const srv = await startServer();
  const exited = new Promise((resolve) => srv.proc.on('exit', (code, signal) => resolve({ code, signal })));
  try {
    const ws = await RawWs.open(srv);
    await ws.handshake();
    const sseId = (await negotiate(srv)).connectionToken;
    const sse = await sseOpen(srv, sseId);
    await http(srv, 'POST', hub(sseId), { body: `{"protocol":"json","version":1}${RS}` });
    assert.equal(await sse.next(), `{}${RS}`);
    const lpId = await lpOpen(srv);
    const poll = http(srv, 'GET', hub(lpId));
    await sleep(150);
    srv.proc.kill('SIGTERM');
    const close = { type: 7, allowReconnect: true };
    assert.deepEqual(await ws.nextRecord(3_000), close);
    assert.deepEqual(JSON.parse((await sse.next(3_000)).slice(0, -1)), close);
    assert.deepEqual(records((await poll).text), [close]);
    assert.deepEqual(await withTimeout(exited, 10_000, 'exit after SIGTERM'), { code: 0, signal: null });
  } catch (err) {
    throw srv.explain(err);
  } finally {
    if (srv.alive()) srv.proc.kill('SIGKILL');
    for (const s of srv.sockets) s.destroy();
    removeTempDir(srv.dataDir);
  }
});
