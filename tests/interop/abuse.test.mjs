// Hostile clients (issue 7): failed-auth throttling per source address (127.0.0.2 guesses keys
// until 429, then even a good key from there is refused before it is looked at, while 127.0.0.3
// and 127.0.0.1 are served; a token comes back after Retry-After), slowloris (one header byte a
// second is cut within the request timeout), a WebSocket upgrade that never finishes, and a
// WebSocket that never sends the SignalR handshake. Each test proves the server stays up,
// another client is unaffected, and the matching /metrics counter moved.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  RS,
  RawSocket,
  RawWs,
  OP,
  assertDemoSnapshot,
  closePayload,
  explained,
  parseHttpResponse,
  startServer,
  withTimeout,
} from './harness.mjs';

const BURST = 5;
const RATE = 0.5; // failures refilled per second: one every 2 s
const REQUEST_TIMEOUT_MS = 2_000;
const HANDSHAKE_TIMEOUT_MS = 1_000;
const MAX_BODY = 65_536; // the largest WebSocket message (--max-body)
const ORIGIN = 'http://app.example.test';
const THROTTLED = 'Too Many Requests: too many failed authentications';

let server;
const ex = (fn) => explained(() => server, fn);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  server = await startServer({
    extraArgs: [
      '--auth-fail-burst', String(BURST),
      '--auth-fail-rate', String(RATE),
      '--request-timeout-ms', String(REQUEST_TIMEOUT_MS),
      '--handshake-timeout-ms', String(HANDSHAKE_TIMEOUT_MS),
      '--max-body', String(MAX_BODY),
      '--cors-origins', ORIGIN,
    ],
  });
});

after(async () => {
  if (server) await server.stop();
});

// ---------------------------------------------------------------------------------------------
// helpers

// One HTTP request on a fresh connection from localAddress (a loopback alias: 127.0.0.0/8).
function httpFrom(localAddress, method, target, { key, headers = {}, body } = {}) {
  const h = { ...headers };
  if (key !== undefined) h.authorization = `Bearer ${key}`;
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: server.port, method, path: target, headers: h, localAddress, agent: false },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    }),
    5_000,
    `${method} ${target} from ${localAddress}`,
  );
}

const negotiateFrom = (addr, key, headers) =>
  httpFrom(addr, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { key, headers });

// A TCP connection to the server from localAddress, as a RawSocket the server's stop() destroys.
async function socketFrom(localAddress) {
  const sock = net.createConnection({ host: '127.0.0.1', port: server.port, localAddress });
  await withTimeout(
    new Promise((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    }),
    5_000,
    `connect from ${localAddress}`,
  );
  server.sockets.add(sock);
  sock.on('close', () => server.sockets.delete(sock));
  return new RawSocket(sock);
}

function upgradeHead(query) {
  return (
    `GET ${HUB_PATH}?${query} HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n` +
    'Sec-WebSocket-Version: 13\r\n\r\n'
  );
}

async function upgradeFrom(localAddress, key) {
  const s = await socketFrom(localAddress);
  s.write(upgradeHead(`access_token=${encodeURIComponent(key)}`));
  const res = await s.waitFor(parseHttpResponse, 5_000, 'the upgrade response');
  s.take(res.length);
  return { res, socket: s };
}

// A WebSocket hub connection from localAddress with the demo key: handshake, GetBalances, the
// exact demo snapshot and the completion, clean close.
async function balancesOverRawWs(localAddress, clientId) {
  const { res, socket } = await upgradeFrom(localAddress, server.apiKey);
  assert.equal(res.status, 101, `upgrade from ${localAddress}: ${res.status} ${res.body}`);
  const ws = new RawWs(socket);
  await ws.handshake();
  ws.sendText(JSON.stringify({ type: 1, invocationId: '1', target: 'GetBalances', arguments: [clientId] }) + RS);
  const ev = await ws.nextRecord();
  assert.equal(ev.type, 1, JSON.stringify(ev));
  assert.equal(ev.target, 'executionEvents');
  assertDemoSnapshot(ev.arguments[0], clientId);
  assert.deepEqual(await ws.nextRecord(), { type: 3, invocationId: '1', result: null });
  await ws.close();
}

// The real client (from 127.0.0.1) connects and gets the demo snapshot.
async function realClientBalances(clientId) {
  const conn = server.connect();
  const q = new EventQueue(conn);
  await withTimeout(conn.start(), 10_000, 'start');
  await withTimeout(conn.invoke('GetBalances', clientId), 5_000, 'GetBalances');
  assertDemoSnapshot((await q.next(1))[0], clientId);
  await withTimeout(conn.stop(), 5_000, 'stop');
  server.connections.delete(conn);
}

// /metrics of the operations listener as a Map of "name{labels}" -> value.
async function metrics() {
  assert.ok(server.adminUrl, 'the operations listener is on (harness server.adminUrl)');
  const res = await withTimeout(fetch(`${server.adminUrl}/metrics`), 5_000, 'GET /metrics');
  assert.equal(res.status, 200);
  const m = new Map();
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

function metric(m, name) {
  assert.ok(m.has(name), `/metrics has ${name}`);
  return m.get(name);
}

const TIMEOUTS = 'bh_limit_rejections_total{limit="timeout"}';

// Polls /metrics until name has grown by at least by (the close that counts it may come a
// moment after the client saw it).
async function metricGrew(before, name, by = 1) {
  let now;
  for (let i = 0; i < 40; i++) {
    now = metric(await metrics(), name);
    if (now >= metric(before, name) + by) return now;
    await sleep(50);
  }
  assert.fail(`${name}: ${metric(before, name)} -> ${now}, expected +${by}`);
}

function badKey() {
  return `bh_${randomBytes(8).toString('hex')}_${randomBytes(32).toString('base64url')}`;
}

// ---------------------------------------------------------------------------------------------
// failed-auth throttling

test('failed authentications from one address: 429 after the burst for every key, others unaffected, a token back after Retry-After', { timeout: 30_000 }, ex(async () => {
  const m0 = await metrics();
  // The burst: every failure is a 401 until the address has none left (no key counts too).
  const statuses = [];
  for (let i = 0; i < BURST + 3 && statuses.at(-1) !== 429; i++) {
    const r = await negotiateFrom('127.0.0.2', i === 0 ? undefined : badKey());
    statuses.push(r.status);
  }
  assert.deepEqual(statuses, [...Array(BURST).fill(401), 429], 'exactly the burst of 401s, then 429');

  // Now even the good key is refused from there, on every authenticated endpoint, with the same
  // answer whatever the key: it is never looked at.
  const good = await negotiateFrom('127.0.0.2', server.apiKey, { origin: ORIGIN });
  assert.equal(good.status, 429);
  assert.equal(good.text, THROTTLED);
  assert.match(good.headers['content-type'], /^text\/plain/);
  assert.equal(good.headers['retry-after'], String(Math.ceil(1 / RATE)), 'Retry-After in whole seconds');
  assert.equal(good.headers['access-control-allow-origin'], ORIGIN, 'CORS headers as on every hub answer');
  assert.equal(good.headers['access-control-allow-credentials'], 'true');
  const bad = await negotiateFrom('127.0.0.2', badKey());
  assert.deepEqual([bad.status, bad.text, bad.headers['retry-after']], [429, THROTTLED, good.headers['retry-after']]);
  const up = await upgradeFrom('127.0.0.2', server.apiKey);
  up.socket.destroy();
  assert.deepEqual([up.res.status, up.res.body], [429, THROTTLED], 'WebSocket upgrade');
  assert.ok(Number(up.res.headers['retry-after']) >= 1);

  // A session negotiated from elsewhere cannot be used from the throttled address either.
  const n3 = await negotiateFrom('127.0.0.3', server.apiKey);
  assert.equal(n3.status, 200, n3.text);
  const id = encodeURIComponent(JSON.parse(n3.text).connectionToken);
  for (const [method, headers] of [['GET', {}], ['GET', { accept: 'text/event-stream' }], ['POST', {}], ['DELETE', {}]]) {
    const r = await httpFrom('127.0.0.2', method, `${HUB_PATH}?id=${id}`, { key: server.apiKey, headers });
    assert.deepEqual([r.status, r.text], [429, THROTTLED], `${method} ${JSON.stringify(headers)} from 127.0.0.2`);
  }
  assert.equal((await httpFrom('127.0.0.3', 'DELETE', `${HUB_PATH}?id=${id}`, { key: server.apiKey })).status, 202);

  // Other addresses are served: 127.0.0.3 over a raw WebSocket, 127.0.0.1 with the real client.
  await balancesOverRawWs('127.0.0.3', 'from-127.0.0.3');
  await realClientBalances('from-127.0.0.1');
  // A bad key from 127.0.0.3 is its own 401, not a 429.
  assert.equal((await negotiateFrom('127.0.0.3', badKey())).status, 401);

  const m1 = await metrics();
  assert.equal(metric(m1, 'bh_auth_failures_total') - metric(m0, 'bh_auth_failures_total'), BURST + 1, 'auth failures');
  const throttled = 'bh_limit_rejections_total{limit="auth_throttle"}';
  assert.equal(metric(m1, throttled) - metric(m0, throttled), 8, '429s of the throttle');

  // After Retry-After a token is back: the good key works from 127.0.0.2 again.
  await sleep(Number(good.headers['retry-after']) * 1000);
  let ok;
  for (let i = 0; i < 20; i++) {
    ok = await negotiateFrom('127.0.0.2', server.apiKey);
    if (ok.status !== 429) break;
    await sleep(100);
  }
  assert.equal(ok.status, 200, `good key from 127.0.0.2 after the refill: ${ok.status} ${ok.text}`);
  await balancesOverRawWs('127.0.0.2', 'from-127.0.0.2');
  // One token only: one more failure takes it, and the address is throttled again.
  assert.equal((await negotiateFrom('127.0.0.2', badKey())).status, 401);
  assert.equal((await negotiateFrom('127.0.0.2', server.apiKey)).status, 429);
  // A CORS preflight needs no authentication and is still answered.
  const pre = await httpFrom('127.0.0.2', 'OPTIONS', `${HUB_PATH}/negotiate`, {
    headers: { origin: ORIGIN, 'access-control-request-method': 'POST' },
  });
  assert.equal(pre.status, 204);
  assert.ok(server.alive());
}));

// ---------------------------------------------------------------------------------------------
// slow and unfinished requests

test('slowloris: one header byte per second is cut off within the request timeout; another client gets its balances meanwhile', { timeout: 30_000 }, ex(async () => {
  const m0 = await metrics();
  const s = await RawSocket.connect(server.port, server);
  const head = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUser-Agent: ${'x'.repeat(64)}\r\n\r\n`;
  const t0 = Date.now();
  let sent = 0;
  const drip = setInterval(() => {
    if (sent < head.length && !s.ended) s.write(head[sent++]);
  }, 1_000);
  s.write(head[sent++]);
  try {
    // Meanwhile the server serves others.
    await realClientBalances('during-slowloris');
    const hz = await withTimeout(fetch(`${server.url}/healthz`), 5_000, 'healthz');
    assert.equal(hz.status, 200);
    await s.waitClosed(REQUEST_TIMEOUT_MS + 3_000);
  } finally {
    clearInterval(drip);
  }
  const elapsed = Date.now() - t0;
  assert.ok(elapsed <= REQUEST_TIMEOUT_MS + 1_500, `cut after ${elapsed} ms (timeout ${REQUEST_TIMEOUT_MS} ms)`);
  assert.ok(sent < head.length, 'the request never completed');
  if (s.buf.length > 0) {
    const res = parseHttpResponse(s.buf);
    assert.equal(res?.status, 408, `what the server said: ${s.buf.toString('latin1').slice(0, 200)}`);
  }
  s.destroy();
  await metricGrew(m0, TIMEOUTS);
  await realClientBalances('after-slowloris');
  assert.ok(server.alive());
}));

test('a WebSocket upgrade request that never finishes is cut within the request timeout', { timeout: 30_000 }, ex(async () => {
  const m0 = await metrics();
  const s = await RawSocket.connect(server.port, server);
  const full = upgradeHead(`access_token=${encodeURIComponent(server.apiKey)}`);
  const t0 = Date.now();
  s.write(full.slice(0, full.length - 2)); // everything but the blank line that ends the head
  await realClientBalances('during-unfinished-upgrade');
  await s.waitClosed(REQUEST_TIMEOUT_MS + 3_000);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed <= REQUEST_TIMEOUT_MS + 1_500, `cut after ${elapsed} ms`);
  assert.ok(!s.buf.toString('latin1').startsWith('HTTP/1.1 101'), 'never upgraded');
  s.destroy();
  await metricGrew(m0, TIMEOUTS);
  assert.ok(server.alive());
}));

test('a WebSocket that never sends the SignalR handshake is closed after the handshake timeout', { timeout: 30_000 }, ex(async () => {
  const m0 = await metrics();
  const gauge = 'bh_hub_connections{transport="websockets",protocol="json"}';
  const ws = await RawWs.open(server);
  const t0 = Date.now();
  const other = realClientBalances('during-handshake-wait');
  const m = await ws.nextMessage(HANDSHAKE_TIMEOUT_MS + 3_000);
  const elapsed = Date.now() - t0;
  assert.deepEqual(m, { close: true, code: 1008, reason: 'handshake timeout' });
  assert.ok(elapsed >= HANDSHAKE_TIMEOUT_MS - 100 && elapsed <= HANDSHAKE_TIMEOUT_MS + 1_500, `closed after ${elapsed} ms`);
  ws.send(OP.CLOSE, closePayload(1008)); // the client's answer to the close
  await ws.socket.waitClosed(2_000);
  await other;
  await metricGrew(m0, TIMEOUTS);
  const m1 = await metrics();
  assert.equal(metric(m1, gauge), metric(m0, gauge), 'never counted as a hub connection');
  assert.ok(server.alive());
}));

test('a WebSocket message over --max-body is refused with close code 1009 and counted; the server carries on', { timeout: 30_000 }, ex(async () => {
  const m0 = await metrics();
  const ws = await RawWs.open(server);
  await ws.handshake();
  // Within the limit (many hub messages batched in one frame is fine): answered.
  const inv = (id) => JSON.stringify({ type: 1, invocationId: id, target: 'GetBalances', arguments: ['big'] }) + RS;
  ws.sendText(inv('1'));
  assert.equal((await ws.nextRecord()).type, 1);
  assert.deepEqual(await ws.nextRecord(), { type: 3, invocationId: '1', result: null });
  // One byte over: the WebSocket is closed with 1009 (message too big).
  ws.sendText(' '.repeat(MAX_BODY + 1));
  const m = await ws.nextMessage(5_000);
  assert.equal(m.close, true, JSON.stringify(m));
  assert.equal(m.code, 1009);
  await ws.socket.waitClosed(5_000);
  await metricGrew(m0, 'bh_limit_rejections_total{limit="request_size"}');
  await realClientBalances('after-1009');
  // The refused connection is gone from the server too (its hub connection ended).
  const gauge = 'bh_hub_connections{transport="websockets",protocol="json"}';
  let now;
  for (let i = 0; i < 40 && (now = metric(await metrics(), gauge)) !== metric(m0, gauge); i++) await sleep(50);
  assert.equal(now, metric(m0, gauge), 'hub connections back to where they were');
  assert.ok(server.alive());
}));

// ---------------------------------------------------------------------------------------------
// the hub's own metrics

test('metrics: hub connections by transport and protocol go up at the handshake and down at the end, once each; invocations and events are counted', { timeout: 30_000 }, ex(async () => {
  const key = (t, p) => `bh_hub_connections{transport="${t}",protocol="${p}"}`;
  const m0 = await metrics();
  const ws = await RawWs.open(server);
  let m1 = await metrics();
  assert.equal(metric(m1, key('websockets', 'json')), metric(m0, key('websockets', 'json')), 'not before the handshake');
  await ws.handshake();
  m1 = await metrics();
  assert.equal(metric(m1, key('websockets', 'json')), metric(m0, key('websockets', 'json')) + 1, 'up at the handshake');
  ws.sendText(JSON.stringify({ type: 1, invocationId: '1', target: 'GetBalances', arguments: ['m'] }) + RS);
  ws.sendText(JSON.stringify({ type: 1, invocationId: '2', target: 'GetBalances', arguments: [] }) + RS);
  ws.sendText(JSON.stringify({ type: 1, invocationId: '3', target: 'NoSuchMethod', arguments: [] }) + RS);
  const recs = [];
  for (let i = 0; i < 5; i++) recs.push(await ws.nextRecord());
  assert.deepEqual(recs.map((r) => [r.type, r.invocationId ?? r.arguments?.[0]?.subject]), [
    [1, 'account.balances.snapshot'],
    [3, '1'],
    [1, 'preChecksError'],
    [3, '2'],
    [3, '3'],
  ]);
  const m2 = await metrics();
  const d = (name) => metric(m2, name) - metric(m0, name);
  assert.equal(d('bh_hub_invocations_total{method="GetBalances",outcome="ok"}'), 2);
  assert.equal(d('bh_hub_invocations_total{method="unknown",outcome="error"}'), 1);
  assert.equal(d('bh_hub_events_total{subject="account.balances.snapshot"}'), 1);
  assert.equal(d('bh_hub_events_total{subject="preChecksError"}'), 1);
  await ws.close();
  let m3;
  for (let i = 0; i < 40; i++) {
    m3 = await metrics();
    if (metric(m3, key('websockets', 'json')) === metric(m0, key('websockets', 'json'))) break;
    await sleep(50);
  }
  assert.equal(metric(m3, key('websockets', 'json')), metric(m0, key('websockets', 'json')), 'down at the end');
  await sleep(200);
  assert.equal(metric(await metrics(), key('websockets', 'json')), metric(m0, key('websockets', 'json')), 'down once');
}));
