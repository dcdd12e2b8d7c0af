// Live balance updates with the real @microsoft/signalr client: after GetBalances(clientId) a
// connection receives one account.balances.update per committed change of its user, with exact
// consecutive sequences, while a separate Node process drives the admin HTTP API. Connections
// that did not subscribe, and connections of other users, receive nothing. delete-user pushes
// deleted:true and closes the user's connections; revoke-key closes the connections of that key.
//
// "Receives nothing" is proven with a barrier instead of a sleep: the server pushes a change's
// updates before it answers the admin request, and handles one connection's messages in order,
// so an invocation sent after the admin answer completes after every update of that change.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  explained,
  makeTempDir,
  recordSecrets,
  removeTempDir,
  signalR,
  startConnection,
  startServer,
  withTimeout,
} from './harness.mjs';

const USER = 'user-123';
const N = 50; // admin ops driven by the child process in the main test
const DRIVER_CONCURRENCY = 8;

let dir;
let server;
let token;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  dir = makeTempDir();
  token = randomBytes(32).toString('hex');
  const tokenFile = path.join(dir, 'admin-token');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  server = await startServer({ dataDir: dir, demo: true, ownDataDir: true, extraArgs: ['--admin-token-file', tokenFile] });
});

after(async () => {
  if (server) await server.stop();
  else removeTempDir(dir);
});

// ---------------------------------------------------------------------------------------------
// helpers

// One admin HTTP request to the operations listener; returns {status, body} with body parsed as
// JSON (or the raw text). Keys in the answers are recorded for the log scan.
async function adminApi(method, urlPath, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await withTimeout(
    fetch(server.adminUrl + urlPath, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) }),
    10_000,
    `${method} ${urlPath}`,
  );
  const text = await res.text();
  let parsed = text;
  try {
    parsed = recordSecrets(JSON.parse(text));
  } catch {}
  return { status: res.status, body: parsed };
}

async function adminOk(method, urlPath, body, status = 200) {
  const r = await adminApi(method, urlPath, body);
  assert.equal(r.status, status, `${method} ${urlPath} ${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

let opCounter = 0;
const freshOpId = (what) => `${what}-${process.pid}-${++opCounter}`;

async function deposit(user, amount = '0.25', asset = 'BTC') {
  return adminOk('POST', `/admin/users/${user}/ops`, { opId: freshOpId('dep'), op: 'deposit', asset, amount });
}

async function createUser(userId) {
  await adminOk('POST', '/admin/users', { userId, baseCurrency: 'EUR', totalMaxExposure: '1000', opId: `create-${userId}` }, 201);
  const k = await adminOk('POST', `/admin/users/${userId}/keys`, {}, 201);
  assert.equal(typeof k.apiKey, 'string', `create-key answer ${JSON.stringify(k)}`);
  assert.equal(typeof k.keyId, 'string', `create-key answer ${JSON.stringify(k)}`);
  return k;
}

async function createKey(userId) {
  return adminOk('POST', `/admin/users/${userId}/keys`, {}, 201);
}

// A started connection with an event queue and a promise of its close (resolves with the error
// given to onclose, or null for a clean close).
async function open(key) {
  const conn = server.connect(key === undefined ? {} : { key });
  const events = new EventQueue(conn);
  let closedWith;
  const closed = new Promise((resolve) => conn.onclose((err) => resolve((closedWith = err ?? null))));
  await startConnection(conn);
  return { conn, events, closed, isClosed: () => closedWith !== undefined };
}

// GetBalances(clientId): returns the snapshot envelope (the one event before the Completion).
async function subscribe(c, clientId) {
  await withTimeout(c.conn.invoke('GetBalances', clientId), 5_000, `GetBalances(${clientId})`);
  const got = c.events.drain();
  assert.equal(got.length, 1, `one event before the completion: ${JSON.stringify(got)}`);
  assert.equal(got[0].subject, 'account.balances.snapshot', JSON.stringify(got[0]));
  assert.equal(got[0].clientId, clientId);
  return got[0];
}

// Completes after everything the server queued for this connection before the call.
async function barrier(c) {
  await assert.rejects(
    withTimeout(c.conn.invoke('BarrierNoSuchMethod'), 5_000, 'barrier invocation'),
    /Unknown hub method 'BarrierNoSuchMethod'/,
  );
}

function assertUpdate(env, clientId) {
  const { data, ...rest } = env;
  assert.deepEqual(
    rest,
    { channel: 'executionEvents', topic: 'account.balances', subject: 'account.balances.update', type: 'message', clientId },
    `update envelope ${JSON.stringify(env)}`,
  );
  assert.equal(typeof data?.sequence, 'number', `data.sequence in ${JSON.stringify(env)}`);
  return data;
}

// Runs the admin-op driver as its own Node process; resolves with its per-op results.
function drive({ user, n, concurrency }) {
  const script = `
const [url, user, n, concurrency] = [process.env.URL, process.env.USER_ID, +process.env.N, +process.env.CONC];
const token = process.env.ADMIN_TOKEN;
const results = [];
let next = 0;
async function worker() {
  while (next < n) {
    const i = next++;
    const opId = 'drive-' + process.pid + '-' + i;
    // Two deposits for each withdrawal: never short of funds whatever the commit order.
    const body = i % 3 === 2
      ? { opId, op: 'withdraw', asset: 'BTC', amount: '0.005' }
      : { opId, op: 'deposit', asset: 'BTC', amount: '0.01' };
    const res = await fetch(url + '/admin/users/' + user + '/ops', {
      method: 'POST',
      headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch {}
    results.push({ i, opId, status: res.status, body: parsed });
  }
}
Promise.all(Array.from({ length: concurrency }, worker)).then(
  () => { process.stdout.write(JSON.stringify(results)); },
  (err) => { console.error(err); process.exit(1); },
);
`;
  const file = path.join(dir, `driver-${++opCounter}.mjs`);
  writeFileSync(file, script);
  const child = spawn(process.execPath, [file], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, URL: server.adminUrl, USER_ID: user, N: String(n), CONC: String(concurrency), ADMIN_TOKEN: token },
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (err += d));
  const done = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) reject(new Error(`driver exited with ${code ?? signal}: ${err}`));
      else resolve(JSON.parse(out));
    });
  });
  return withTimeout(done, 30_000, 'admin driver process').catch((e) => {
    child.kill('SIGKILL');
    throw e;
  });
}

// ---------------------------------------------------------------------------------------------
// tests

test(`${N} admin ops from another process: exactly ${N} updates, consecutive sequences, in order; nobody else hears them`, { timeout: 60_000 }, ex(async () => {
  const other = await createUser('updates-other');
  const watcher = await open();
  const quiet = await open(); // same user, never calls GetBalances
  const stranger = await open(other.apiKey); // another user, subscribed to its own balances
  const s0 = (await subscribe(watcher, 'sub-1')).data.sequence;
  assert.equal((await subscribe(stranger, 'stranger')).data.userId, 'updates-other');

  const results = await drive({ user: USER, n: N, concurrency: DRIVER_CONCURRENCY });
  assert.equal(results.length, N);
  const bySeq = new Map();
  for (const r of results) {
    assert.equal(r.status, 200, `op ${r.opId}: ${r.status} ${JSON.stringify(r.body)}`);
    assert.ok(!bySeq.has(r.body.sequence), `sequence ${r.body.sequence} answered twice`);
    bySeq.set(r.body.sequence, r.body.data);
  }
  const want = Array.from({ length: N }, (_, i) => s0 + 1 + i);
  assert.deepEqual([...bySeq.keys()].sort((a, b) => a - b), want, 'admin answers carry sequences s0+1..s0+N');

  const updates = await watcher.events.next(N, 20_000);
  const seqs = updates.map((u) => assertUpdate(u, 'sub-1').sequence);
  assert.deepEqual(seqs, want, 'update sequences, in arrival order');
  for (const u of updates) {
    assert.deepEqual(u.data, bySeq.get(u.data.sequence), `update ${u.data.sequence} carries the data the admin answer had`);
  }
  const final = await adminOk('GET', `/admin/users/${USER}/balances`);
  assert.deepEqual(updates[N - 1].data, final, 'the last update equals GET /admin/users/user-123/balances');

  for (const c of [watcher, quiet, stranger]) await barrier(c);
  assert.equal(watcher.events.pending, 0, `no update beyond ${N}: ${JSON.stringify(watcher.events.drain())}`);
  assert.deepEqual(quiet.events.drain(), [], 'a connection that never called GetBalances receives nothing');
  assert.deepEqual(stranger.events.drain(), [], "another user's connection receives nothing");
  for (const c of [watcher, quiet, stranger]) assert.equal(c.isClosed(), false);
  for (const c of [watcher, quiet, stranger]) await c.conn.stop();
}));

test('two connections of one user: each update carries each connection\'s own clientId; a shared clientId is served to both', { timeout: 20_000 }, ex(async () => {
  const a = await open();
  const b = await open();
  const c = await open();
  const s0 = (await subscribe(a, 'client-a')).data.sequence;
  await subscribe(b, 'client-b');
  await subscribe(c, 'client-a'); // same clientId as a, other connection
  const answer = await deposit(USER);
  assert.equal(answer.sequence, s0 + 1);
  const [ua] = await a.events.next(1);
  const [ub] = await b.events.next(1);
  const [uc] = await c.events.next(1);
  assert.deepEqual(assertUpdate(ua, 'client-a'), answer.data);
  assert.deepEqual(assertUpdate(ub, 'client-b'), answer.data);
  assert.deepEqual(assertUpdate(uc, 'client-a'), answer.data);
  for (const x of [a, b, c]) {
    await barrier(x);
    assert.equal(x.events.pending, 0, `exactly one update each: ${JSON.stringify(x.events.drain())}`);
    await x.conn.stop();
  }
}));

test('a second GetBalances with another clientId moves the subscription to the new clientId', { timeout: 20_000 }, ex(async () => {
  const w = await open();
  await subscribe(w, 'first');
  const d1 = await deposit(USER);
  const [u1] = await w.events.next(1);
  assert.equal(assertUpdate(u1, 'first').sequence, d1.sequence);
  const snap = await subscribe(w, 'second');
  assert.equal(snap.data.sequence, d1.sequence, 'the new snapshot is at the last change');
  const d2 = await deposit(USER);
  const [u2] = await w.events.next(1);
  assert.equal(assertUpdate(u2, 'second').sequence, d2.sequence);
  assert.equal(d2.sequence, d1.sequence + 1);
  await barrier(w);
  assert.equal(w.events.pending, 0, `one update per change, under the latest clientId only: ${JSON.stringify(w.events.drain())}`);
  // A bad GetBalances (preChecksError) leaves the subscription as it was.
  await w.conn.invoke('GetBalances', '');
  const [pre] = w.events.drain();
  assert.equal(pre.subject, 'preChecksError');
  const d3 = await deposit(USER);
  const [u3] = await w.events.next(1);
  assert.equal(assertUpdate(u3, 'second').sequence, d3.sequence);
  await w.conn.stop();
}));

test('rejected, invalid and repeated admin ops push nothing and use no sequence', { timeout: 20_000 }, ex(async () => {
  const w = await open();
  const s0 = (await subscribe(w, 'sub-rejects')).data.sequence;
  const tooMuch = await adminApi('POST', `/admin/users/${USER}/ops`, { opId: freshOpId('big'), op: 'withdraw', asset: 'BTC', amount: '1000000' });
  assert.equal(tooMuch.status, 422, `withdraw beyond funds and limits: ${JSON.stringify(tooMuch.body)}`);
  const bad = await adminApi('POST', `/admin/users/${USER}/ops`, { opId: freshOpId('neg'), op: 'deposit', asset: 'BTC', amount: '-1' });
  assert.equal(bad.status, 400, `negative deposit: ${JSON.stringify(bad.body)}`);
  await barrier(w);
  assert.deepEqual(w.events.drain(), [], 'a rejected op produces no update');

  const opId = freshOpId('once');
  const first = await adminOk('POST', `/admin/users/${USER}/ops`, { opId, op: 'deposit', asset: 'ETH', amount: '1' });
  assert.equal(first.sequence, s0 + 1, 'rejections used no sequence');
  const [u] = await w.events.next(1);
  assert.deepEqual(assertUpdate(u, 'sub-rejects'), first.data);
  const again = await adminOk('POST', `/admin/users/${USER}/ops`, { opId, op: 'deposit', asset: 'ETH', amount: '1' });
  assert.deepEqual(again, first, 'a repeated opId answers the first result');
  await barrier(w);
  assert.deepEqual(w.events.drain(), [], 'a repeated opId pushes no second update');
  await w.conn.stop();
}));

test('revoke-key closes the connections of that key only; the same user\'s other key stays connected', { timeout: 20_000 }, ex(async () => {
  const k1 = await createUser('updates-revoke');
  const k2 = await createKey('updates-revoke');
  const a1 = await open(k1.apiKey); // subscribed
  const a2 = await open(k1.apiKey); // not subscribed
  const b = await open(k2.apiKey);
  await subscribe(a1, 'rev-a');
  const s0 = (await subscribe(b, 'rev-b')).data.sequence;

  const revoked = await adminOk('DELETE', `/admin/keys/${k1.keyId}`);
  assert.equal(revoked.keyId, k1.keyId);
  assert.equal(revoked.revoked, true);
  for (const c of [a1, a2]) {
    const err = await withTimeout(c.closed, 5_000, 'onclose of a connection of the revoked key');
    assert.ok(err instanceof Error, `closed with an error, got ${err}`);
    assert.match(err.message, /revoked/i);
    assert.equal(c.conn.state, signalR.HubConnectionState.Disconnected);
  }
  assert.deepEqual(a2.events.drain(), []);

  // The other key's connection still works and still gets its updates.
  const d = await deposit('updates-revoke');
  assert.equal(d.sequence, s0 + 1);
  const [u] = await b.events.next(1);
  assert.deepEqual(assertUpdate(u, 'rev-b'), d.data);
  await barrier(b);
  assert.equal(b.isClosed(), false);
  assert.deepEqual(a1.events.drain(), [], 'the closed connection got nothing after the revoke');

  // The revoked key cannot connect again.
  const again = server.connect({ key: k1.apiKey });
  await assert.rejects(withTimeout(again.start(), 5_000, 'start with a revoked key'), /401|Unauthorized/i);
  await b.conn.stop();
}));

test('delete-user pushes deleted:true to subscribers, then closes every connection of the user', { timeout: 20_000 }, ex(async () => {
  const k = await createUser('updates-delete');
  const bystander = await open(); // user-123, subscribed: hears nothing of the deletion
  await subscribe(bystander, 'bystander');
  const sub = await open(k.apiKey);
  const quiet = await open(k.apiKey);
  const s0 = (await subscribe(sub, 'del-1')).data.sequence;

  const gone = await adminOk('DELETE', '/admin/users/updates-delete', { opId: 'delete-updates-delete' });
  assert.equal(gone.deleted, true);
  const [u] = await sub.events.next(1);
  const data = assertUpdate(u, 'del-1');
  assert.equal(data.deleted, true);
  assert.equal(data.sequence, s0 + 1);
  assert.equal(data.userId, 'updates-delete');
  assert.deepEqual(data, gone, 'the update carries the data the DELETE answered');

  for (const c of [sub, quiet]) {
    const err = await withTimeout(c.closed, 5_000, 'onclose after delete-user');
    assert.ok(err instanceof Error, `closed with an error, got ${err}`);
    assert.match(err.message, /deleted/);
    assert.equal(c.conn.state, signalR.HubConnectionState.Disconnected);
  }
  assert.deepEqual(sub.events.drain(), [], 'nothing after the deleted:true update');
  assert.deepEqual(quiet.events.drain(), [], 'the unsubscribed connection received no update');

  await barrier(bystander);
  assert.deepEqual(bystander.events.drain(), [], "another user's subscriber hears nothing");
  assert.equal(bystander.isClosed(), false);
  await bystander.conn.stop();

  // Ops on the deleted user are refused and push nothing; if its key still opens a connection,
  // GetBalances answers account.balances.error (not a snapshot, no subscription).
  const after = await adminApi('POST', '/admin/users/updates-delete/ops', { opId: freshOpId('late'), op: 'deposit', asset: 'BTC', amount: '1' });
  assert.equal(after.status, 404, JSON.stringify(after.body));
  const late = server.connect({ key: k.apiKey });
  const lateEvents = new EventQueue(late);
  let started = true;
  await withTimeout(late.start(), 5_000, 'start with the deleted user\'s key').catch(() => (started = false));
  if (started) {
    await late.invoke('GetBalances', 'late');
    const [e] = lateEvents.drain();
    assert.equal(e?.subject, 'account.balances.error', JSON.stringify(e));
    assert.equal(e.clientId, 'late');
    await late.stop();
  }
}));
