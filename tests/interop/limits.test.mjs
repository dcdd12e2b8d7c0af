// Per-key and server-wide limits (SPEC section 3): concurrent connections per API key (429),
// the per-key command rate (an account.balances.error event, the connection stays), and the
// total connection limit (503). Small limits via options keep the tests fast.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  RawWs,
  admin,
  explained,
  makeTempDir,
  startConnection,
  startServer,
} from './harness.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function negotiate(server, key) {
  return fetch(`${server.url}${HUB_PATH}/negotiate?negotiateVersion=1`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}` },
  });
}

async function assertRefused(res, status, error) {
  assert.equal(res.status, status);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  assert.deepEqual(await res.json(), { error });
}

async function assertUpgradeRefused(server, key, status, error) {
  const { res, socket } = await RawWs.upgradeRequest(server, { query: `access_token=${encodeURIComponent(key)}` });
  socket.socket?.destroy?.();
  assert.equal(res.status, status, `upgrade status (body: ${res.body})`);
  assert.deepEqual(JSON.parse(res.body), { error });
}

describe('per-key connections (--max-connections-per-key 2)', () => {
  let server;
  let otherKey;
  const ex = (fn) => explained(() => server, fn);
  before(async () => {
    const dir = makeTempDir();
    admin(dir, 'create-user', 'carol', '--base-currency', 'EUR', '--total-max-exposure', '1000');
    otherKey = JSON.parse(admin(dir, 'create-key', 'carol')).apiKey;
    server = await startServer({ dataDir: dir, ownDataDir: true, extraArgs: ['--max-connections-per-key', '2'] });
  });
  after(async () => {
    if (server) await server.stop();
  });

  test('the 3rd connection of a key gets 429 at negotiate and at upgrade; others still connect; a close frees a slot', ex(async () => {
    const a = await startConnection(server.connect());
    const b = await startConnection(server.connect());
    await assertRefused(await negotiate(server, server.apiKey), 429, 'too many connections for this API key');
    await assertUpgradeRefused(server, server.apiKey, 429, 'too many connections for this API key');
    await assert.rejects(startConnection(server.connect()), 'the client library cannot start a 3rd');

    // Another key of the same server is not affected, and can take its own two.
    const o1 = await startConnection(server.connect({ key: otherKey }));
    const o2 = await startConnection(server.connect({ key: otherKey }));
    await assertRefused(await negotiate(server, otherKey), 429, 'too many connections for this API key');
    const q = new EventQueue(o1);
    await o1.invoke('GetBalances', 'o1');
    const [ev] = await q.next(1);
    assert.equal(ev.subject, 'account.balances.snapshot');
    assert.equal(a.state, 'Connected');

    // Closing one frees its slot (the server notices the close a moment later).
    await b.stop();
    let c;
    for (let i = 0; i < 40 && !c; i++) {
      try {
        c = await startConnection(server.connect());
      } catch {
        await sleep(50);
      }
    }
    assert.ok(c, 'a connection fits once one was closed');
    await assertRefused(await negotiate(server, server.apiKey), 429, 'too many connections for this API key');
    await Promise.all([a.stop(), c.stop(), o1.stop(), o2.stop()]);
    assert.ok(server.alive());
  }));
});

describe('per-key command rate (--rate-limit 5 --rate-burst 10)', () => {
  let server;
  const ex = (fn) => explained(() => server, fn);
  before(async () => {
    server = await startServer({ extraArgs: ['--rate-limit', '5', '--rate-burst', '10'] });
  });
  after(async () => {
    if (server) await server.stop();
  });

  test('a burst of 30 gets 10 snapshots, then rate-limit errors; the connection stays usable', ex(async () => {
    const conn = await startConnection(server.connect());
    const q = new EventQueue(conn);
    const ids = Array.from({ length: 30 }, (_, i) => `burst-${i}`);
    const t0 = Date.now();
    // Every invocation completes without a completion error, limited or not.
    const results = await Promise.all(ids.map((id) => conn.invoke('GetBalances', id)));
    const elapsed = Date.now() - t0;
    assert.deepEqual(results, ids.map(() => null));
    const events = await q.next(30);
    assert.deepEqual(events.map((e) => e.clientId), ids, 'one event per invocation, in order');
    const snaps = events.filter((e) => e.subject === 'account.balances.snapshot').length;
    // 5 tokens/s: at most one more arrives while the burst is answered (when it takes < 400 ms).
    const extra = Math.floor((elapsed * 5) / 1000) + 1;
    assert.ok(snaps >= 10 && snaps <= 10 + extra, `snapshots: ${snaps} (burst took ${elapsed} ms)`);
    for (let i = 0; i < 10; i++) assert.equal(events[i].subject, 'account.balances.snapshot', `event ${i}`);
    const errors = events.filter((e) => e.subject !== 'account.balances.snapshot');
    assert.equal(errors.length, 30 - snaps);
    assert.ok(errors.length >= 30 - 10 - extra && errors.length >= 15);
    for (const e of errors) {
      assert.deepEqual(e, {
        channel: 'executionEvents',
        topic: 'account.balances',
        subject: 'account.balances.error',
        type: 'error',
        clientId: e.clientId,
        data: { message: 'rate limit exceeded' },
      });
      assert.ok(ids.includes(e.clientId));
    }
    // A bad clientId is still limited, with clientId null when it is not a string.
    await conn.invoke('GetBalances', 42);
    const [bad] = await q.next(1);
    if (bad.subject === 'account.balances.error') assert.equal(bad.clientId, null);
    assert.equal(conn.state, 'Connected');

    // After a wait the bucket has tokens again.
    await sleep(500);
    await conn.invoke('GetBalances', 'later');
    const [ok] = await q.next(1);
    assert.equal(ok.subject, 'account.balances.snapshot');
    assert.equal(ok.clientId, 'later');
    await conn.stop();
  }));

  test('the bucket is shared by the connections of a key', ex(async () => {
    await sleep(2_100); // the bucket refills to its burst of 10
    const c1 = await startConnection(server.connect());
    const c2 = await startConnection(server.connect());
    const q1 = new EventQueue(c1);
    const q2 = new EventQueue(c2);
    await Promise.all(Array.from({ length: 8 }, (_, i) => c1.invoke('GetBalances', `a${i}`)));
    await Promise.all(Array.from({ length: 8 }, (_, i) => c2.invoke('GetBalances', `b${i}`)));
    const all = [...(await q1.next(8)), ...(await q2.next(8))];
    const snaps = all.filter((e) => e.subject === 'account.balances.snapshot').length;
    assert.ok(snaps >= 10 && snaps <= 12, `snapshots over both connections: ${snaps}`);
    await Promise.all([c1.stop(), c2.stop()]);
  }));
});

describe('total connections (--max-connections 3)', () => {
  let server;
  const ex = (fn) => explained(() => server, fn);
  before(async () => {
    server = await startServer({ extraArgs: ['--max-connections', '3'] });
  });
  after(async () => {
    if (server) await server.stop();
  });

  test('the 4th connection gets 503 at negotiate and at upgrade', ex(async () => {
    const conns = [];
    for (let i = 0; i < 3; i++) conns.push(await startConnection(server.connect()));
    await assertRefused(await negotiate(server, server.apiKey), 503, 'server at connection limit');
    await assertUpgradeRefused(server, server.apiKey, 503, 'server at connection limit');
    const q = new EventQueue(conns[0]);
    await conns[0].invoke('GetBalances', 'still');
    assert.equal((await q.next(1))[0].subject, 'account.balances.snapshot');
    await Promise.all(conns.map((c) => c.stop()));
    assert.ok(server.alive());
  }));
});
