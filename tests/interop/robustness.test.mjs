// Hostile and broken peers over raw sockets: bad HTTP, oversized headers, broken WebSocket
// frames, bad hub messages. Each must get the documented answer and never hurt the server: at
// the end a normal client still gets its balances from the same process, which then exits 0.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  OP,
  RS,
  RawSocket,
  RawWs,
  assertDemoSnapshot,
  closePayload,
  encodeFrame,
  explained,
  parseHttpResponse,
  rawHttp,
  startConnection,
  startServer,
  withTimeout,
  wsAccept,
} from './harness.mjs';

let server;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await server.stop();
});

// --- HTTP ------------------------------------------------------------------------------------

test('garbage bytes -> HTTP 400, then the server closes', { timeout: 15_000 }, ex(async () => {
  const bytes = Buffer.concat([Buffer.from([0x00, 0xff]), Buffer.from(' garbage\r\n\r\n', 'latin1')]);
  const { res, socket } = await rawHttp(server.port, bytes, { server });
  assert.equal(res.status, 400);
  await socket.waitClosed();
}));

test('a 64 KiB header -> 431', { timeout: 15_000 }, ex(async () => {
  const req = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`;
  const { res, socket } = await rawHttp(server.port, req, { server });
  assert.equal(res.status, 431);
  await socket.waitClosed();
}));

test('many small headers adding up to 64 KiB -> 431', { timeout: 15_000 }, ex(async () => {
  let req = 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n';
  for (let i = 0; i < 2048; i++) req += `X-H${i}: ${'b'.repeat(24)}\r\n`;
  const { res, socket } = await rawHttp(server.port, req + '\r\n', { server });
  assert.equal(res.status, 431);
  await socket.waitClosed();
}));

test('HTTP/2.0 request line -> 505', { timeout: 15_000 }, ex(async () => {
  const { res, socket } = await rawHttp(server.port, 'GET /healthz HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n', { server });
  assert.equal(res.status, 505);
  socket.destroy();
}));

test('keep-alive: two pipelined GET /healthz on one connection get two 200 answers', { timeout: 15_000 }, ex(async () => {
  const one = 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
  const s = await RawSocket.connect(server.port, server);
  s.write(one + one);
  for (let i = 0; i < 2; i++) {
    const res = await s.waitFor(parseHttpResponse, 5_000, `response ${i + 1}`);
    s.take(res.length);
    assert.equal(res.status, 200);
    assert.equal(res.body.trim(), 'ok');
  }
  s.destroy();
}));

test('a request cut off mid-header, then the client closes: the server just closes', { timeout: 15_000 }, ex(async () => {
  const s = await RawSocket.connect(server.port, server);
  s.end('GET /healthz HTTP/1.1\r\nHost: 127.0');
  await s.waitClosed();
}));

// --- WebSocket -------------------------------------------------------------------------------

async function openHub() {
  const ws = await RawWs.open(server);
  await ws.handshake();
  return ws;
}

// Reads frames until a close frame; returns its code. Data frames before it are allowed.
async function expectCloseFrame(ws) {
  for (;;) {
    const m = await ws.nextMessage();
    if (m.close) return m.code;
  }
}

test('the test\'s own Sec-WebSocket-Accept computation matches RFC 6455 section 1.3', () => {
  assert.equal(wsAccept('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
});

test('raw WebSocket: 101 with the right Sec-WebSocket-Accept, handshake {}, clean close', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  // A ping from the client is answered with a pong carrying the same payload.
  ws.send(OP.PING, 'hello-ping');
  const f = await ws.nextFrame();
  assert.equal(f.opcode, OP.PONG);
  assert.equal(f.payload.toString(), 'hello-ping');
  await ws.close();
}));

test('truncated frame header, then the client ends the socket: the server simply closes', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.socket.end(Buffer.from([0x81, 0xfe, 0x01]));
  await ws.socket.waitClosed();
}));

test('truncated frame payload, then the client ends the socket: the server simply closes', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  const frame = encodeFrame(OP.TEXT, `{"type":1,"invocationId":"1","target":"GetBalances","arguments":["trunc"]}${RS}`);
  ws.socket.end(frame.subarray(0, frame.length - 10));
  await ws.socket.waitClosed();
}));

test('unmasked client frame -> close code 1002', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.send(OP.TEXT, `{"type":6}${RS}`, { mask: false });
  assert.equal(await expectCloseFrame(ws), 1002);
  await ws.socket.waitClosed();
}));

test('reserved opcode -> close code 1002', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.send(3, 'x');
  assert.equal(await expectCloseFrame(ws), 1002);
  await ws.socket.waitClosed();
}));

test('text frame with invalid UTF-8 (C3 28) -> close code 1007', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.send(OP.TEXT, Buffer.from([0xc3, 0x28, 0x1e]));
  assert.equal(await expectCloseFrame(ws), 1007);
  await ws.socket.waitClosed();
}));

// A SignalR Close message (type 7) with an error string, then the connection goes away.
async function expectHubClose(ws) {
  const m = await ws.nextRecord();
  assert.ok(!m.close, `expected a SignalR Close message before the WebSocket close, got close frame ${JSON.stringify(m)}`);
  assert.equal(m.type, 7, `SignalR Close message: ${JSON.stringify(m)}`);
  assert.equal(typeof m.error, 'string', `Close carries an error: ${JSON.stringify(m)}`);
  assert.ok(m.error.length > 0);
  await expectServerCloses(ws, 'the Close message');
  return m;
}

// After a final message the server either drops TCP at once or starts the WebSocket closing
// handshake: answer its close frame as a client must, after which the server closes TCP. (The
// server gives a silent client a few seconds; waiting that out would hide a missing close.)
async function expectServerCloses(ws, after) {
  let frame;
  try {
    frame = await ws.nextMessage();
  } catch (err) {
    if (!ws.socket.ended) throw err;
  }
  if (frame) {
    assert.ok(frame.close, `expected a close frame after ${after}, got ${JSON.stringify(frame)}`);
    ws.send(OP.CLOSE, closePayload(frame.code ?? 1000));
  }
  await ws.socket.waitClosed(2_000);
}

test('non-JSON text after the handshake -> SignalR Close with an error, then close', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.sendText(`hello${RS}`);
  await expectHubClose(ws);
}));

test('a 40 KiB JSON message (over the 32 KiB limit) -> SignalR Close with an error', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  const big = `{"type":1,"invocationId":"1","target":"GetBalances","arguments":["${'z'.repeat(40 * 1024)}"]}${RS}`;
  ws.sendText(big);
  await expectHubClose(ws);
}));

test('a 40 KiB JSON message in 1 KiB fragments -> SignalR Close with an error', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  const big = Buffer.from(`{"type":1,"invocationId":"1","target":"GetBalances","arguments":["${'z'.repeat(40 * 1024)}"]}${RS}`);
  for (let off = 0; off < big.length; off += 1024) {
    const last = off + 1024 >= big.length;
    ws.send(off === 0 ? OP.TEXT : OP.CONT, big.subarray(off, off + 1024), { fin: last });
    if (ws.socket.ended) break;
  }
  await expectHubClose(ws);
}));

test('unknown message type 99 is ignored; a GetBalances on the same socket then works', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.sendText(`{"type":99}${RS}`);
  ws.sendText(`{"type":1,"invocationId":"1","target":"GetBalances","arguments":["raw"]}${RS}`);
  const ev = await ws.nextRecord();
  assert.ok(!ev.close, JSON.stringify(ev));
  assert.equal(ev.type, 1);
  assert.equal(ev.target, 'executionEvents');
  assert.equal(ev.arguments.length, 1);
  assertDemoSnapshot(ev.arguments[0], 'raw');
  const done = await ws.nextRecord();
  assert.deepEqual(done, { type: 3, invocationId: '1', result: null });
  await ws.close();
}));

test('a message split across frames and two messages in one frame both work', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  const a = Buffer.from(`{"type":1,"invocationId":"a","target":"GetBalances","arguments":["frag"]}${RS}`);
  ws.send(OP.TEXT, a.subarray(0, 10), { fin: false });
  ws.send(OP.PING, 'mid'); // control frames may come between fragments
  ws.send(OP.CONT, a.subarray(10, 30), { fin: false });
  ws.send(OP.CONT, a.subarray(30), { fin: true });
  ws.sendText(
    `{"type":1,"invocationId":"b","target":"GetBalances","arguments":["two1"]}${RS}` +
      `{"type":1,"invocationId":"c","target":"GetBalances","arguments":["two2"]}${RS}`,
  );
  const recs = [];
  while (recs.length < 6) {
    const m = await ws.nextRecord();
    assert.ok(!m.close, JSON.stringify(m));
    recs.push(m);
  }
  assertDemoSnapshot(recs[0].arguments[0], 'frag');
  assert.deepEqual(recs[1], { type: 3, invocationId: 'a', result: null });
  assertDemoSnapshot(recs[2].arguments[0], 'two1');
  assert.deepEqual(recs[3], { type: 3, invocationId: 'b', result: null });
  assertDemoSnapshot(recs[4].arguments[0], 'two2');
  assert.deepEqual(recs[5], { type: 3, invocationId: 'c', result: null });
  await ws.close();
}));

test('bad handshake protocol -> {"error":"..."} then close', { timeout: 15_000 }, ex(async () => {
  const ws = await RawWs.open(server);
  ws.sendText(`{"protocol":"nope","version":1}${RS}`);
  const m = await ws.nextRecord();
  assert.ok(!m.close, `expected a handshake error record, got close frame ${JSON.stringify(m)}`);
  assert.deepEqual(Object.keys(m), ['error'], JSON.stringify(m));
  assert.equal(typeof m.error, 'string');
  assert.ok(m.error.length > 0);
  await expectServerCloses(ws, 'the handshake error');
}));

test('client close frame with code 1001 is answered with a close frame, then the socket closes', { timeout: 15_000 }, ex(async () => {
  const ws = await openHub();
  ws.send(OP.CLOSE, closePayload(1001, 'going away'));
  // RFC 6455 5.5.1: the answer "typically" echoes the code; 1000 is acceptable too.
  assert.ok([1000, 1001].includes(await expectCloseFrame(ws)));
  await ws.socket.waitClosed();
}));

// --- afterwards ------------------------------------------------------------------------------

test('after all of the above: the server is alive and a normal client gets its balances', { timeout: 15_000 }, ex(async () => {
  assert.ok(server.alive(), 'server process still running');
  const conn = server.connect();
  const events = new EventQueue(conn);
  await startConnection(conn);
  await withTimeout(conn.invoke('GetBalances', 'still-fine'), 5_000, 'GetBalances after the abuse');
  const seen = events.drain();
  assert.equal(seen.length, 1, JSON.stringify(seen));
  assertDemoSnapshot(seen[0], 'still-fine');
  assert.ok(server.alive(), 'server process still running');
}));
