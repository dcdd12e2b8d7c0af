// Isolation between users and the admin API's door (SPEC sections 3 and 5): user A's key never
// reads or affects user B, over every transport and hub protocol with the real
// @microsoft/signalr client (GetBalances names the key's user whatever clientId says; B's updates
// never reach A's connections); A's connection tokens are refused with B's key on every
// endpoint that takes one (403), and unknown ones are 404; the admin API answers only with its
// token, only on the operations listener (loopback), and is 404 when disabled.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  RawWs,
  admin,
  binPath,
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

const COMBOS = [
  { name: 'WebSockets json', transport: T.WebSockets, msgpack: false },
  { name: 'WebSockets messagepack', transport: T.WebSockets, msgpack: true },
  { name: 'ServerSentEvents json', transport: T.ServerSentEvents, msgpack: false },
  { name: 'LongPolling json', transport: T.LongPolling, msgpack: false },
  { name: 'LongPolling messagepack', transport: T.LongPolling, msgpack: true },
];

let dir;
let token;
let server;
const keys = {}; // user -> {keyId, apiKey}
const ex = (fn) => explained(() => server, fn);
let opCounter = 0;
const opId = (what) => `sec-${what}-${process.pid}-${++opCounter}`;

before(async () => {
  dir = makeTempDir();
  admin(dir, 'create-user', 'alice', '--base-currency', 'EUR', '--total-max-exposure', '1000');
  admin(dir, 'create-user', 'bob', '--base-currency', 'USD', '--total-max-exposure', '2000');
  admin(dir, 'deposit', 'alice', 'BTC', '1');
  admin(dir, 'deposit', 'bob', 'ETH', '2.5');
  for (const user of ['alice', 'bob']) keys[user] = JSON.parse(admin(dir, 'create-key', user));
  token = randomBytes(32).toString('hex');
  const tokenFile = path.join(dir, 'admin-token');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  server = await startServer({
    dataDir: dir,
    ownDataDir: true,
    extraArgs: ['--admin-token-file', tokenFile],
    env: { BALANCEHUB_ADMIN_TOKEN: undefined },
  });
});

after(async () => {
  if (server) await server.stop();
  else removeTempDir(dir);
});

// ---------------------------------------------------------------------------------------------
// helpers

async function request(method, url, { bearer, body, headers = {} } = {}) {
  const h = { ...headers };
  if (bearer !== undefined) h.authorization = `Bearer ${bearer}`;
  if (body !== undefined) h['content-type'] = 'application/json';
  const res = await withTimeout(
    fetch(url, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) }),
    10_000,
    `${method} ${url}`,
  );
  const text = await res.text();
  return { status: res.status, text, headers: res.headers };
}

function adminUrl() {
  assert.ok(server.adminUrl, 'the operations listener is on (harness server.adminUrl)');
  return server.adminUrl;
}

async function balances(user) {
  const r = await request('GET', `${adminUrl()}/admin/users/${user}/balances`, { bearer: token });
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text);
}

async function deposit(user, asset, amount) {
  const r = await request('POST', `${adminUrl()}/admin/users/${user}/ops`, {
    bearer: token,
    body: { opId: opId('dep'), op: 'deposit', asset, amount },
  });
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text);
}

// An HttpClient that records every negotiate answer (the connection token is not public).
class RecordingHttpClient extends signalR.DefaultHttpClient {
  constructor() {
    super(signalR.NullLogger.instance);
    this.negotiations = [];
  }

  async send(req) {
    const res = await super.send(req);
    if (/\/negotiate\?/.test(req.url) && res.statusCode === 200) this.negotiations.push(JSON.parse(res.content));
    return res;
  }
}

function build(key, { transport, msgpack, httpClient }) {
  const b = new signalR.HubConnectionBuilder()
    .withUrl(server.hubUrl, { transport, httpClient, accessTokenFactory: () => key })
    .configureLogging(process.env.BALANCEHUB_TEST_SIGNALR_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None);
  if (msgpack) b.withHubProtocol(new MessagePackHubProtocol());
  const conn = b.build();
  server.connections.add(conn);
  return conn;
}

async function connect(user, combo) {
  const conn = build(keys[user].apiKey, combo);
  const events = new EventQueue(conn);
  await withTimeout(conn.start(), 10_000, `start ${combo.name} as ${user}`);
  return { conn, events };
}

// Resolves once everything the server queued for conn before the call has arrived (one
// connection's messages are answered in order).
async function barrier(conn) {
  await assert.rejects(withTimeout(conn.invoke('SecurityBarrier'), 5_000, 'barrier'), /Unknown hub method 'SecurityBarrier'/);
}

const envelope = (subject, clientId, data) => ({
  channel: 'executionEvents',
  topic: 'account.balances',
  subject,
  type: 'message',
  clientId,
  data,
});

async function negotiateFull(key, version = 1) {
  const r = await request('POST', `${server.hubUrl}/negotiate?negotiateVersion=${version}`, { bearer: key });
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text);
}

async function negotiate(key, version = 1) {
  const n = await negotiateFull(key, version);
  return version >= 1 ? n.connectionToken : n.connectionId;
}

const hub = (id, extra = '') => `${server.hubUrl}?id=${encodeURIComponent(id)}${extra}`;

// Every endpoint that takes a connection token, with key: {what: status}.
async function tokenEndpoints(id, key) {
  const sse = await request('GET', hub(id), { bearer: key, headers: { accept: 'text/event-stream' } });
  const sseQuery = await request('GET', hub(id, `&access_token=${encodeURIComponent(key)}`), {
    headers: { accept: 'text/event-stream' },
  });
  const poll = await request('GET', hub(id), { bearer: key });
  const post = await request('POST', hub(id), {
    bearer: key,
    headers: { 'content-type': 'text/plain;charset=UTF-8' },
  });
  const del = await request('DELETE', hub(id), { bearer: key });
  const { res, socket } = await RawWs.upgradeRequest(server, {
    query: `id=${encodeURIComponent(id)}&access_token=${encodeURIComponent(key)}`,
  });
  socket.destroy();
  const out = { sse, sseQuery, poll, post, del, ws: { status: res.status, text: res.body } };
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, `${v.status} ${v.text}`]));
}

const ALL_403 = (() => {
  const t = '403 This connection belongs to another API key.';
  return { sse: t, sseQuery: t, poll: t, post: t, del: t, ws: t };
})();

// ---------------------------------------------------------------------------------------------
// reading another user's balances

for (const combo of COMBOS) {
  test(`${combo.name}: GetBalances with B's user id or key id as clientId answers A's own balances under that clientId`, { timeout: 30_000 }, ex(async () => {
    const aliceData = await balances('alice');
    const bobData = await balances('bob');
    assert.equal(aliceData.userId, 'alice');
    assert.notDeepEqual(aliceData.assets, bobData.assets, 'the two users have different balances');
    const { conn, events } = await connect('alice', combo);
    for (const clientId of ['bob', keys.bob.keyId, 'user-123']) {
      assert.equal(await withTimeout(conn.invoke('GetBalances', clientId), 5_000, 'GetBalances'), null);
      const got = events.drain();
      // The key decides the user; clientId is only echoed back.
      assert.deepEqual(got, [envelope('account.balances.snapshot', clientId, aliceData)], `clientId ${clientId}`);
      assert.ok(!JSON.stringify(got).includes('"USD"') && !JSON.stringify(got).includes('"ETH"'), 'nothing of bob');
    }
    // Extra arguments naming B change nothing either: a pre-check error, no data.
    assert.equal(await withTimeout(conn.invoke('GetBalances', 'bob', 'bob'), 5_000, 'GetBalances 2 args'), null);
    assert.deepEqual(events.drain(), [
      { ...envelope('preChecksError', 'bob', { message: 'GetBalances takes exactly one argument: clientId' }), type: 'error' },
    ]);
    await withTimeout(conn.stop(), 5_000, 'stop');
  }));

  test(`${combo.name}: B's updates reach B only, A's reach A only`, { timeout: 30_000 }, ex(async () => {
    const a = await connect('alice', combo);
    const b = await connect('bob', combo);
    // A subscribes under B's user id as clientId: still A's subscription.
    await withTimeout(a.conn.invoke('GetBalances', 'bob'), 5_000, 'A GetBalances');
    await withTimeout(b.conn.invoke('GetBalances', 'b-sub'), 5_000, 'B GetBalances');
    const [aSnap] = a.events.drain();
    const [bSnap] = b.events.drain();
    assert.equal(aSnap.data.userId, 'alice');
    assert.equal(bSnap.data.userId, 'bob');

    const bAns = await deposit('bob', 'ETH', '0.5');
    assert.equal(bAns.sequence, bSnap.data.sequence + 1);
    const [bUp] = await b.events.next(1, 5_000);
    assert.deepEqual(bUp, envelope('account.balances.update', 'b-sub', bAns.data));
    await barrier(a.conn);
    await barrier(b.conn);
    assert.deepEqual(a.events.drain(), [], "A receives nothing of B's deposit");
    assert.deepEqual(b.events.drain(), [], 'B receives exactly one update');

    const aAns = await deposit('alice', 'BTC', '0.25');
    assert.equal(aAns.sequence, aSnap.data.sequence + 1);
    const [aUp] = await a.events.next(1, 5_000);
    assert.deepEqual(aUp, envelope('account.balances.update', 'bob', aAns.data));
    await barrier(a.conn);
    await barrier(b.conn);
    assert.deepEqual(a.events.drain(), [], 'A receives exactly one update');
    assert.deepEqual(b.events.drain(), [], "B receives nothing of A's deposit");
    await withTimeout(Promise.all([a.conn.stop(), b.conn.stop()]), 5_000, 'stop');
  }));
}

// ---------------------------------------------------------------------------------------------
// connection tokens belong to their key

test("A's negotiated connection token with B's key (and B's with A's): 403 on SSE, Long Polling, POST, DELETE and WebSocket; the owner still uses it", { timeout: 30_000 }, ex(async () => {
  for (const [owner, other] of [['alice', 'bob'], ['bob', 'alice']]) {
    for (const version of [1, 0]) {
      const id = await negotiate(keys[owner].apiKey, version);
      assert.deepEqual(await tokenEndpoints(id, keys[other].apiKey), ALL_403, `${owner}'s v${version} token, pending`);
      // The session was not harmed: its owner opens Long Polling with it...
      const first = await request('GET', hub(id), { bearer: keys[owner].apiKey });
      assert.equal(first.status, 200, `${owner}'s first poll: ${first.text}`);
      // ...and once it is open the other key is still refused everywhere.
      assert.deepEqual(await tokenEndpoints(id, keys[other].apiKey), ALL_403, `${owner}'s v${version} token, open`);
      const del = await request('DELETE', hub(id), { bearer: keys[owner].apiKey });
      assert.equal(del.status, 202, `${owner} ends its own connection: ${del.text}`);
    }
  }
}));

test('a connection token nobody issued, a v1 connectionId (not the token), or a token that is gone: 404 with any valid key', { timeout: 20_000 }, ex(async () => {
  const made = randomBytes(40).toString('base64url');
  const r = await tokenEndpoints(made, keys.alice.apiKey);
  for (const [k, v] of Object.entries(r)) assert.equal(v, '404 No Connection with that ID', k);
  const n = await negotiateFull(keys.alice.apiKey);
  assert.notEqual(n.connectionId, n.connectionToken);
  for (const key of [keys.alice.apiKey, keys.bob.apiKey]) {
    const byId = await tokenEndpoints(n.connectionId, key);
    for (const [k, v] of Object.entries(byId)) assert.equal(v, '404 No Connection with that ID', `connectionId ${k}`);
  }
  assert.equal((await request('DELETE', hub(n.connectionToken), { bearer: keys.alice.apiKey })).status, 202);
  const id = await negotiate(keys.bob.apiKey);
  assert.equal((await request('DELETE', hub(id), { bearer: keys.bob.apiKey })).status, 202);
  for (const key of [keys.bob.apiKey, keys.alice.apiKey]) {
    const gone = await request('GET', hub(id), { bearer: key });
    assert.equal(`${gone.status} ${gone.text}`, '404 No Connection with that ID');
  }
}));

for (const combo of COMBOS.filter((c) => c.transport !== T.WebSockets)) {
  test(`${combo.name}: B's key cannot send into, poll, or end A's live connection`, { timeout: 30_000 }, ex(async () => {
    const httpClient = new RecordingHttpClient();
    const conn = build(keys.alice.apiKey, { ...combo, httpClient });
    const events = new EventQueue(conn);
    let closed = null;
    conn.onclose((e) => (closed = { error: e }));
    await withTimeout(conn.start(), 10_000, 'start');
    const id = httpClient.negotiations.at(-1).connectionToken;
    // An invocation that would answer on A's connection, in A's connection's protocol.
    const invocation = combo.msgpack
      ? Buffer.from(new MessagePackHubProtocol().writeMessage({ type: 1, invocationId: '99', target: 'GetBalances', arguments: ['injected'], headers: {} }))
      : JSON.stringify({ type: 1, invocationId: '99', target: 'GetBalances', arguments: ['injected'] }) + '\x1e';
    for (const [method, headers, body] of [
      ['POST', { 'content-type': 'application/octet-stream' }, invocation],
      ['GET', {}, undefined],
      ['GET', { accept: 'text/event-stream' }, undefined],
      ['DELETE', {}, undefined],
    ]) {
      const res = await withTimeout(
        fetch(hub(id), { method, headers: { ...headers, authorization: `Bearer ${keys.bob.apiKey}` }, body }),
        5_000,
        method,
      );
      assert.equal(`${res.status} ${await res.text()}`, '403 This connection belongs to another API key.', `${method} ${JSON.stringify(headers)}`);
    }
    await barrier(conn);
    assert.deepEqual(events.drain(), [], 'nothing was injected into A\'s connection');
    assert.equal(conn.state, signalR.HubConnectionState.Connected);
    assert.equal(closed, null);
    assert.equal(await withTimeout(conn.invoke('GetBalances', 'mine'), 5_000, 'GetBalances'), null);
    const [snap] = events.drain();
    assert.equal(snap.data.userId, 'alice');
    await withTimeout(conn.stop(), 5_000, 'stop');
  }));
}

// ---------------------------------------------------------------------------------------------
// the admin API

test('admin API: only with the admin token (401 without, with a wrong one, with a user key), only on the operations listener', { timeout: 20_000 }, ex(async () => {
  const base = adminUrl();
  assert.match(base, /^http:\/\/127\.0\.0\.1:\d+$/, 'the operations listener is on loopback');
  const url = `${base}/admin/users/bob/balances`;
  const ok = await request('GET', url, { bearer: token });
  assert.equal(ok.status, 200, ok.text);
  const before = JSON.parse(ok.text);
  const wrong = token.slice(0, -1) + (token.endsWith('0') ? '1' : '0');
  for (const [what, bearer, headers] of [
    ['no token', undefined, {}],
    ['a wrong token (last character changed)', wrong, {}],
    ['a prefix of the token', token.slice(0, 32), {}],
    ['the token and more', token + 'x', {}],
    ["A's API key", keys.alice.apiKey, {}],
    ["B's API key", keys.bob.apiKey, {}],
    ['the token without Bearer', undefined, { authorization: token }],
    ['the token as Basic', undefined, { authorization: `Basic ${Buffer.from(`admin:${token}`).toString('base64')}` }],
  ]) {
    const r = await request('GET', url, { bearer, headers });
    assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`);
    assert.ok(!r.text.includes('"ETH"'), `${what}: no balances in the answer`);
    // Nor can it change anything.
    const w = await request('POST', `${base}/admin/users/bob/ops`, {
      bearer,
      headers,
      body: { opId: opId('evil'), op: 'withdraw', asset: 'ETH', amount: '1' },
    });
    assert.equal(w.status, 401, `${what} (write): ${w.status} ${w.text}`);
  }
  const q = await request('GET', `${url}?access_token=${token}`);
  assert.equal(q.status, 401, 'the token in the query string is not accepted');
  assert.deepEqual(await balances('bob'), before, "bob's balances unchanged");

  // The hub listener serves neither /admin/ nor /metrics, whatever the token.
  for (const p of ['/admin/users/bob/balances', '/metrics']) {
    const r = await request('GET', server.url + p, { bearer: token });
    assert.equal(r.status, 404, `${p} on the hub listener: ${r.status} ${r.text}`);
  }
  // The admin token is not an API key.
  const n = await request('POST', `${server.hubUrl}/negotiate?negotiateVersion=1`, { bearer: token });
  assert.equal(n.status, 401, n.text);
}));

test('serve --help: the operations listener defaults to loopback', () => {
  const help = execFileSync(binPath(), ['serve', '--help'], { encoding: 'utf8' });
  const i = help.indexOf('--admin-listen');
  assert.ok(i >= 0, '--help lists --admin-listen');
  const entry = help.slice(i, help.indexOf('\n  --', i + 1));
  assert.match(entry, /127\.0\.0\.1:5001/, `the default is loopback: ${entry}`);
});

describe('admin API disabled (no token)', () => {
  let plain;
  before(async () => {
    plain = await startServer({ env: { BALANCEHUB_ADMIN_TOKEN: undefined } });
  });
  after(async () => {
    if (plain) await plain.stop();
  });

  test('every /admin/ request is 404, with or without a token', { timeout: 20_000 }, explained(() => plain, async () => {
    assert.ok(plain.adminUrl, 'the operations listener is on (for /metrics) even without an admin token');
    for (const bearer of [undefined, token, 'x'.repeat(32), plain.apiKey]) {
      for (const [method, p] of [
        ['GET', '/admin/users/user-123/balances'],
        ['POST', '/admin/users'],
        ['DELETE', '/admin/users/user-123'],
      ]) {
        const r = await request(method, plain.adminUrl + p, { bearer, body: method === 'GET' ? undefined : {} });
        assert.equal(r.status, 404, `${method} ${p} with ${bearer === undefined ? 'no token' : 'a token'}: ${r.text}`);
      }
    }
    const m = await request('GET', `${plain.adminUrl}/metrics`);
    assert.equal(m.status, 200);
  }));
});
