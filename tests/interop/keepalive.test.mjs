// Keep-alive and timeouts with short settings: the server pings a quiet connection, closes one
// that sends nothing (with a Close message saying why), drops a socket that never completes the
// SignalR handshake, and keeps a real client that pings alive.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EventQueue, OP, RS, RawWs, assertDemoSnapshot, explained, startConnection, startServer } from './harness.mjs';

let server;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  server = await startServer({
    extraArgs: ['--keepalive-ms', '200', '--client-timeout-ms', '1500', '--handshake-timeout-ms', '500'],
  });
});

after(async () => {
  if (server) await server.stop();
});

test('a quiet connection gets server pings ({"type":6}) at the keep-alive interval', { timeout: 15_000 }, ex(async () => {
  const ws = await RawWs.open(server);
  await ws.handshake();
  const t0 = Date.now();
  for (let i = 0; i < 3; i++) {
    const m = await ws.nextRecord(1_000, { keepPings: true });
    assert.deepEqual(m, { type: 6 });
    ws.sendText(`{"type":6}${RS}`); // our own ping keeps the client timeout away
  }
  // Three pings at a 200 ms interval: at least ~400 ms, well under the 1.5 s client timeout.
  assert.ok(Date.now() - t0 >= 350, `pings came too fast: ${Date.now() - t0} ms for three`);
  await ws.close();
}));

test('a connection silent for the client timeout gets a Close message with an error', { timeout: 15_000 }, ex(async () => {
  const ws = await RawWs.open(server);
  await ws.handshake();
  const t0 = Date.now();
  let m;
  do {
    m = await ws.nextRecord(5_000); // pings are skipped
  } while (m.type === 6);
  assert.equal(m.type, 7, JSON.stringify(m));
  assert.match(m.error, /timeout/i);
  assert.notEqual(m.allowReconnect, true);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 1_400, `closed after ${elapsed} ms, before the 1.5 s client timeout`);
  const f = await ws.nextMessage(3_000);
  assert.equal(f.close, true);
  assert.equal(f.code, 1000);
  ws.send(OP.CLOSE, Buffer.from([0x03, 0xe8]));
  await ws.socket.waitClosed();
}));

test('a socket that never sends the SignalR handshake is closed after the handshake timeout', { timeout: 15_000 }, ex(async () => {
  const ws = await RawWs.open(server);
  const t0 = Date.now();
  const f = await ws.nextMessage(5_000);
  assert.equal(f.close, true, 'expected a close frame');
  assert.equal(f.code, 1008);
  assert.ok(Date.now() - t0 >= 450, `closed after ${Date.now() - t0} ms`);
  ws.send(OP.CLOSE, Buffer.from([0x03, 0xf0]));
  await ws.socket.waitClosed();
}));

test('a real client with its own keep-alive stays connected past the client timeout', { timeout: 15_000 }, ex(async () => {
  const conn = server.connect();
  conn.keepAliveIntervalInMilliseconds = 200;
  conn.serverTimeoutInMilliseconds = 5_000;
  let closedWith;
  conn.onclose((err) => {
    closedWith = err ?? 'closed';
  });
  const events = new EventQueue(conn);
  await startConnection(conn);
  await new Promise((r) => setTimeout(r, 2_500));
  assert.equal(closedWith, undefined, `connection closed: ${closedWith}`);
  await conn.invoke('GetBalances', 'still-here');
  const [env] = await events.next(1);
  assertDemoSnapshot(env, 'still-here');
  await conn.stop();
}));
