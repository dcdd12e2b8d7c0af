// Protocol-level errors and authentication: unknown methods, invocations without an id,
// missing and wrong API keys on negotiate and on the WebSocket upgrade, and many calls in a row.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  RS,
  RawWs,
  assertDemoSnapshot,
  buildConnection,
  explained,
  signalR,
  startConnection,
  startServer,
  withTimeout,
} from './harness.mjs';

let server;
const ex = (fn) => explained(() => server, fn);
const WRONG_KEY = 'bh_0000000000000000_' + 'A'.repeat(43);

before(async () => {
  // 100 sequential and 100 pipelined calls on the demo key after the other tests: more than the
  // default per-key rate (50/s, burst 100), which tests/interop/limits.test.mjs covers.
  server = await startServer({ extraArgs: ['--rate-limit', '100000', '--rate-burst', '100000'] });
});

after(async () => {
  if (server) await server.stop();
});

async function connected() {
  const conn = server.connect();
  const events = new EventQueue(conn);
  await startConnection(conn);
  return { conn, events };
}

test("unknown method: Completion error \"Unknown hub method 'NoSuchMethod'\", connection stays usable", { timeout: 15_000 }, ex(async () => {
  const { conn, events } = await connected();
  await assert.rejects(withTimeout(conn.invoke('NoSuchMethod'), 5_000, 'invoke NoSuchMethod'), (err) => {
    assert.ok(err instanceof Error, `rejected with ${err}`);
    assert.match(err.message, /Unknown hub method 'NoSuchMethod'/);
    return true;
  });
  assert.equal(events.pending, 0, `no event for an unknown method: ${JSON.stringify(events.drain())}`);
  assert.equal(conn.state, 'Connected');
  await withTimeout(conn.invoke('GetBalances', 'after-unknown'), 5_000, 'GetBalances after the unknown method');
  const [env] = events.drain();
  assertDemoSnapshot(env, 'after-unknown');
}));

test('send() without an invocation id still gets the event (and the client sees no error)', { timeout: 15_000 }, ex(async () => {
  const { conn, events } = await connected();
  await withTimeout(conn.send('GetBalances', 'c1'), 5_000, 'send GetBalances');
  const [env] = await events.next(1);
  assertDemoSnapshot(env, 'c1');
  await conn.invoke('GetBalances', 'c2');
  const [env2] = events.drain();
  assertDemoSnapshot(env2, 'c2');
  assert.equal(events.pending, 0);
}));

test('raw: an invocation without invocationId gets its event and no Completion', { timeout: 15_000 }, ex(async () => {
  const ws = await RawWs.open(server);
  await ws.handshake();
  ws.sendText(`{"type":1,"target":"GetBalances","arguments":["noid"]}${RS}`);
  ws.sendText(`{"type":1,"invocationId":"7","target":"GetBalances","arguments":["withid"]}${RS}`);
  const got = [];
  for (;;) {
    const m = await ws.nextRecord();
    assert.ok(!m.close, `unexpected close ${JSON.stringify(m)}`);
    got.push(m);
    if (m.type === 3) break;
  }
  assert.equal(got.length, 3, `records: ${JSON.stringify(got)}`);
  assert.equal(got[0].type, 1);
  assert.equal(got[0].target, 'executionEvents');
  assert.equal(got[0].invocationId, undefined, 'server-to-client event has no invocationId');
  assertDemoSnapshot(got[0].arguments[0], 'noid');
  assert.equal(got[1].type, 1);
  assertDemoSnapshot(got[1].arguments[0], 'withid');
  assert.deepEqual(got[2], { type: 3, invocationId: '7', result: null });
  await ws.close();
}));

test('no API key: start() rejects with 401', { timeout: 15_000 }, ex(async () => {
  const conn = buildConnection(server.hubUrl, { key: null });
  server.connections.add(conn);
  await assert.rejects(withTimeout(conn.start(), 5_000, 'start without key'), (err) => {
    assert.match(String(err?.message ?? err), /401/);
    return true;
  });
  assert.equal(conn.state, 'Disconnected');
}));

test('wrong API key: start() rejects with 401, also when negotiation is skipped', { timeout: 15_000 }, ex(async () => {
  const conn = buildConnection(server.hubUrl, { key: WRONG_KEY });
  server.connections.add(conn);
  await assert.rejects(withTimeout(conn.start(), 5_000, 'start with a wrong key'), /401/);
  // skipNegotiation goes straight to the WebSocket upgrade; the ws library reports the 401 status.
  const direct = buildConnection(server.hubUrl, { key: WRONG_KEY, options: { skipNegotiation: true } });
  server.connections.add(direct);
  await assert.rejects(withTimeout(direct.start(), 5_000, 'start (skipNegotiation) with a wrong key'));
  assert.equal(direct.state, 'Disconnected');
}));

test('the right key with skipNegotiation: works', { timeout: 15_000 }, ex(async () => {
  const conn = server.connect({ options: { skipNegotiation: true } });
  const events = new EventQueue(conn);
  await startConnection(conn);
  await conn.invoke('GetBalances', 'skipneg');
  assertDemoSnapshot(events.drain()[0], 'skipneg');
}));

async function negotiate(query, headers = {}) {
  const res = await withTimeout(
    fetch(`${server.url}${HUB_PATH}/negotiate?${query}`, { method: 'POST', headers }),
    5_000,
    'POST negotiate',
  );
  return { status: res.status, body: await res.text() };
}

test('raw negotiate: 401 without Authorization, 401 with a wrong key', { timeout: 15_000 }, ex(async () => {
  assert.equal((await negotiate('negotiateVersion=1')).status, 401);
  assert.equal((await negotiate('negotiateVersion=1', { Authorization: `Bearer ${WRONG_KEY}` })).status, 401);
  assert.equal((await negotiate(`negotiateVersion=1&access_token=${WRONG_KEY}`)).status, 401);
  assert.equal((await negotiate('negotiateVersion=1', { Authorization: 'Bearer ' })).status, 401);
  assert.equal((await negotiate('negotiateVersion=1', { Authorization: `Basic ${server.apiKey}` })).status, 401);
  // The right key with one byte changed.
  const k = server.apiKey;
  const flipped = k.slice(0, -1) + (k.endsWith('A') ? 'B' : 'A');
  assert.equal((await negotiate('negotiateVersion=1', { Authorization: `Bearer ${flipped}` })).status, 401);
}));

function checkNegotiateV1(body) {
  const n = JSON.parse(body);
  assert.equal(n.negotiateVersion, 1);
  assert.equal(typeof n.connectionId, 'string');
  assert.equal(typeof n.connectionToken, 'string');
  assert.notEqual(n.connectionId, n.connectionToken);
  assert.ok(Array.isArray(n.availableTransports));
  const ws = n.availableTransports.find((t) => t.transport === 'WebSockets');
  assert.ok(ws, `WebSockets offered: ${body}`);
  assert.ok(ws.transferFormats.includes('Text'), `WebSockets offers Text: ${body}`);
  return n;
}

test('raw negotiate: 200 with the key as Bearer header or access_token query parameter', { timeout: 15_000 }, ex(async () => {
  const byHeader = await negotiate('negotiateVersion=1', { Authorization: `Bearer ${server.apiKey}` });
  assert.equal(byHeader.status, 200, byHeader.body);
  checkNegotiateV1(byHeader.body);
  const byQuery = await negotiate(`negotiateVersion=1&access_token=${encodeURIComponent(server.apiKey)}`);
  assert.equal(byQuery.status, 200, byQuery.body);
  const a = checkNegotiateV1(byQuery.body);
  const b = JSON.parse(byHeader.body);
  assert.notEqual(a.connectionId, b.connectionId, 'each negotiate gets a new connection id');
  // negotiate version 0: connectionId only, no connectionToken.
  const v0 = await negotiate('', { Authorization: `Bearer ${server.apiKey}` });
  assert.equal(v0.status, 200, v0.body);
  const n0 = JSON.parse(v0.body);
  assert.equal(typeof n0.connectionId, 'string');
  assert.equal(n0.connectionToken, undefined, `v0 has no connectionToken: ${v0.body}`);
}));

test('raw WebSocket upgrade: 401 with a bad access_token and with none', { timeout: 15_000 }, ex(async () => {
  for (const query of [`access_token=${WRONG_KEY}`, '', 'access_token=']) {
    const { res, socket } = await RawWs.upgradeRequest(server, { query });
    assert.equal(res.status, 401, `upgrade with query ${JSON.stringify(query)}: ${res.status} ${res.body}`);
    socket.destroy();
  }
  // The good key in the header instead of the query string is accepted.
  const { res, socket } = await RawWs.upgradeRequest(server, {
    query: '',
    extraHeaders: `Authorization: Bearer ${server.apiKey}\r\n`,
  });
  assert.equal(res.status, 101);
  socket.destroy();
}));

test('100 sequential GetBalances on one connection, each answered by its own event in order', { timeout: 30_000 }, ex(async () => {
  const { conn, events } = await connected();
  let seq;
  for (let i = 0; i < 100; i++) {
    await withTimeout(conn.invoke('GetBalances', `c${i}`), 5_000, `invoke c${i}`);
    const seen = events.drain();
    assert.equal(seen.length, 1, `events for c${i}: ${JSON.stringify(seen)}`);
    const s = assertDemoSnapshot(seen[0], `c${i}`);
    if (seq !== undefined) assert.equal(s, seq);
    seq = s;
  }
}));

test('100 pipelined GetBalances (no waiting between sends): events in order, all complete', { timeout: 30_000 }, ex(async () => {
  const { conn, events } = await connected();
  const calls = [];
  for (let i = 0; i < 100; i++) calls.push(conn.invoke('GetBalances', `p${i}`));
  await withTimeout(Promise.all(calls), 10_000, '100 pipelined invocations');
  const seen = events.drain();
  assert.deepEqual(
    seen.map((e) => e.clientId),
    Array.from({ length: 100 }, (_, i) => `p${i}`),
  );
  for (const e of seen) assert.equal(e.subject, 'account.balances.snapshot');
}));

test('a fresh client still works after all of the above', { timeout: 15_000 }, ex(async () => {
  const { conn, events } = await connected();
  await conn.invoke('GetBalances', 'final');
  assertDemoSnapshot(events.drain()[0], 'final');
  assert.equal(signalR.HubConnectionState.Connected, conn.state);
}));
