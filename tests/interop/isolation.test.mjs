// Users made with the offline admin CLI before the server starts; each API key sees only its own
// user's balances, over concurrent connections, and the demo key still sees user-123.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  admin,
  assertDemoSnapshot,
  explained,
  makeTempDir,
  removeTempDir,
  startConnection,
  startServer,
  withTimeout,
} from './harness.mjs';

let dir;
let server;
const keys = { alice: [], bob: [] };
const created = { alice: [], bob: [] }; // create-key's stdout lines
const ex = (fn) => explained(() => server, fn);

before(async () => {
  dir = makeTempDir();
  admin(dir, 'create-user', 'alice', '--base-currency', 'EUR', '--total-max-exposure', '1000');
  admin(dir, 'create-user', 'bob', '--base-currency', 'USD', '--total-max-exposure', '2000');
  admin(dir, 'deposit', 'alice', 'BTC', '1');
  admin(dir, 'deposit', 'bob', 'ETH', '2.5');
  admin(dir, 'set-limits', 'alice', 'BTC=500');
  for (const user of ['alice', 'bob']) {
    for (let i = 0; i < 2; i++) created[user].push(admin(dir, 'create-key', user));
    keys[user] = created[user].map((line) => JSON.parse(line).apiKey);
  }
  server = await startServer({ dataDir: dir, demo: true, ownDataDir: true });
});

after(async () => {
  if (server) await server.stop();
  else removeTempDir(dir);
});

test('create-key prints {"keyId","apiKey"} on one stdout line, a distinct key per call', ex(async () => {
  const lines = [...created.alice, ...created.bob];
  for (const line of lines) {
    assert.doesNotMatch(line, /\n/, `one line: ${JSON.stringify(line)}`);
    const k = JSON.parse(line);
    assert.deepEqual(Object.keys(k), ['keyId', 'apiKey'], line);
    assert.match(k.keyId, /^[0-9a-f]{16}$/, line);
    assert.match(k.apiKey, /^bh_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/, line);
    assert.equal(k.apiKey.slice(3, 19), k.keyId, 'the key carries its id');
  }
  const all = [...keys.alice, ...keys.bob];
  assert.equal(new Set(all).size, 4, 'four different keys');
  assert.ok(!all.includes(server.apiKey), 'the demo key is another key');
}));

async function balancesFor(key, clientId) {
  const conn = server.connect({ key });
  const events = new EventQueue(conn);
  await startConnection(conn);
  await withTimeout(conn.invoke('GetBalances', clientId), 5_000, `GetBalances(${clientId})`);
  return { conn, events, env: events.drain() };
}

function checkEnvelope(env, clientId) {
  assert.equal(env.length, 1, `exactly one event: ${JSON.stringify(env)}`);
  const e = env[0];
  assert.equal(e.channel, 'executionEvents');
  assert.equal(e.topic, 'account.balances');
  assert.equal(e.subject, 'account.balances.snapshot');
  assert.equal(e.type, 'message');
  assert.equal(e.clientId, clientId);
  assert.equal(typeof e.data.sequence, 'number');
  assert.equal(e.data.deleted, false);
  assert.equal(e.data.totalCurrentExposure, 0);
  return e.data;
}

test('four keys on four concurrent connections: each sees its own user only', { timeout: 20_000 }, ex(async () => {
  const who = [
    ['alice', keys.alice[0]],
    ['alice', keys.alice[1]],
    ['bob', keys.bob[0]],
    ['bob', keys.bob[1]],
  ];
  const conns = await Promise.all(who.map(([user, key], i) => balancesFor(key, `${user}-${i}`)));
  const data = conns.map((c, i) => checkEnvelope(c.env, `${who[i][0]}-${i}`));

  for (const i of [0, 1]) {
    const d = data[i];
    assert.equal(d.userId, 'alice');
    assert.equal(d.baseCurrency, 'EUR');
    assert.equal(d.totalMaxExposure, 1000);
    assert.deepEqual(d.assets, [{ name: 'BTC', available: 1, allocated: 0, currentExposure: 0, maxExposure: 500 }]);
  }
  for (const i of [2, 3]) {
    const d = data[i];
    assert.equal(d.userId, 'bob');
    assert.equal(d.baseCurrency, 'USD');
    assert.equal(d.totalMaxExposure, 2000);
    assert.equal(d.assets.length, 1, JSON.stringify(d.assets));
    const [eth] = d.assets;
    assert.equal(typeof eth.maxExposure, 'number');
    assert.deepEqual({ ...eth, maxExposure: 0 }, { name: 'ETH', available: 2.5, allocated: 0, currentExposure: 0, maxExposure: 0 });
  }
  // Two keys of one user read the same snapshot.
  assert.deepEqual(data[0], data[1]);
  assert.deepEqual(data[2], data[3]);

  // Interleave calls on all four connections: still only their own user, one event each.
  await Promise.all(conns.map((c, i) => c.conn.invoke('GetBalances', `again-${i}`)));
  conns.forEach((c, i) => {
    const d = checkEnvelope(c.events.drain(), `again-${i}`);
    assert.equal(d.userId, who[i][0]);
  });
}));

test('the demo key still sees user-123 with the seed balances', { timeout: 15_000 }, ex(async () => {
  const { env } = await balancesFor(server.apiKey, 'demo');
  assert.equal(env.length, 1, JSON.stringify(env));
  assertDemoSnapshot(env[0], 'demo');
}));
