// The admin HTTP API against a real server: every route's exact answer, the token check, bad
// input (each rejected with a one-line error naming the field, changing nothing), limit
// rejections, idempotency by opId (also 20 concurrent requests), all-or-nothing trades, and
// API keys created and revoked through the API, seen by the real @microsoft/signalr client.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  EventQueue,
  OP,
  RS,
  RawWs,
  closePayload,
  buildConnection,
  explained,
  makeTempDir,
  recordSecrets,
  removeTempDir,
  startConnection,
  startServer,
  withTimeout,
} from './harness.mjs';

const TOKEN = 'admin-token-' + 'x'.repeat(20);
let tokenDir;
let server;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  tokenDir = makeTempDir('balancehub-admin-token-');
  const file = path.join(tokenDir, 'token');
  writeFileSync(file, TOKEN + '\n', { mode: 0o600 });
  server = await startServer({
    extraArgs: ['--admin-token-file', file],
    env: { BALANCEHUB_ADMIN_TOKEN: undefined },
  });
});

after(async () => {
  try {
    if (server) await server.stop();
  } finally {
    removeTempDir(tokenDir);
  }
});

// ---------------------------------------------------------------------------------------------
// helpers

// One admin request to the operations listener. body: an object (sent as JSON), a string (sent
// as is) or undefined.
async function api(method, urlPath, body, { token = TOKEN, base } = {}) {
  const headers = {};
  if (token !== null) headers.authorization = token.includes(' ') ? token : `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await withTimeout(
    fetch((base ?? server.adminUrl) + urlPath, { method, headers, body: payload }),
    10_000,
    `${method} ${urlPath}`,
  );
  const text = await res.text();
  let json;
  try {
    json = recordSecrets(JSON.parse(text));
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json, headers: res.headers };
}

// Exact balances `data` text in the seed's field order; decimals are given as their exact text.
// assets: [[name, available, allocated, currentExposure, maxExposure], ...] sorted by name.
function dataText({ userId, sequence, assets = [], base = 'EUR', totalCur = '0', totalMax, deleted = false }) {
  const a = assets
    .map(
      ([name, available, allocated, cur, max]) =>
        `{"name":"${name}","available":${available},"allocated":${allocated},"currentExposure":${cur},"maxExposure":${max}}`,
    )
    .join(',');
  return (
    `{"userId":"${userId}","sequence":${sequence},"assets":[${a}],"baseCurrency":"${base}",` +
    `"totalCurrentExposure":${totalCur},"totalMaxExposure":${totalMax},"deleted":${deleted}}`
  );
}

const resultText = (d) => `{"sequence":${JSON.parse(d).sequence},"data":${d}}`;

function expectOk(r, status, text, what) {
  assert.equal(r.status, status, `${what}: status (body ${r.text})`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/, `${what}: content type`);
  if (text !== undefined) assert.equal(r.text, text, `${what}: exact body`);
}

// An error answer: status, {"error": one line, "code": code}, and the message matching re.
function expectError(r, status, code, re, what) {
  assert.equal(r.status, status, `${what}: status (body ${r.text})`);
  assert.ok(r.json && typeof r.json === 'object', `${what}: JSON body, got ${r.text}`);
  assert.deepEqual(Object.keys(r.json), ['error', 'code'], `${what}: error shape ${r.text}`);
  assert.equal(r.json.code, code, `${what}: code`);
  assert.equal(typeof r.json.error, 'string');
  assert.ok(r.json.error.length > 0, `${what}: a message`);
  assert.doesNotMatch(r.json.error, /[\r\n]/, `${what}: one line`);
  if (re) assert.match(r.json.error, re, `${what}: message`);
}

const createUser = (userId, totalMaxExposure = '1000', extra = {}) =>
  api('POST', '/admin/users', { userId, baseCurrency: 'EUR', totalMaxExposure, ...extra });
const op = (user, body) => api('POST', `/admin/users/${encodeURIComponent(user)}/ops`, body);
const balances = (user) => api('GET', `/admin/users/${encodeURIComponent(user)}/balances`);
async function journal(user, query = '') {
  const r = await api('GET', `/admin/users/${encodeURIComponent(user)}/journal${query}`);
  assert.equal(r.status, 200, `journal of ${user}: ${r.text}`);
  return r.json.entries;
}

const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

// Journal entries without their time, after checking each time is ISO-8601 UTC ms and recent.
function untimed(entries) {
  return entries.map(({ time, ...rest }) => {
    assert.match(time, ISO_MS, `time format of ${JSON.stringify(rest)}`);
    const age = Date.now() - Date.parse(time);
    assert.ok(age >= -5_000 && age < 300_000, `time ${time} is about now`);
    return rest;
  });
}

// ---------------------------------------------------------------------------------------------
// authentication

test('401 without a token, with a wrong one, or another scheme, on every path', ex(async () => {
  const paths = [
    ['GET', '/admin/users/user-123/balances'],
    ['POST', '/admin/users'],
    ['POST', '/admin/users/user-123/ops'],
    ['GET', '/admin/users/user-123/journal'],
    ['PUT', '/admin/rates'],
    ['DELETE', '/admin/keys/0123456789abcdef'],
    ['GET', '/admin/no-such-thing'],
  ];
  for (const [method, p] of paths) {
    for (const token of [null, 'wrong', TOKEN + 'x', TOKEN.slice(0, -1), `Basic ${TOKEN}`, 'Bearer']) {
      const r = await api(method, p, method === 'GET' || method === 'DELETE' ? undefined : '{}', { token });
      expectError(r, 401, 'unauthorized', null, `${method} ${p} with ${JSON.stringify(token)}`);
    }
  }
  // Nothing was created by those attempts.
  const r = await balances('user-123');
  expectOk(r, 200, undefined, 'balances with the right token');
  assert.equal(r.json.userId, 'user-123');
}));

test('without an admin token configured every /admin/ path answers 404', async () => {
  const plain = await startServer({ env: { BALANCEHUB_ADMIN_TOKEN: undefined } });
  try {
    const base = plain.adminUrl;
    for (const [method, p, body] of [
      ['GET', '/admin/users/user-123/balances'],
      ['POST', '/admin/users', { userId: 'zed', baseCurrency: 'EUR', totalMaxExposure: '1' }],
      ['POST', '/admin/users/user-123/ops', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '1' }],
      ['PUT', '/admin/rates', { baseCurrency: 'EUR', rates: { BTC: '1' } }],
      ['GET', '/admin/'],
      ['GET', '/admin/whatever'],
    ]) {
      for (const token of [null, TOKEN, '']) {
        const r = await api(method, p, body, { token, base });
        expectError(r, 404, 'not_found', null, `${method} ${p} on a server without admin token`);
      }
    }
  } catch (err) {
    throw plain.explain(err);
  } finally {
    await plain.stop();
  }
});

// ---------------------------------------------------------------------------------------------
// every route's answer

test('create-user: 201 with the data; repeating it answers the same; another opId is 409', ex(async () => {
  const d1 = dataText({ userId: 'carol', sequence: 1, totalMax: '1500' });
  const r = await createUser('carol', '1500');
  expectOk(r, 201, d1, 'create carol');
  expectOk(await createUser('carol', '1500'), 201, d1, 'create carol again (default opId)');
  expectOk(await createUser('carol', '999', {}), 201, d1, 'same default opId, other args: first result');
  expectError(await createUser('carol', '1500', { opId: 'second-create' }), 409, 'conflict', /carol|exist/i, 'another opId');
  // Amounts as a JSON number, with an explicit opId and a symbol-rich user id.
  const r2 = await api('POST', '/admin/users', '{"userId":"Dan.O_1:x@y-z","baseCurrency":"USDT","totalMaxExposure":2.50,"opId":"mk dan"}');
  expectOk(r2, 201, dataText({ userId: 'Dan.O_1:x@y-z', sequence: 1, base: 'USDT', totalMax: '2.5' }), 'create with a number');
  assert.deepEqual(untimed(await journal('carol')), [
    { sequence: 1, opId: 'create-user', op: 'create-user', baseCurrency: 'EUR', totalMaxExposure: '1500' },
  ]);
  assert.deepEqual(untimed(await journal('Dan.O_1:x@y-z')), [
    { sequence: 1, opId: 'mk dan', op: 'create-user', baseCurrency: 'USDT', totalMaxExposure: '2.5' },
  ]);
}));

test('deposit, withdraw, allocate, release, trade, set-limits: exact results and journal', ex(async () => {
  const u = 'erin';
  expectOk(await createUser(u, '1500'), 201, undefined, 'create');
  let d = dataText({ userId: u, sequence: 2, assets: [['BTC', '0.5', '0', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, { opId: 'd1', op: 'deposit', asset: 'BTC', amount: '0.5' }), 200, resultText(d), 'deposit string');

  // Numbers keep their exact source text: 0.25 and 1e-18 (exponent form) add exactly.
  d = dataText({ userId: u, sequence: 3, assets: [['BTC', '0.75', '0', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, '{"opId":"d2","op":"deposit","asset":"BTC","amount":0.25}'), 200, resultText(d), 'deposit number');
  d = dataText({ userId: u, sequence: 4, assets: [['BTC', '0.750000000000000001', '0', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, '{"opId":"d3","op":"deposit","asset":"BTC","amount":1e-18}'), 200, resultText(d), 'deposit 1e-18');
  // 19 fraction digits whose last is a zero are still exact.
  d = dataText({ userId: u, sequence: 5, assets: [['BTC', '1.750000000000000001', '0', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, '{"opId":"d4","op":"deposit","asset":"BTC","amount":"1.0000000000000000000"}'), 200, resultText(d), 'trailing zeros');

  d = dataText({ userId: u, sequence: 6, assets: [['BTC', '0.75', '0', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, { opId: 'w1', op: 'withdraw', asset: 'BTC', amount: '1.000000000000000001' }), 200, resultText(d), 'withdraw');
  d = dataText({ userId: u, sequence: 7, assets: [['BTC', '0.45', '0.3', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, { opId: 'a1', op: 'allocate', asset: 'BTC', amount: '0.3' }), 200, resultText(d), 'allocate');
  d = dataText({ userId: u, sequence: 8, assets: [['BTC', '0.55', '0.2', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, { opId: 'r1', op: 'release', asset: 'BTC', amount: 0.1 }), 200, resultText(d), 'release');
  d = dataText({ userId: u, sequence: 9, assets: [['BTC', '0.45', '0.2', '0', '0'], ['EUR', '6000', '0', '0', '0']], totalMax: '1500' });
  expectOk(
    await op(u, { opId: 't1', op: 'trade', legs: [{ asset: 'BTC', amount: '-0.1' }, { asset: 'EUR', amount: 6000 }] }),
    200,
    resultText(d),
    'trade',
  );
  d = dataText({ userId: u, sequence: 10, assets: [['BTC', '0.45', '0.2', '0', '1500'], ['EUR', '6000', '0', '0', '0']], totalMax: '1500' });
  expectOk(await op(u, { opId: 's1', op: 'set-limits', maxExposure: { BTC: '1500' } }), 200, resultText(d), 'set-limits per asset');
  d = dataText({ userId: u, sequence: 11, assets: [['BTC', '0.45', '0.2', '0', '1500'], ['EUR', '6000', '0', '0', '250.5']], totalMax: '3000' });
  expectOk(
    await op(u, { opId: 's2', op: 'set-limits', maxExposure: { EUR: '250.50' }, totalMaxExposure: 3000 }),
    200,
    resultText(d),
    'set-limits both',
  );
  d = dataText({ userId: u, sequence: 12, assets: [['BTC', '0.45', '0.2', '0', '1500'], ['EUR', '6000', '0', '0', '250.5']], totalMax: '0' });
  expectOk(await op(u, { opId: 's3', op: 'set-limits', totalMaxExposure: '0' }), 200, resultText(d), 'set-limits total only');

  const bal = await balances(u);
  expectOk(bal, 200, d, 'GET balances is the latest data');

  assert.deepEqual(untimed(await journal(u)), [
    { sequence: 1, opId: 'create-user', op: 'create-user', baseCurrency: 'EUR', totalMaxExposure: '1500' },
    { sequence: 2, opId: 'd1', op: 'deposit', asset: 'BTC', amount: '0.5' },
    { sequence: 3, opId: 'd2', op: 'deposit', asset: 'BTC', amount: '0.25' },
    { sequence: 4, opId: 'd3', op: 'deposit', asset: 'BTC', amount: '0.000000000000000001' },
    { sequence: 5, opId: 'd4', op: 'deposit', asset: 'BTC', amount: '1' },
    { sequence: 6, opId: 'w1', op: 'withdraw', asset: 'BTC', amount: '1.000000000000000001' },
    { sequence: 7, opId: 'a1', op: 'allocate', asset: 'BTC', amount: '0.3' },
    { sequence: 8, opId: 'r1', op: 'release', asset: 'BTC', amount: '0.1' },
    { sequence: 9, opId: 't1', op: 'trade', legs: [{ asset: 'BTC', amount: '-0.1' }, { asset: 'EUR', amount: '6000' }] },
    { sequence: 10, opId: 's1', op: 'set-limits', maxExposure: { BTC: '1500' } },
    { sequence: 11, opId: 's2', op: 'set-limits', maxExposure: { EUR: '250.5' }, totalMaxExposure: '3000' },
    { sequence: 12, opId: 's3', op: 'set-limits', totalMaxExposure: '0' },
  ]);
  // Entry members come in a fixed order: sequence, opId, op, the details, time.
  const raw = await api('GET', `/admin/users/${u}/journal?since=1&limit=1`);
  assert.match(raw.text, /^\{"entries":\[\{"sequence":2,"opId":"d1","op":"deposit","asset":"BTC","amount":"0\.5","time":"[^"]+"\}\]\}$/);
}));

test('journal since and limit', ex(async () => {
  const u = 'jules';
  expectOk(await createUser(u), 201, undefined, 'create');
  for (let i = 1; i <= 6; i++) {
    expectOk(await op(u, { opId: `j${i}`, op: 'deposit', asset: 'ETH', amount: String(i) }), 200, undefined, `deposit ${i}`);
  }
  const seqs = (es) => es.map((e) => e.sequence);
  assert.deepEqual(seqs(await journal(u)), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(seqs(await journal(u, '?since=2')), [3, 4, 5, 6, 7]);
  assert.deepEqual(seqs(await journal(u, '?since=2&limit=2')), [3, 4]);
  assert.deepEqual(seqs(await journal(u, '?limit=1')), [1]);
  assert.deepEqual(seqs(await journal(u, '?since=7')), []);
  assert.deepEqual(seqs(await journal(u, '?since=999999&limit=10000')), []);
  assert.deepEqual((await journal(u, '?since=6')).map((e) => e.opId), ['j6']);
  for (const q of ['?since=-1', '?since=abc', '?since=1.5', '?limit=0', '?limit=10001', '?limit=', '?since=99999999999999999999']) {
    expectError(await api('GET', `/admin/users/${u}/journal${q}`), 400, 'bad_request', /since|limit/, `journal${q}`);
  }
  expectError(await api('GET', '/admin/users/nobody-here/journal'), 404, 'not_found', /nobody-here/, 'journal of an unknown user');
}));

test('a journal too big for one answer comes in pages: fewer entries than limit, then since', { timeout: 60_000 }, ex(async () => {
  const u = 'pager';
  expectOk(await createUser(u), 201, undefined, 'create');
  const legs = Array.from({ length: 32 }, (_, i) => ({ asset: `ASSET${String(i).padStart(2, '0')}`, amount: '0.000000000000000001' }));
  const N = 600; // about 1.2 KB per entry: over 512 KiB in all
  for (let i = 0; i < N; i += 50) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(50, N - i) }, (_, k) => op(u, { opId: `big-${i + k}`, op: 'trade', legs })),
    );
    for (const r of batch) assert.equal(r.status, 200, r.text);
  }
  const first = await api('GET', `/admin/users/${u}/journal?limit=10000`);
  assert.equal(first.status, 200);
  const n1 = first.json.entries.length;
  assert.ok(n1 > 100 && n1 < N + 1, `a partial page (${n1} entries)`);
  assert.ok(first.text.length < 1 << 20, `the page is under 1 MiB (${first.text.length} bytes)`);
  assert.deepEqual(first.json.entries.map((e) => e.sequence), Array.from({ length: n1 }, (_, i) => i + 1));
  let seen = n1;
  while (seen < N + 1) {
    const page = await journal(u, `?since=${seen}&limit=10000`);
    assert.ok(page.length > 0, 'the next page is not empty');
    assert.equal(page[0].sequence, seen + 1, 'pages continue without a gap');
    seen = page.at(-1).sequence;
  }
  assert.equal(seen, N + 1);
  assert.deepEqual(await journal(u, `?since=${seen}`), []);
}));

test('set-rates: 200 with the normalized rates; exposure uses them', ex(async () => {
  const r = await api('PUT', '/admin/rates', '{"baseCurrency":"CHF","rates":{"BTC":"50000.50","ETH":2500,"SOL":"1e2"}}');
  expectOk(r, 200, '{"baseCurrency":"CHF","rates":{"BTC":"50000.5","ETH":"2500","SOL":"100"}}', 'rates');
  const u = 'rita';
  expectOk(await api('POST', '/admin/users', { userId: u, baseCurrency: 'CHF', totalMaxExposure: '100000' }), 201, undefined, 'create');
  expectOk(await op(u, { opId: 'l', op: 'set-limits', maxExposure: { BTC: '60000' } }), 200, undefined, 'limits');
  // -0.5 BTC at 50000.5 CHF = 25000.25 CHF of exposure.
  const d = dataText({
    userId: u,
    sequence: 3,
    assets: [['BTC', '-0.5', '0', '25000.25', '60000']],
    base: 'CHF',
    totalCur: '25000.25',
    totalMax: '100000',
  });
  expectOk(await op(u, { opId: 'w', op: 'withdraw', asset: 'BTC', amount: '0.5' }), 200, resultText(d), 'withdraw on credit');
}));

test('delete-user: 200 with deleted:true; later operations on it are 404', ex(async () => {
  const u = 'dora';
  expectOk(await createUser(u), 201, undefined, 'create');
  expectOk(await op(u, { opId: 'd', op: 'deposit', asset: 'BTC', amount: '2' }), 200, undefined, 'deposit');
  const d = dataText({ userId: u, sequence: 3, assets: [['BTC', '2', '0', '0', '0']], totalMax: '1000', deleted: true });
  expectOk(await api('DELETE', `/admin/users/${u}`, { opId: 'bye' }), 200, d, 'delete');
  expectOk(await api('DELETE', `/admin/users/${u}`, { opId: 'bye' }), 200, d, 'delete repeated');
  expectOk(await balances(u), 200, d, 'balances of a deleted user');
  expectError(await op(u, { opId: 'd2', op: 'deposit', asset: 'BTC', amount: '1' }), 404, 'not_found', null, 'op on a deleted user');
  expectError(await api('POST', `/admin/users/${u}/keys`), 404, 'not_found', null, 'key for a deleted user');
  assert.deepEqual(untimed(await journal(u)).at(-1), { sequence: 3, opId: 'bye', op: 'delete-user' });
  // Without a body the default opId is "delete-user".
  expectOk(await createUser('dora2'), 201, undefined, 'create dora2');
  const d2 = dataText({ userId: 'dora2', sequence: 2, totalMax: '1000', deleted: true });
  expectOk(await api('DELETE', '/admin/users/dora2'), 200, d2, 'delete without a body');
  assert.deepEqual(untimed(await journal('dora2')).at(-1), { sequence: 2, opId: 'delete-user', op: 'delete-user' });
  expectError(await api('DELETE', '/admin/users/nobody-at-all'), 404, 'not_found', null, 'delete unknown');
}));

test('create-key gives a key that works with @microsoft/signalr; revoke-key ends it', { timeout: 30_000 }, ex(async () => {
  const u = 'kim';
  expectOk(await createUser(u), 201, undefined, 'create');
  const r = await api('POST', `/admin/users/${u}/keys`);
  expectOk(r, 201, undefined, 'create key (no body)');
  assert.deepEqual(Object.keys(r.json), ['keyId', 'apiKey']);
  assert.match(r.json.keyId, /^[0-9a-f]{16}$/);
  assert.match(r.json.apiKey, new RegExp(`^bh_${r.json.keyId}_[A-Za-z0-9_-]{43}$`));
  assert.equal(r.headers.get('cache-control'), 'no-store');
  const r2 = await api('POST', `/admin/users/${u}/keys`, {});
  expectOk(r2, 201, undefined, 'create key ({} body)');
  assert.notEqual(r2.json.apiKey, r.json.apiKey);
  expectError(await api('POST', `/admin/users/${u}/keys`, { label: 'x' }), 400, 'bad_request', /label/, 'key body with a field');
  expectError(await api('POST', '/admin/users/no-such-user/keys'), 404, 'not_found', /no-such-user/, 'key for unknown user');

  const key = r.json.apiKey;
  const conn = server.connect({ key });
  const events = new EventQueue(conn);
  const closed = new Promise((resolve) => conn.onclose(resolve));
  await startConnection(conn);
  await withTimeout(conn.invoke('GetBalances', 'k1'), 5_000, 'GetBalances');
  const [env] = await events.next(1);
  assert.equal(env.subject, 'account.balances.snapshot');
  assert.equal(env.data.userId, u);

  const negotiate = (k) =>
    fetch(`${server.hubUrl}/negotiate?negotiateVersion=1`, { method: 'POST', headers: { authorization: `Bearer ${k}` } });
  assert.equal((await negotiate(key)).status, 200, 'negotiate before revoke');

  const rv = await api('DELETE', `/admin/keys/${r.json.keyId}`);
  expectOk(rv, 200, `{"keyId":"${r.json.keyId}","revoked":true}`, 'revoke');
  expectOk(await api('DELETE', `/admin/keys/${r.json.keyId}`), 200, `{"keyId":"${r.json.keyId}","revoked":true}`, 'revoke again');
  assert.equal((await negotiate(key)).status, 401, 'negotiate after revoke');
  await withTimeout(closed, 5_000, 'the revoked key\'s connection closes');
  const again = buildConnection(server.hubUrl, { key });
  await assert.rejects(withTimeout(again.start(), 5_000, 'start with a revoked key'));
  // The other key of the user still works.
  assert.equal((await negotiate(r2.json.apiKey)).status, 200, 'the other key still works');
  expectError(await api('DELETE', '/admin/keys/0000000000000000'), 404, 'not_found', null, 'revoke unknown key');
}));

test('a key revoked (or its user deleted) between the WebSocket upgrade and the SignalR handshake: the handshake gets a Close', { timeout: 30_000 }, ex(async () => {
  for (const how of ['revoke', 'delete']) {
    const u = `window-${how}`;
    expectOk(await createUser(u), 201, undefined, 'create');
    const k = await api('POST', `/admin/users/${u}/keys`);
    expectOk(k, 201, undefined, 'create key');
    // Upgraded with a valid key; the SignalR handshake is not sent yet.
    const ws = await RawWs.open(server, { query: `access_token=${encodeURIComponent(k.json.apiKey)}` });
    if (how === 'revoke') expectOk(await api('DELETE', `/admin/keys/${k.json.keyId}`), 200, undefined, 'revoke');
    else expectOk(await api('DELETE', `/admin/users/${u}`, { opId: 'window-delete' }), 200, undefined, 'delete user');
    ws.sendText(`{"protocol":"json","version":1}${RS}`);
    assert.equal(await ws.nextRecord(5_000, { raw: true }), '{}', 'handshake answered');
    const close = await ws.nextRecord(5_000);
    assert.deepEqual(close, { type: 7, error: how === 'revoke' ? 'API key revoked' : 'user deleted' }, `${how}: Close`);
    const frame = await ws.nextMessage(5_000); // then the WebSocket closing handshake
    assert.equal(frame.close, true, JSON.stringify(frame));
    ws.send(OP.CLOSE, closePayload(1000));
    await ws.socket.waitClosed(5_000);
  }
}));

// ---------------------------------------------------------------------------------------------
// bad input

test('bad input: 400 naming the field, 404 unknown user, nothing changed', ex(async () => {
  const u = 'bella';
  expectOk(await createUser(u), 201, undefined, 'create');
  expectOk(await op(u, { opId: 'seed', op: 'deposit', asset: 'BTC', amount: '1' }), 200, undefined, 'deposit');
  const before = (await balances(u)).text;
  const journalBefore = await journal(u);

  const big = '1234567890123456789012345678901234567890';
  const cases = [
    ['malformed JSON', '{"opId":"x","op":"deposit",', 400, /JSON/],
    ['trailing garbage', '{"opId":"x","op":"deposit","asset":"BTC","amount":"1"} x', 400, /JSON/],
    ['not an object', '[1,2]', 400, /object/],
    ['a string body', '"deposit"', 400, /object/],
    ['empty body', '', 400, /object/],
    ['missing op', { opId: 'x', asset: 'BTC', amount: '1' }, 400, /'op'/],
    ['missing opId', { op: 'deposit', asset: 'BTC', amount: '1' }, 400, /'opId'/],
    ['missing asset', { opId: 'x', op: 'deposit', amount: '1' }, 400, /'asset'/],
    ['missing amount', { opId: 'x', op: 'deposit', asset: 'BTC' }, 400, /'amount'/],
    ['negative amount', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '-1' }, 400, /'amount'/],
    ['negative number', '{"opId":"x","op":"withdraw","asset":"BTC","amount":-0.5}', 400, /'amount'/],
    ['zero amount', { opId: 'x', op: 'allocate', asset: 'BTC', amount: '0' }, 400, /'amount'/],
    ['zero number', '{"opId":"x","op":"release","asset":"BTC","amount":0.000}', 400, /'amount'/],
    ['40-digit number', `{"opId":"x","op":"deposit","asset":"BTC","amount":${big}}`, 400, /amount.*out of range/],
    ['40-digit string', { opId: 'x', op: 'deposit', asset: 'BTC', amount: big }, 400, /amount.*out of range/],
    ['19 fraction digits', '{"opId":"x","op":"deposit","asset":"BTC","amount":0.1234567890123456789}', 400, /'amount'/],
    ['19 fraction digits string', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '1.0000000000000000001' }, 400, /'amount'/],
    ['amount not a number', { opId: 'x', op: 'deposit', asset: 'BTC', amount: 'one' }, 400, /'amount'/],
    ['amount with blanks', { opId: 'x', op: 'deposit', asset: 'BTC', amount: ' 1' }, 400, /'amount'/],
    ['amount with plus', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '+1' }, 400, /'amount'/],
    ['amount true', { opId: 'x', op: 'deposit', asset: 'BTC', amount: true }, 400, /'amount'/],
    ['amount null', { opId: 'x', op: 'deposit', asset: 'BTC', amount: null }, 400, /'amount'/],
    ['amount object', { opId: 'x', op: 'deposit', asset: 'BTC', amount: { v: 1 } }, 400, /'amount'/],
    ['asset number', { opId: 'x', op: 'deposit', asset: 5, amount: '1' }, 400, /'asset'/],
    ['asset lower case', { opId: 'x', op: 'deposit', asset: 'btc', amount: '1' }, 400, /'asset'/],
    ['asset too long', { opId: 'x', op: 'deposit', asset: 'ABCDEFGHIJKLMNOP', amount: '1' }, 400, /'asset'/],
    ['asset empty', { opId: 'x', op: 'deposit', asset: '', amount: '1' }, 400, /'asset'/],
    ['opId number', { opId: 7, op: 'deposit', asset: 'BTC', amount: '1' }, 400, /'opId'/],
    ['opId empty', { opId: '', op: 'deposit', asset: 'BTC', amount: '1' }, 400, /'opId'/],
    ['opId too long', { opId: 'o'.repeat(65), op: 'deposit', asset: 'BTC', amount: '1' }, 400, /'opId'/],
    ['opId control char', { opId: 'a\nb', op: 'deposit', asset: 'BTC', amount: '1' }, 400, /'opId'/],
    ['op number', { opId: 'x', op: 1, asset: 'BTC', amount: '1' }, 400, /'op'/],
    ['unknown op', { opId: 'x', op: 'transfer', asset: 'BTC', amount: '1' }, 400, /unknown op 'transfer'/],
    ['create-user as an op', { opId: 'x', op: 'create-user' }, 400, /unknown op/],
    ['unknown field', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '1', memo: 'hi' }, 400, /'memo'/],
    ['duplicate field', '{"opId":"x","op":"deposit","asset":"BTC","amount":"1","amount":"2"}', 400, /'amount'/],
    ['legs on a deposit', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '1', legs: [] }, 400, /'legs'/],
    ['trade without legs', { opId: 'x', op: 'trade' }, 400, /'legs'/],
    ['trade legs not an array', { opId: 'x', op: 'trade', legs: 'BTC' }, 400, /'legs'/],
    ['trade empty legs', { opId: 'x', op: 'trade', legs: [] }, 400, /'legs'/],
    ['trade 33 legs', { opId: 'x', op: 'trade', legs: Array.from({ length: 33 }, (_, i) => ({ asset: `A${i}`, amount: '1' })) }, 400, /'legs'/],
    ['trade leg not an object', { opId: 'x', op: 'trade', legs: [1] }, 400, /legs\[0\]/],
    ['trade leg zero', { opId: 'x', op: 'trade', legs: [{ asset: 'BTC', amount: '1' }, { asset: 'EUR', amount: '0' }] }, 400, /legs\[1\]\.amount/],
    ['trade leg missing asset', { opId: 'x', op: 'trade', legs: [{ amount: '1' }] }, 400, /legs\[0\]\.asset/],
    ['trade leg extra field', { opId: 'x', op: 'trade', legs: [{ asset: 'BTC', amount: '1', side: 'buy' }] }, 400, /'side'/],
    ['trade same asset twice', { opId: 'x', op: 'trade', legs: [{ asset: 'BTC', amount: '1' }, { asset: 'BTC', amount: '-1' }] }, 400, /BTC/],
    ['trade 40-digit leg', `{"opId":"x","op":"trade","legs":[{"asset":"BTC","amount":-${big}}]}`, 400, /legs\[0\]\.amount.*out of range/],
    ['set-limits empty', { opId: 'x', op: 'set-limits' }, 400, /maxExposure|totalMaxExposure/],
    ['set-limits empty object', { opId: 'x', op: 'set-limits', maxExposure: {} }, 400, /maxExposure|totalMaxExposure/],
    ['set-limits negative', { opId: 'x', op: 'set-limits', maxExposure: { BTC: '-1' } }, 400, /maxExposure\.BTC/],
    ['set-limits bad asset', { opId: 'x', op: 'set-limits', maxExposure: { 'b t c': '1' } }, 400, /maxExposure/],
    ['set-limits array', { opId: 'x', op: 'set-limits', maxExposure: ['BTC'] }, 400, /'maxExposure'/],
    ['set-limits negative total', { opId: 'x', op: 'set-limits', totalMaxExposure: '-5' }, 400, /'totalMaxExposure'/],
    ['set-limits with asset', { opId: 'x', op: 'set-limits', asset: 'BTC', totalMaxExposure: '5' }, 400, /'asset'/],
  ];
  for (const [what, body, status, re] of cases) {
    expectError(await op(u, body), status, 'bad_request', re, what);
  }

  // Unknown users and malformed path ids.
  expectError(await op('nobody', { opId: 'x', op: 'deposit', asset: 'BTC', amount: '1' }), 404, 'not_found', /nobody/, 'unknown user');
  expectError(await balances('nobody'), 404, 'not_found', /nobody/, 'balances of unknown user');
  expectError(await api('GET', '/admin/users/bad%20user/balances'), 400, 'bad_request', /userId/, 'user id with a blank');
  expectError(await api('GET', `/admin/users/${'u'.repeat(65)}/balances`), 400, 'bad_request', /userId/, 'user id too long');
  expectError(await api('GET', '/admin/users/%ZZ/balances'), 400, 'bad_request', /escape/, 'bad escape');
  expectError(await api('GET', '/admin/users/a%00b/balances'), 400, 'bad_request', /escape/, 'encoded NUL');
  // Percent-encoded ids are decoded: %62ella is bella.
  expectOk(await api('GET', '/admin/users/%62ella/balances'), 200, before, 'encoded user id');

  // create-user and rates validation.
  const cu = [
    ['missing userId', { baseCurrency: 'EUR', totalMaxExposure: '1' }, /'userId'/],
    ['bad userId', { userId: 'a b', baseCurrency: 'EUR', totalMaxExposure: '1' }, /'userId'/],
    ['userId number', { userId: 5, baseCurrency: 'EUR', totalMaxExposure: '1' }, /'userId'/],
    ['missing baseCurrency', { userId: 'nc', totalMaxExposure: '1' }, /'baseCurrency'/],
    ['bad baseCurrency', { userId: 'nc', baseCurrency: 'eur', totalMaxExposure: '1' }, /'baseCurrency'/],
    ['missing totalMaxExposure', { userId: 'nc', baseCurrency: 'EUR' }, /'totalMaxExposure'/],
    ['negative totalMaxExposure', { userId: 'nc', baseCurrency: 'EUR', totalMaxExposure: '-1' }, /'totalMaxExposure'/],
    ['unknown field', { userId: 'nc', baseCurrency: 'EUR', totalMaxExposure: '1', deleted: false }, /'deleted'/],
  ];
  for (const [what, body, re] of cu) {
    expectError(await api('POST', '/admin/users', body), 400, 'bad_request', re, `create-user: ${what}`);
  }
  expectError(await balances('nc'), 404, 'not_found', null, 'no user was created');
  const rates = [
    ['missing rates', { baseCurrency: 'EUR' }, /'rates'/],
    ['empty rates', { baseCurrency: 'EUR', rates: {} }, /'rates'/],
    ['zero rate', { baseCurrency: 'EUR', rates: { BTC: '0' } }, /rates\.BTC/],
    ['negative rate', { baseCurrency: 'EUR', rates: { BTC: -3 } }, /rates\.BTC/],
    ['bad asset', { baseCurrency: 'EUR', rates: { btc: '3' } }, /rates\.btc/],
    ['own currency', { baseCurrency: 'EUR', rates: { EUR: '2' } }, /rates\.EUR/],
    ['missing currency', { rates: { BTC: '3' } }, /'baseCurrency'/],
    ['unknown field', { baseCurrency: 'EUR', rates: { BTC: '3' }, when: 'now' }, /'when'/],
  ];
  for (const [what, body, re] of rates) {
    expectError(await api('PUT', '/admin/rates', body), 400, 'bad_request', re, `rates: ${what}`);
  }

  // Routing: unknown endpoints are 404, known ones with the wrong method 405.
  expectError(await api('GET', '/admin/nope'), 404, 'not_found', null, 'unknown endpoint');
  expectError(await api('GET', `/admin/users/${u}/nope`), 404, 'not_found', null, 'unknown user endpoint');
  expectError(await api('GET', `/admin/users/${u}/balances/extra`), 404, 'not_found', null, 'extra segment');
  expectError(await api('GET', '/admin/users/'), 404, 'not_found', null, 'empty user id');
  for (const [method, p] of [
    ['GET', '/admin/users'],
    ['PUT', `/admin/users/${u}/ops`],
    ['POST', `/admin/users/${u}/balances`],
    ['DELETE', `/admin/users/${u}/journal`],
    ['GET', '/admin/rates'],
    ['GET', `/admin/users/${u}`],
    ['POST', '/admin/keys/0123456789abcdef'],
  ]) {
    const r = await api(method, p);
    assert.equal(r.status, 405, `${method} ${p}: ${r.text}`);
    assert.equal(r.json.code, 'method_not_allowed');
  }

  assert.equal((await balances(u)).text, before, 'balances unchanged by the bad requests');
  assert.deepEqual(await journal(u), journalBefore, 'journal unchanged by the bad requests');
}));

test('limits and funds: 422 with a reason, nothing changed', ex(async () => {
  const u = 'lim';
  expectOk(await createUser(u, '1000'), 201, undefined, 'create');
  expectOk(await api('PUT', '/admin/rates', { baseCurrency: 'EUR', rates: { BTC: '60000', ETH: '3000' } }), 200, undefined, 'rates');
  expectOk(await op(u, { opId: 'l1', op: 'set-limits', maxExposure: { BTC: '500', ETH: '0' } }), 200, undefined, 'limits');
  expectOk(await op(u, { opId: 'd1', op: 'deposit', asset: 'BTC', amount: '0.001' }), 200, undefined, 'deposit');
  // Credit within the limits: -0.005 BTC at 60000 = 300 EUR of exposure. ETH is listed since a
  // limit was set on it.
  const d = dataText({
    userId: u,
    sequence: 4,
    assets: [['BTC', '-0.005', '0', '300', '500'], ['ETH', '0', '0', '0', '0']],
    totalCur: '300',
    totalMax: '1000',
  });
  expectOk(await op(u, { opId: 'w1', op: 'withdraw', asset: 'BTC', amount: '0.006' }), 200, resultText(d), 'withdraw on credit');
  const snapshot = async () => ({ bal: (await balances(u)).text, journal: await journal(u) });
  const before = await snapshot();

  const rejections = [
    ['asset limit: 540 > 500', { opId: 'w2', op: 'withdraw', asset: 'BTC', amount: '0.004' }],
    ['asset limit through allocate', { opId: 'a1', op: 'allocate', asset: 'BTC', amount: '1' }],
    ['ETH max 0', { opId: 'w3', op: 'withdraw', asset: 'ETH', amount: '0.000000000000000001' }],
    ['unknown asset release', { opId: 'r1', op: 'release', asset: 'DOGE', amount: '1' }],
    ['release more than allocated', { opId: 'r2', op: 'release', asset: 'BTC', amount: '0.001' }],
    ['trade: one leg breaks a limit', { opId: 't1', op: 'trade', legs: [{ asset: 'BTC', amount: '0.005' }, { asset: 'ETH', amount: '-1' }] }],
    ['trade: no rate for the asset', { opId: 't2', op: 'trade', legs: [{ asset: 'BTC', amount: '0.005' }, { asset: 'XRP', amount: '-1' }] }],
  ];
  for (const [what, body] of rejections) {
    const r = await op(u, body);
    expectError(r, 422, 'rejected', null, what);
    assert.deepEqual(await snapshot(), before, `${what}: nothing changed`);
  }
  // The total limit: raise the asset limit, then -0.017 BTC = 1020 > 1000.
  expectOk(await op(u, { opId: 'l2', op: 'set-limits', maxExposure: { BTC: '5000' } }), 200, undefined, 'raise BTC limit');
  const before2 = await snapshot();
  const r = await op(u, { opId: 'w4', op: 'withdraw', asset: 'BTC', amount: '0.012' });
  expectError(r, 422, 'rejected', /total|exposure|limit/i, 'total limit');
  assert.deepEqual(await snapshot(), before2, 'total limit: nothing changed');
  // A limit may be lowered below the current exposure (that changes no balance); from then on
  // more credit is rejected.
  expectOk(await op(u, { opId: 'l3', op: 'set-limits', totalMaxExposure: '299' }), 200, undefined, 'limit below exposure');
  const before3 = await snapshot();
  expectError(await op(u, { opId: 'w5', op: 'withdraw', asset: 'BTC', amount: '0.000001' }), 422, 'rejected', null, 'over a lowered limit');
  assert.deepEqual(await snapshot(), before3, 'over a lowered limit: nothing changed');
  // A rejected opId was not journaled: it can be used again for a valid change.
  expectOk(await op(u, { opId: 'w4', op: 'deposit', asset: 'BTC', amount: '1' }), 200, undefined, 'reuse a rejected opId');
}));

// ---------------------------------------------------------------------------------------------
// idempotency

test('the same opId twice answers the identical body and is journaled once', ex(async () => {
  const u = 'ida';
  expectOk(await createUser(u), 201, undefined, 'create');
  const first = await op(u, { opId: 'same', op: 'deposit', asset: 'BTC', amount: '1.5' });
  expectOk(first, 200, undefined, 'first');
  const again = await op(u, { opId: 'same', op: 'deposit', asset: 'BTC', amount: '1.5' });
  expectOk(again, 200, first.text, 'repeat answers the identical body');
  // After another change, the repeat still answers the first result (not the latest data).
  expectOk(await op(u, { opId: 'other', op: 'deposit', asset: 'BTC', amount: '1' }), 200, undefined, 'other');
  expectOk(await op(u, { opId: 'same', op: 'deposit', asset: 'BTC', amount: '1.5' }), 200, first.text, 'repeat after a change');
  expectOk(await op(u, { opId: 'same', op: 'withdraw', asset: 'BTC', amount: '9' }), 200, first.text, 'repeat with other args');
  const entries = await journal(u);
  assert.deepEqual(entries.map((e) => e.opId), ['create-user', 'same', 'other']);
  assert.equal(JSON.parse((await balances(u)).text).assets[0].available, 2.5);
}));

test('the same opId sent 20 times concurrently: identical answers, applied once', ex(async () => {
  const u = 'conc';
  expectOk(await createUser(u), 201, undefined, 'create');
  const body = { opId: 'burst', op: 'deposit', asset: 'ETH', amount: '0.1' };
  const answers = await Promise.all(Array.from({ length: 20 }, () => op(u, body)));
  for (const a of answers) expectOk(a, 200, answers[0].text, 'concurrent answer');
  const d = dataText({ userId: u, sequence: 2, assets: [['ETH', '0.1', '0', '0', '0']], totalMax: '1000' });
  assert.equal(answers[0].text, resultText(d));
  assert.deepEqual((await journal(u)).map((e) => e.opId), ['create-user', 'burst']);
  expectOk(await balances(u), 200, d, 'balance changed once');

  // Concurrent distinct opIds all apply, with consecutive sequences.
  const many = await Promise.all(
    Array.from({ length: 20 }, (_, i) => op(u, { opId: `m${i}`, op: 'deposit', asset: 'ETH', amount: '1' })),
  );
  const seqs = many.map((a) => (assert.equal(a.status, 200, a.text), a.json.sequence)).sort((a, b) => a - b);
  assert.deepEqual(seqs, Array.from({ length: 20 }, (_, i) => i + 3));
  assert.equal((await balances(u)).json.assets[0].available, 20.1);

  // Concurrent creates of one new user with the default opId: one user, identical answers.
  const creates = await Promise.all(Array.from({ length: 10 }, () => createUser('conc2', '5')));
  for (const c of creates) expectOk(c, 201, dataText({ userId: 'conc2', sequence: 1, totalMax: '5' }), 'concurrent create');
  assert.equal((await journal('conc2')).length, 1);
}));
