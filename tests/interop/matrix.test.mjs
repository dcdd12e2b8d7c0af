// The interop matrix with the real @microsoft/signalr client: every transport x every hub
// protocol it can carry x negotiate / skipNegotiation, each doing GetBalances (exact demo
// snapshot), receiving live updates caused by admin ops with exact sequences, and stopping
// cleanly with no session left on the server. Then the client's transport fallback when
// WebSockets (and Server-Sent Events) are refused, automatic reconnect after the server went away
// (restarted on the same port and data directory), and stateful reconnect (MessagePack) across
// sockets dropped while updates are flowing.
//
// The demo user's balances must read as the seed's in every snapshot, so each case's admin ops
// cancel out (deposit, allocate, release, withdraw): only `sequence` moves.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  DEMO_DATA,
  EventQueue,
  HUB_PATH,
  assertDemoSnapshot,
  explained,
  makeTempDir,
  removeTempDir,
  signalR,
  startServer,
  withTimeout,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const T = signalR.HttpTransportType;
const USER = 'user-123';
const TRANSPORT_CLASS = {
  [T.WebSockets]: 'WebSocketTransport',
  [T.ServerSentEvents]: 'ServerSentEventsTransport',
  [T.LongPolling]: 'LongPollingTransport',
};

let dir;
let token;
let server;
const ex = (fn) => explained(() => server, fn);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function writeTokenFile(d, tok) {
  const f = path.join(d, 'admin-token');
  writeFileSync(f, tok + '\n', { mode: 0o600 });
  return f;
}

before(async () => {
  dir = makeTempDir();
  token = randomBytes(32).toString('hex');
  server = await startServer({ dataDir: dir, ownDataDir: true, extraArgs: ['--admin-token-file', writeTokenFile(dir, token)] });
});

after(async () => {
  if (server) await server.stop();
  else removeTempDir(dir);
});

// ---------------------------------------------------------------------------------------------
// helpers

async function http(srv, method, target, { key = srv.apiKey, body, headers = {}, base = srv.url } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  const res = await withTimeout(fetch(base + target, { method, headers: h, body }), 10_000, `${method} ${target}`);
  return { status: res.status, text: await res.text() };
}

async function adminOp(srv, tok, body, user = USER) {
  const r = await http(srv, 'POST', `/admin/users/${user}/ops`, {
    base: srv.adminUrl, // the operations listener
    key: tok,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, `admin op ${JSON.stringify(body)} -> ${r.status} ${r.text}`);
  const ans = JSON.parse(r.text);
  assert.equal(typeof ans.sequence, 'number', r.text);
  return ans;
}

let opCounter = 0;
const opId = (what) => `mx-${what}-${process.pid}-${++opCounter}`;

// Four ops that leave the demo user as seeded; each pushes one update.
const ROUND_TRIP = [
  { op: 'deposit', asset: 'BTC', amount: '0.25' },
  { op: 'allocate', asset: 'USDT', amount: '100' },
  { op: 'release', asset: 'USDT', amount: '100' },
  { op: 'withdraw', asset: 'BTC', amount: '0.25' },
];

// What the demo data reads like after the first k ops of ROUND_TRIP.
function demoAfter(k) {
  const d = structuredClone(DEMO_DATA);
  const btc = d.assets[0];
  const usdt = d.assets[2];
  if (k >= 1 && k < 4) btc.available = 0.75;
  if (k === 2) {
    usdt.available = 900;
    usdt.allocated = 350;
  }
  return d;
}

function assertUpdate(env, clientId, data) {
  assert.deepEqual(
    env,
    { channel: 'executionEvents', topic: 'account.balances', subject: 'account.balances.update', type: 'message', clientId, data },
    'update envelope',
  );
}

// Completes after everything the server queued for this connection before the call (the
// server answers one connection's messages in order).
async function barrier(conn) {
  await assert.rejects(withTimeout(conn.invoke('MatrixBarrier'), 5_000, 'barrier invocation'), /Unknown hub method 'MatrixBarrier'/);
}

// An HttpClient that records every negotiate answer (the connection token is not public).
class RecordingHttpClient extends signalR.DefaultHttpClient {
  constructor() {
    super(signalR.NullLogger.instance);
    this.negotiations = [];
  }

  async send(request) {
    const res = await super.send(request);
    if (/\/negotiate\?/.test(request.url) && res.statusCode === 200) this.negotiations.push(JSON.parse(res.content));
    return res;
  }
}

const logLevel = () => (process.env.BALANCEHUB_TEST_SIGNALR_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None);

function build(url, key, { transport = T.WebSockets, msgpack = false, skipNegotiation = false, reconnect, stateful = false } = {}) {
  const httpClient = new RecordingHttpClient();
  const b = new signalR.HubConnectionBuilder()
    .withUrl(url, { transport, skipNegotiation, httpClient, accessTokenFactory: () => key })
    .configureLogging(logLevel());
  if (msgpack) b.withHubProtocol(new MessagePackHubProtocol());
  if (reconnect) b.withAutomaticReconnect(reconnect);
  if (stateful) b.withStatefulReconnect();
  const conn = b.build();
  return { conn, httpClient };
}

// The transport the connected client really uses (HttpConnection's private field).
const transportName = (conn) => conn.connection?.transport?.constructor?.name;

// A connection token is gone once the server has no session for it: a poll with it is 404
// (a live session of another transport answers 400, a pending one 200).
async function assertSessionGone(srv, connectionToken) {
  let last;
  for (let i = 0; i < 40; i++) {
    last = await http(srv, 'GET', `${HUB_PATH}?id=${encodeURIComponent(connectionToken)}`);
    if (last.status === 404) return;
    await sleep(50);
  }
  assert.fail(`the server still knows connection ${connectionToken} 2 s after stop(): GET -> ${last.status} ${last.text}`);
}

// A raw negotiate + DELETE round trip: the server takes new connections and ends them.
async function assertNegotiateWorks(srv) {
  const n = await http(srv, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`);
  assert.equal(n.status, 200, n.text);
  const id = JSON.parse(n.text).connectionToken;
  assert.equal((await http(srv, 'GET', `${HUB_PATH}?id=${encodeURIComponent(id)}`)).status, 200, 'first poll opens Long Polling');
  assert.equal((await http(srv, 'DELETE', `${HUB_PATH}?id=${encodeURIComponent(id)}`)).status, 202);
  await assertSessionGone(srv, id);
}

// Starts a client, checks the transport, GetBalances (exact demo snapshot), the ROUND_TRIP
// updates, a barrier, and a clean stop. Returns the negotiations seen.
async function fullCase({ url = server.hubUrl, key = server.apiKey, transport, expectTransport = transport, msgpack, skipNegotiation = false, clientId }) {
  const { conn, httpClient } = build(url, key, { transport, msgpack, skipNegotiation });
  const events = new EventQueue(conn);
  let closed;
  conn.onclose((e) => (closed = { error: e }));
  await withTimeout(conn.start(), 10_000, 'start()');
  assert.equal(conn.state, signalR.HubConnectionState.Connected);
  assert.equal(transportName(conn), TRANSPORT_CLASS[expectTransport], 'the transport in use');
  assert.equal(conn.connection.features.inherentKeepAlive === true, expectTransport === T.LongPolling);
  if (skipNegotiation) {
    assert.equal(httpClient.negotiations.length, 0, 'skipNegotiation sends no negotiate');
    assert.equal(conn.connectionId, null);
  } else {
    const n = httpClient.negotiations.at(-1);
    assert.ok(n, 'a negotiate answer');
    assert.equal(n.negotiateVersion, 1);
    assert.equal(conn.connectionId, n.connectionId);
  }

  assert.equal(await withTimeout(conn.invoke('GetBalances', clientId), 5_000, 'GetBalances'), null, 'completion result');
  const snap = events.drain();
  assert.equal(snap.length, 1, `exactly one event before the completion: ${JSON.stringify(snap)}`);
  const s0 = assertDemoSnapshot(snap[0], clientId);

  const answers = [];
  for (const op of ROUND_TRIP) answers.push(await adminOp(server, token, { opId: opId('rt'), ...op }));
  assert.deepEqual(answers.map((a) => a.sequence), [1, 2, 3, 4].map((d) => s0 + d), 'admin answers carry s0+1..s0+4');
  const updates = await events.next(ROUND_TRIP.length, 5_000);
  updates.forEach((u, i) => {
    assertUpdate(u, clientId, answers[i].data);
    assert.deepEqual(u.data, { ...demoAfter(i + 1), sequence: s0 + i + 1 }, `update ${i + 1}: exact balances`);
  });
  await barrier(conn);
  assert.deepEqual(events.drain(), [], 'nothing beyond the four updates');

  await withTimeout(conn.stop(), 5_000, 'stop()');
  assert.deepEqual(closed, { error: undefined }, 'onclose without an error');
  assert.equal(conn.state, signalR.HubConnectionState.Disconnected);
  // The connection it used is gone. (Tokens of refused transports were negotiated but never
  // attached; they stay pending until their token expires, as designed.)
  if (!skipNegotiation) await assertSessionGone(server, httpClient.negotiations.at(-1).connectionToken);
  return httpClient.negotiations;
}

// ---------------------------------------------------------------------------------------------
// the matrix

const MATRIX = [];
for (const [tname, transport, binary] of [
  ['WebSockets', T.WebSockets, true],
  ['ServerSentEvents', T.ServerSentEvents, false],
  ['LongPolling', T.LongPolling, true],
]) {
  for (const msgpack of binary ? [false, true] : [false]) {
    for (const skipNegotiation of transport === T.WebSockets ? [false, true] : [false]) {
      MATRIX.push({ name: `${tname} ${msgpack ? 'messagepack' : 'json'} ${skipNegotiation ? 'skipNegotiation' : 'negotiate'}`, transport, msgpack, skipNegotiation });
    }
  }
}

test('the matrix has every allowed combination (7)', () => {
  assert.deepEqual(MATRIX.map((m) => m.name), [
    'WebSockets json negotiate',
    'WebSockets json skipNegotiation',
    'WebSockets messagepack negotiate',
    'WebSockets messagepack skipNegotiation',
    'ServerSentEvents json negotiate',
    'LongPolling json negotiate',
    'LongPolling messagepack negotiate',
  ]);
});

for (const m of MATRIX) {
  test(`matrix ${m.name}: start, GetBalances snapshot, 4 live updates with exact sequences, clean stop, no session left`, { timeout: 30_000 }, ex(async () => {
    const clientId = `mx-${m.name.replace(/ /g, '-')}`.slice(0, 36);
    await fullCase({ ...m, clientId });
    await assertNegotiateWorks(server);
  }));
}

test('the same matrix cases side by side: 7 clients at once, each gets its own snapshot and every update', { timeout: 30_000 }, ex(async () => {
  const clients = [];
  for (const [i, m] of MATRIX.entries()) {
    const { conn } = build(server.hubUrl, server.apiKey, m);
    const events = new EventQueue(conn);
    let closed;
    conn.onclose((e) => (closed = { error: e }));
    clients.push({ m, conn, events, clientId: `par-${i}`, closed: () => closed });
  }
  await Promise.all(clients.map((c) => withTimeout(c.conn.start(), 10_000, `start ${c.m.name}`)));
  const seqs = await Promise.all(clients.map(async (c) => {
    await withTimeout(c.conn.invoke('GetBalances', c.clientId), 5_000, `GetBalances ${c.m.name}`);
    const [snap] = c.events.drain();
    return assertDemoSnapshot(snap, c.clientId);
  }));
  assert.equal(new Set(seqs).size, 1, `every snapshot at the same sequence: ${seqs}`);
  const answers = [];
  for (const op of ROUND_TRIP) answers.push(await adminOp(server, token, { opId: opId('par'), ...op }));
  for (const c of clients) {
    const ups = await c.events.next(ROUND_TRIP.length, 5_000);
    ups.forEach((u, i) => assertUpdate(u, c.clientId, answers[i].data));
    assert.deepEqual(ups.map((u) => u.data.sequence), [1, 2, 3, 4].map((d) => seqs[0] + d), c.m.name);
  }
  for (const c of clients) {
    await barrier(c.conn);
    assert.deepEqual(c.events.drain(), [], `${c.m.name}: no extra event`);
    await withTimeout(c.conn.stop(), 5_000, `stop ${c.m.name}`);
    assert.deepEqual(c.closed(), { error: undefined }, `${c.m.name}: clean onclose`);
  }
}));

// ---------------------------------------------------------------------------------------------
// transport fallback

// A TCP proxy that answers 403 to the HTTP requests refuse(head) picks and passes the rest on.
async function refusingProxy(port, refuse) {
  const socks = new Set();
  const seen = [];
  const srv = net.createServer((c) => {
    socks.add(c);
    let up = null;
    c.on('data', (d) => {
      const head = d.toString('latin1');
      if (/^[A-Z]+ \S+ HTTP\/1\.1\r\n/.test(head)) {
        seen.push(head.split('\r\n')[0]);
        if (refuse(head)) {
          c.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
          up?.destroy();
          return;
        }
      }
      if (!up) {
        up = net.createConnection({ host: '127.0.0.1', port });
        socks.add(up);
        up.on('data', (b) => c.write(b));
        up.on('end', () => c.end());
        up.on('error', () => c.destroy());
        up.on('close', () => c.destroy());
      }
      up.write(d);
    });
    c.on('error', () => up?.destroy());
    c.on('close', () => up?.destroy());
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}${HUB_PATH}`,
    seen,
    close: () => {
      for (const s of socks) s.destroy();
      srv.close();
    },
  };
}

const isUpgrade = (head) => /\r\nupgrade:\s*websocket/i.test(head);
const isEventStream = (head) => /^GET /.test(head) && /\r\naccept:[^\r\n]*text\/event-stream/i.test(head);

test('fallback by the client\'s mask: LongPolling | ServerSentEvents picks ServerSentEvents for json (the server lists it first)', { timeout: 30_000 }, ex(async () => {
  const negs = await fullCase({ transport: T.LongPolling | T.ServerSentEvents, expectTransport: T.ServerSentEvents, msgpack: false, clientId: 'fb-mask-json' });
  assert.equal(negs.length, 1);
}));

test('fallback by the client\'s mask: LongPolling | ServerSentEvents picks LongPolling for messagepack (SSE has no Binary)', { timeout: 30_000 }, ex(async () => {
  const negs = await fullCase({ transport: T.LongPolling | T.ServerSentEvents, expectTransport: T.LongPolling, msgpack: true, clientId: 'fb-mask-mp' });
  assert.equal(negs.length, 1);
}));

for (const [msgpack, expect] of [[false, T.ServerSentEvents], [true, T.LongPolling]]) {
  test(`fallback when WebSockets is refused (403 on the upgrade), ${msgpack ? 'messagepack' : 'json'}: the client renegotiates and uses ${TRANSPORT_CLASS[expect]}`, { timeout: 30_000 }, ex(async () => {
    const px = await refusingProxy(server.port, isUpgrade);
    try {
      const negs = await fullCase({ url: px.url, transport: T.WebSockets | T.ServerSentEvents | T.LongPolling, expectTransport: expect, msgpack, clientId: `fb-ws-${msgpack ? 'mp' : 'json'}` });
      assert.equal(negs.length, 2, 'one negotiate for the refused WebSocket, one for the transport used');
      assert.notEqual(negs[0].connectionToken, negs[1].connectionToken);
      assert.ok(px.seen.some((l) => l.startsWith('GET ')), 'the upgrade was tried');
    } finally {
      px.close();
    }
  }));
}

test('fallback when WebSockets and Server-Sent Events are both refused: json over LongPolling', { timeout: 30_000 }, ex(async () => {
  const px = await refusingProxy(server.port, (h) => isUpgrade(h) || isEventStream(h));
  try {
    const negs = await fullCase({ url: px.url, transport: T.WebSockets | T.ServerSentEvents | T.LongPolling, expectTransport: T.LongPolling, msgpack: false, clientId: 'fb-lp' });
    assert.equal(negs.length, 3, 'WebSockets, then ServerSentEvents, then LongPolling, each negotiated');
  } finally {
    px.close();
  }
}));

// ---------------------------------------------------------------------------------------------
// automatic reconnect: the server goes away and comes back on the same port and data

const quickRetry = { nextRetryDelayInMilliseconds: (ctx) => (ctx.elapsedMilliseconds < 20_000 ? 100 : null) };

for (const [tname, transport, msgpack, how] of [
  ['WebSockets', T.WebSockets, false, 'SIGTERM'],
  ['ServerSentEvents', T.ServerSentEvents, false, 'SIGTERM'],
  ['LongPolling', T.LongPolling, true, 'SIGTERM'],
  ['WebSockets', T.WebSockets, true, 'SIGKILL'],
  ['ServerSentEvents', T.ServerSentEvents, false, 'SIGKILL'],
  ['LongPolling', T.LongPolling, false, 'SIGKILL'],
]) {
  const label = `${tname} ${msgpack ? 'messagepack' : 'json'}`;
  test(`automatic reconnect, ${label}, server ${how === 'SIGTERM' ? 'shut down (Close allowReconnect)' : 'killed (socket dropped)'} and restarted: onreconnected, GetBalances and updates work again`, { timeout: 40_000 }, async () => {
    const d = makeTempDir();
    const tok = randomBytes(16).toString('hex');
    const tokenFile = writeTokenFile(d, tok);
    let a = await startServer({ dataDir: d, ownDataDir: false, extraArgs: ['--admin-token-file', tokenFile] });
    let b = null;
    let conn = null;
    const cur = () => b ?? a;
    try {
      const port = a.port;
      ({ conn } = build(a.hubUrl, a.apiKey, { transport, msgpack, reconnect: quickRetry }));
      const events = new EventQueue(conn);
      const seen = { reconnecting: [], reconnected: [], closed: [] };
      const reconnecting = new Promise((r) => conn.onreconnecting((e) => { seen.reconnecting.push(e); r(); }));
      const reconnected = new Promise((r) => conn.onreconnected((id) => { seen.reconnected.push(id); r(); }));
      conn.onclose((e) => seen.closed.push(e));
      await withTimeout(conn.start(), 10_000, 'start()');
      assert.equal(transportName(conn), TRANSPORT_CLASS[transport]);
      const firstId = conn.connectionId;
      await withTimeout(conn.invoke('GetBalances', 'ar-before'), 5_000, 'GetBalances before');
      const s0 = assertDemoSnapshot(events.drain()[0], 'ar-before');
      const dep = await adminOp(a, tok, { opId: opId('ar1'), op: 'deposit', asset: 'ETH', amount: '1.5' });
      assert.equal(dep.sequence, s0 + 1);
      const [u1] = await events.next(1);
      assertUpdate(u1, 'ar-before', dep.data);

      if (how === 'SIGTERM') {
        await a.stop(); // Close {allowReconnect:true} to the client, exit 0
      } else {
        a.proc.kill('SIGKILL');
        await withTimeout(new Promise((r) => (a.alive() ? a.proc.once('exit', r) : r())), 5_000, 'killed server exit');
        for (const s of a.sockets) s.destroy();
      }
      await withTimeout(reconnecting, 10_000, 'onreconnecting');
      assert.equal(seen.closed.length, 0, 'no onclose while reconnecting');
      // A Close with allowReconnect and no error: the client reconnects without an error. (What
      // the client reports for a dropped socket is its own business.)
      if (how === 'SIGTERM') assert.equal(seen.reconnecting[0], undefined, 'onreconnecting error after Close {allowReconnect:true}');
      assert.equal(conn.state, signalR.HubConnectionState.Reconnecting);

      b = await startServer({ dataDir: d, ownDataDir: false, extraArgs: ['--admin-token-file', tokenFile, '--listen', `127.0.0.1:${port}`] });
      assert.equal(b.port, port, 'the new server listens on the same port');
      await withTimeout(reconnected, 15_000, 'onreconnected');
      assert.equal(conn.state, signalR.HubConnectionState.Connected);
      assert.equal(transportName(conn), TRANSPORT_CLASS[transport], 'reconnected on the same transport');
      assert.equal(seen.reconnected[0], conn.connectionId);
      assert.notEqual(conn.connectionId, firstId, 'a new connection id after reconnecting');
      assert.deepEqual(events.drain(), [], 'no event before the new GetBalances (subscriptions do not survive a restart)');

      await withTimeout(conn.invoke('GetBalances', 'ar-after'), 5_000, 'GetBalances after the reconnect');
      const [snap] = events.drain();
      assert.deepEqual(snap, { ...u1, subject: 'account.balances.snapshot', clientId: 'ar-after' }, 'the snapshot after the restart is the last committed state');
      const dep2 = await adminOp(b, tok, { opId: opId('ar2'), op: 'withdraw', asset: 'ETH', amount: '1.5' });
      assert.equal(dep2.sequence, s0 + 2);
      const [u2] = await events.next(1);
      assertUpdate(u2, 'ar-after', dep2.data);
      assert.deepEqual(u2.data, { ...DEMO_DATA, sequence: s0 + 2 });
      await barrier(conn);
      assert.deepEqual(events.drain(), []);
      await withTimeout(conn.stop(), 5_000, 'stop()');
      assert.deepEqual(seen.closed, [undefined], 'one clean onclose');
      assert.equal(seen.reconnecting.length, 1);
      assert.equal(seen.reconnected.length, 1);
    } catch (err) {
      throw cur().explain(err);
    } finally {
      if (conn) await withTimeout(conn.stop(), 5_000, 'stop').catch(() => {});
      try {
        if (b) await b.stop();
      } finally {
        if (a.alive()) await a.stop().catch(() => {});
        removeTempDir(d);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// stateful reconnect, MessagePack, sockets dropped while updates flow

// A TCP proxy that can drop every connection it carries; counts WebSocket upgrades.
async function droppingProxy(port) {
  const pairs = new Set();
  let upgrades = 0;
  const srv = net.createServer((c) => {
    const u = net.createConnection({ host: '127.0.0.1', port });
    const p = { c, u };
    pairs.add(p);
    c.once('data', (d) => {
      if (/\r\nupgrade:\s*websocket/i.test(d.toString('latin1'))) upgrades++;
    });
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
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}${HUB_PATH}`,
    upgrades: () => upgrades,
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

test('stateful reconnect, messagepack: sockets dropped three times while 60 updates flow; every sequence arrives once, in order', { timeout: 40_000 }, ex(async () => {
  const px = await droppingProxy(server.port);
  try {
    const { conn } = build(px.url, server.apiKey, { transport: T.WebSockets, msgpack: true, stateful: true });
    const events = new EventQueue(conn);
    let reconnecting = 0;
    let closed = null;
    conn.onreconnecting(() => reconnecting++);
    conn.onclose((e) => (closed = { error: e }));
    await withTimeout(conn.start(), 10_000, 'start()');
    assert.equal(conn.connection.features.reconnect, true, 'the server offered stateful reconnect');
    await withTimeout(conn.invoke('GetBalances', 'sr-flow'), 5_000, 'GetBalances');
    const s0 = assertDemoSnapshot(events.drain()[0], 'sr-flow');

    const N = 60;
    const answers = [];
    for (let i = 0; i < N; i++) {
      // deposit / withdraw pairs: the demo data is as seeded again at the end
      answers.push(await adminOp(server, token, { opId: opId('flow'), op: i % 2 ? 'withdraw' : 'deposit', asset: 'BTC', amount: '0.01' }));
      // The server pushed update i before answering: it is on its way when the socket drops.
      if (i === 9 || i === 29 || i === 44) px.drop();
    }
    const got = await events.next(N, 15_000);
    assert.deepEqual(got.map((e) => e.data.sequence), Array.from({ length: N }, (_, i) => s0 + 1 + i), 'every sequence once, in order');
    got.forEach((e, i) => assertUpdate(e, 'sr-flow', answers[i].data));
    await sleep(1_300); // past the client's 1 s Ack timer: a duplicated replay would show here
    await barrier(conn);
    assert.deepEqual(events.drain(), [], 'no duplicate');
    assert.ok(px.upgrades() >= 4, `the client came back after each drop (${px.upgrades()} WebSockets)`);
    assert.equal(reconnecting, 0, 'stateful reconnect is invisible to the application');
    assert.equal(conn.state, signalR.HubConnectionState.Connected);
    await withTimeout(conn.invoke('GetBalances', 'sr-flow-end'), 5_000, 'GetBalances at the end');
    assert.deepEqual(events.drain()[0].data, { ...DEMO_DATA, sequence: s0 + N });
    await withTimeout(conn.stop(), 5_000, 'stop()');
    assert.deepEqual(closed, { error: undefined });
  } finally {
    px.close();
  }
}));
