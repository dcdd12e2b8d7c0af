// The seed's own example, with the real @microsoft/signalr client: GetBalances('my-client-123')
// answers one account.balances.snapshot envelope carrying the demo user's balances.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { EventQueue, NODE_MODULES, assertDemoSnapshot, explained, startConnection, startServer, withTimeout } from './harness.mjs';

let server;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await server.stop();
});

test('GetBalances("my-client-123"): one snapshot envelope before the invocation completes', { timeout: 20_000 }, ex(async () => {
  const conn = server.connect();
  const events = new EventQueue(conn);
  await startConnection(conn);
  const result = await withTimeout(conn.invoke('GetBalances', 'my-client-123'), 5_000, 'invoke GetBalances');
  // Completion carries result null; the client resolves with it (null or undefined).
  assert.ok(result === null || result === undefined, `invoke result: ${JSON.stringify(result)}`);
  // The event is sent before the Completion, so it is already here when invoke() resolves.
  const seen = events.drain();
  assert.equal(seen.length, 1, `events received before the completion: ${JSON.stringify(seen)}`);
  assertDemoSnapshot(seen[0], 'my-client-123');
}));

test('the sequence is stable without changes, and the envelope is the same on a second call', { timeout: 20_000 }, ex(async () => {
  const conn = server.connect();
  const events = new EventQueue(conn);
  await startConnection(conn);
  await conn.invoke('GetBalances', 'first');
  await conn.invoke('GetBalances', 'second');
  const [a, b] = events.drain();
  assert.equal(events.items.length, 2);
  const s1 = assertDemoSnapshot(a, 'first');
  const s2 = assertDemoSnapshot(b, 'second');
  assert.equal(s2, s1, 'no change happened between the two snapshots');
}));

test("the seed's JavaScript example, run as its own Node process", { timeout: 30_000 }, ex(async () => {
  // The seed's code nearly verbatim (default transport fallback and logging): URL and key
  // substituted, connection.stop() added so the process ends by itself, failures turned into a
  // non-zero exit code.
  const script = `const signalR = require('@microsoft/signalr');
const apiKey = ${JSON.stringify(server.apiKey)};
const connection = new signalR.HubConnectionBuilder()
.withUrl(${JSON.stringify(server.hubUrl)}, {
accessTokenFactory: () => apiKey,
})
.build();
connection.start()
.then(() => {
console.log('Connected to WebSocket');
// Invoke command
connection.invoke('GetBalances', "my-client-123")
.then(() => {
console.log('Command sent successfully');
connection.stop();
})
.catch(err => {
console.error('Command failed:', err);
process.exitCode = 1;
connection.stop();
});
})
.catch(err => {
console.error('Connection failed:', err);
process.exitCode = 1;
});
// Listen for events
connection.on('executionEvents', (data) => {
console.log('Received event:', data);
});
`;
  const file = path.join(server.dataDir, 'seed-example.cjs');
  writeFileSync(file, script);
  const child = spawn(process.execPath, [file], {
    env: { ...process.env, NODE_PATH: NODE_MODULES },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  let status;
  try {
    status = await withTimeout(exited, 15_000, 'the seed example process to exit by itself');
  } catch (e) {
    child.kill('SIGKILL');
    e.message += `\nstdout:\n${out}\nstderr:\n${err}`;
    throw e;
  }
  const ctx = `\nstdout:\n${out}\nstderr:\n${err}`;
  assert.deepEqual(status, { code: 0, signal: null }, `seed example exit status${ctx}`);
  assert.match(out, /Connected to WebSocket/, ctx);
  assert.match(out, /Command sent successfully/, ctx);
  assert.match(out, /Received event:/, ctx);
  assert.match(out, /account\.balances\.snapshot/, ctx);
  assert.match(out, /my-client-123/, ctx);
  assert.match(out, /user-123/, ctx);
  // The event is logged before the invoke's promise resolves.
  assert.ok(out.indexOf('Received event:') < out.indexOf('Command sent successfully'), `event before completion${ctx}`);
}));

test('demo-api-key file has mode 0600', ex(async () => {
  const mode = statSync(path.join(server.dataDir, 'demo-api-key')).mode & 0o777;
  assert.equal(mode.toString(8), '600');
}));

test('the demo key was printed on stdout once', ex(async () => {
  const count = server.stdout().split(server.apiKey).length - 1;
  assert.equal(count, 1, `the key appears ${count} times on stdout`);
}));

test('GET /healthz answers 200 "ok"', ex(async () => {
  const res = await withTimeout(fetch(server.url + '/healthz'), 5_000, 'GET /healthz');
  assert.equal(res.status, 200);
  assert.equal((await res.text()).trim(), 'ok');
}));
