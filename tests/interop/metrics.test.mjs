// /metrics, /healthz and /readyz through the real server. The exposition is read back with a
// strict line-by-line parser (HELP and TYPE once per contiguous family, quoted labels, numeric
// values, cumulative histogram buckets), and known activity moves the counters by exactly the
// expected amounts: N GetBalances over WebSockets/JSON, M over Long Polling/MessagePack, a bad
// key, a deposit through the admin API. Neither an API key nor the admin token ever appears in
// it. Readiness: while another process holds SQLite's write lock (`sqlite3`, BEGIN EXCLUSIVE),
// /readyz answers 503 and bh_ready is 0, yet GetBalances still answers from memory; after the
// lock is released, /readyz is 200 again and a deposit commits.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { DEMO_DATA, EventQueue, HUB_PATH, explained, makeTempDir, signalR, startServer, withTimeout } from './harness.mjs';

const require = createRequire(import.meta.url);
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const T = signalR.HttpTransportType;
const USER = 'user-123';
const METRICS_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

let dir;
let token;
let server;
const ex = (fn) => explained(() => server, fn);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  dir = makeTempDir();
  token = 'metrics-admin-' + randomBytes(24).toString('hex');
  const file = path.join(dir, 'admin-token');
  writeFileSync(file, token + '\n', { mode: 0o600 });
  server = await startServer({ dataDir: dir, ownDataDir: true, extraArgs: ['--admin-token-file', file], env: { BALANCEHUB_ADMIN_TOKEN: undefined } });
  assert.ok(server.adminUrl, 'the harness exposes the operations listener (server.adminUrl)');
});

after(async () => {
  if (server) await server.stop();
});

// ---------------------------------------------------------------------------------------------
// helpers

// One request on a fresh connection that closes afterwards (no pooled socket stays open, so the
// TCP connection gauge is not disturbed by the test's own client).
function request(base, method, target, { headers = {}, body } = {}) {
  const u = new URL(target, base);
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.request(
        { host: u.hostname, port: u.port, path: u.pathname + u.search, method, agent: false, headers: { connection: 'close', ...headers } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
        },
      );
      req.on('error', reject);
      req.end(body);
    }),
    10_000,
    `${method} ${target}`,
  );
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/;

function parseValue(s, where) {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  assert.match(s, /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/, `${where}: value ${JSON.stringify(s)}`);
  return Number(s);
}

// Parses (and checks) the text exposition format 0.0.4. Returns {series: Map('name{labels}' ->
// number), families: Map(name -> {type, help})}.
function parseExposition(text) {
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  const lines = text.slice(0, -1).split('\n');
  const families = new Map();
  const series = new Map();
  let cur = null;
  let lastBucket = -1;
  lines.forEach((line, i) => {
    const where = `line ${i + 1} ${JSON.stringify(line)}`;
    assert.notEqual(line, '', `${where}: no blank lines`);
    const c = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (c) {
      const [, kind, name, rest] = c;
      assert.match(name, NAME, where);
      let f = families.get(name);
      if (!f) {
        f = { name, help: null, type: null, samples: 0 };
        families.set(name, f);
        cur = f;
        lastBucket = -1;
      }
      assert.equal(f, cur, `${where}: HELP/TYPE of ${name} away from its family's group`);
      assert.equal(f.samples, 0, `${where}: HELP/TYPE before the samples`);
      if (kind === 'HELP') {
        assert.equal(f.help, null, `${where}: HELP once`);
        assert.ok(rest.length > 0, `${where}: help text`);
        f.help = rest;
      } else {
        assert.equal(f.type, null, `${where}: TYPE once`);
        assert.ok(['counter', 'gauge', 'histogram'].includes(rest), `${where}: type`);
        f.type = rest;
      }
      return;
    }
    assert.ok(!line.startsWith('#'), `${where}: only HELP and TYPE comments`);
    const m = /^([^{ ]+)(\{[^}]*\})? (\S+)$/.exec(line);
    assert.ok(m, `${where}: sample syntax`);
    const [, name, labelText = '', valueText] = m;
    assert.match(name, NAME, where);
    const labels = {};
    if (labelText) {
      let rest = labelText.slice(1, -1);
      assert.ok(rest.length > 0, `${where}: empty braces`);
      while (rest.length) {
        const l = LABEL.exec(rest);
        assert.ok(l, `${where}: label syntax at ${JSON.stringify(rest)}`);
        assert.ok(!(l[1] in labels), `${where}: label ${l[1]} twice`);
        labels[l[1]] = l[2];
        rest = rest.slice(l[0].length);
      }
    }
    const v = parseValue(valueText, where);
    assert.ok(cur && cur.help !== null && cur.type !== null, `${where}: sample after its HELP and TYPE`);
    const suffix = name.startsWith(cur.name) ? name.slice(cur.name.length) : null;
    if (cur.type === 'histogram') {
      assert.ok(['_bucket', '_sum', '_count'].includes(suffix), `${where}: histogram sample of ${cur.name}`);
      if (suffix === '_bucket') {
        assert.ok('le' in labels, `${where}: bucket with le`);
        assert.ok(v >= lastBucket, `${where}: buckets are cumulative`);
        lastBucket = v;
      }
      if (suffix === '_count') assert.equal(v, lastBucket, `${where}: _count equals the +Inf bucket`);
    } else {
      assert.equal(suffix, '', `${where}: sample of family ${cur.name}`);
      if (cur.type === 'counter') {
        assert.ok(name.endsWith('_total'), `${where}: counters end in _total`);
        assert.ok(Number.isInteger(v) && v >= 0, `${where}: a counter is a count`);
      }
    }
    const key = name + labelText;
    assert.ok(!series.has(key), `${where}: series twice`);
    series.set(key, v);
    cur.samples++;
  });
  for (const f of families.values()) assert.ok(f.help && f.type && f.samples > 0, `family ${f.name} complete`);
  return { series, families };
}

// GET /metrics on the operations listener: checked, parsed, and free of secrets.
async function scrape() {
  const r = await request(server.adminUrl, 'GET', '/metrics');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['content-type'], METRICS_TYPE);
  for (const secret of [server.apiKey, token, BAD_KEY]) assert.ok(!r.text.includes(secret), 'no key or token in /metrics');
  assert.ok(!r.text.includes(USER), 'no user id in /metrics');
  const parsed = parseExposition(r.text);
  parsed.text = r.text;
  parsed.get = (key) => {
    assert.ok(parsed.series.has(key), `series ${key} in /metrics`);
    return parsed.series.get(key);
  };
  return parsed;
}

const BAD_KEY = 'bh_0000000000000000_' + 'A'.repeat(43);

async function adminDeposit(opId, amount = '1') {
  const r = await request(server.adminUrl, 'POST', `/admin/users/${USER}/ops`, {
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ opId, op: 'deposit', asset: 'BTC', amount }),
  });
  return { status: r.status, text: r.text, json: r.status === 200 ? JSON.parse(r.text) : undefined };
}

function build({ transport, msgpack = false }) {
  const b = new signalR.HubConnectionBuilder()
    .withUrl(server.hubUrl, { transport, accessTokenFactory: () => server.apiKey })
    .configureLogging(signalR.LogLevel.None);
  if (msgpack) b.withHubProtocol(new MessagePackHubProtocol());
  return b.build();
}

// GetBalances and its snapshot (exactly one event before the completion); returns the data.
async function getBalances(conn, events, clientId) {
  assert.equal(await withTimeout(conn.invoke('GetBalances', clientId), 5_000, 'GetBalances'), null);
  const got = events.drain();
  assert.equal(got.length, 1, `one snapshot: ${JSON.stringify(got)}`);
  const { data, ...envelope } = got[0];
  assert.deepEqual(envelope, {
    channel: 'executionEvents',
    topic: 'account.balances',
    subject: 'account.balances.snapshot',
    type: 'message',
    clientId,
  });
  assert.equal(data.userId, USER);
  assert.equal(typeof data.sequence, 'number');
  return data;
}

// Polls fn until it returns a value other than undefined, at most ms.
async function until(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(100);
  }
}

const S = {
  wsJson: 'bh_hub_connections{transport="websockets",protocol="json"}',
  lpMsgpack: 'bh_hub_connections{transport="longpolling",protocol="messagepack"}',
  invokeOk: 'bh_hub_invocations_total{method="GetBalances",outcome="ok"}',
  invokeErr: 'bh_hub_invocations_total{method="GetBalances",outcome="error"}',
  snapshot: 'bh_hub_events_total{subject="account.balances.snapshot"}',
  update: 'bh_hub_events_total{subject="account.balances.update"}',
  authFail: 'bh_auth_failures_total',
  opsOk: 'bh_ledger_ops_total{outcome="ok"}',
  opsRejected: 'bh_ledger_ops_total{outcome="rejected"}',
  opsFailed: 'bh_ledger_ops_total{outcome="failed"}',
  commits: 'bh_ledger_commits_total',
  commitCount: 'bh_ledger_commit_seconds_count',
  tcpOpen: 'bh_tcp_connections',
  tcpAccepted: 'bh_tcp_connections_accepted_total',
  httpRequests: 'bh_http_requests_total',
  bytesIn: 'bh_bytes_received_total',
  bytesOut: 'bh_bytes_sent_total',
  storeErrors: 'bh_store_errors_total',
  ready: 'bh_ready',
};

// ---------------------------------------------------------------------------------------------
// the endpoints

test('/metrics: exposition format 0.0.4, every family documented, only on the operations listener', ex(async () => {
  const m = await scrape();
  const want = {
    bh_tcp_connections_accepted_total: 'counter',
    bh_tcp_connections: 'gauge',
    bh_bytes_received_total: 'counter',
    bh_bytes_sent_total: 'counter',
    bh_tls_handshake_failures_total: 'counter',
    bh_connection_migrations_total: 'counter',
    bh_http_requests_total: 'counter',
    bh_hub_connections: 'gauge',
    bh_hub_invocations_total: 'counter',
    bh_hub_events_total: 'counter',
    bh_auth_failures_total: 'counter',
    bh_limit_rejections_total: 'counter',
    bh_ledger_ops_total: 'counter',
    bh_ledger_commits_total: 'counter',
    bh_store_errors_total: 'counter',
    bh_ledger_commit_seconds: 'histogram',
    bh_process_start_time_seconds: 'gauge',
    bh_ready: 'gauge',
  };
  assert.deepEqual(Object.fromEntries([...m.families.values()].map((f) => [f.name, f.type])), want);
  // Every transport x protocol, every limit, the histogram's fixed buckets.
  for (const [t, p] of [['websockets', 'json'], ['websockets', 'messagepack'], ['serversentevents', 'json'], ['longpolling', 'json'], ['longpolling', 'messagepack']])
    assert.ok(m.series.has(`bh_hub_connections{transport="${t}",protocol="${p}"}`), `${t}/${p}`);
  for (const l of ['connections_per_key', 'connections_total', 'rate', 'auth_throttle', 'output', 'request_size', 'timeout'])
    assert.ok(m.series.has(`bh_limit_rejections_total{limit="${l}"}`), l);
  const les = [...m.series.keys()].filter((k) => k.startsWith('bh_ledger_commit_seconds_bucket')).map((k) => /le="([^"]+)"/.exec(k)[1]);
  assert.deepEqual(les, ['0.0001', '0.00025', '0.0005', '0.001', '0.0025', '0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1', '+Inf']);
  assert.equal(m.get(S.ready), 1);
  const start = m.get('bh_process_start_time_seconds');
  assert.ok(start > Date.now() / 1000 - 600 && start <= Date.now() / 1000 + 1, `start time ${start}`);
  // The demo set-up committed: the histogram has counted it.
  assert.ok(m.get(S.commits) >= 1 && m.get(S.commitCount) === m.get(S.commits), 'one histogram sample per commit');

  const head = await request(server.adminUrl, 'HEAD', '/metrics');
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-type'], METRICS_TYPE);
  assert.equal(head.text, '');
  assert.ok(Number(head.headers['content-length']) > 1000, 'HEAD: the GET length');
  const post = await request(server.adminUrl, 'POST', '/metrics');
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD');
  assert.equal((await request(server.url, 'GET', '/metrics')).status, 404, 'no /metrics on the main listener');
}));

test('/healthz and /readyz on both listeners; other methods 405 with Allow', ex(async () => {
  for (const base of [server.url, server.adminUrl]) {
    for (const [p, body] of [['/healthz', 'ok'], ['/readyz', 'ready']]) {
      const r = await request(base, 'GET', p);
      assert.equal(r.status, 200, `${base}${p}`);
      assert.equal(r.text, body);
      assert.match(r.headers['content-type'], /^text\/plain/);
      const h = await request(base, 'HEAD', p);
      assert.equal(h.status, 200);
      assert.equal(h.text, '');
      for (const method of ['POST', 'PUT', 'DELETE']) {
        const x = await request(base, method, p);
        assert.equal(x.status, 405, `${method} ${p}`);
        assert.equal(x.headers.allow, 'GET, HEAD');
      }
    }
  }
}));

// ---------------------------------------------------------------------------------------------
// counters move by exactly what happened

test('known activity moves the counters by exactly the expected amounts', { timeout: 60_000 }, ex(async () => {
  const N = 3;
  const M = 2;
  // Once the earlier tests' sockets are gone, the only open TCP connection is the scrape's own.
  const before = await until(async () => {
    const m = await scrape();
    return m.get(S.tcpOpen) === 1 ? m : undefined;
  }, 5_000, 'no TCP connection open but the scrape');

  const ws = build({ transport: T.WebSockets });
  const lp = build({ transport: T.LongPolling, msgpack: true });
  const wsEvents = new EventQueue(ws);
  const lpEvents = new EventQueue(lp);
  await withTimeout(ws.start(), 10_000, 'WebSockets start');
  await withTimeout(lp.start(), 10_000, 'Long Polling start');
  const first = await getBalances(ws, wsEvents, 'ws-0');
  assert.deepEqual(first, { ...DEMO_DATA, sequence: first.sequence }, 'the seeded demo balances');
  const seq = first.sequence;
  for (let i = 1; i < N; i++) assert.equal((await getBalances(ws, wsEvents, `ws-${i}`)).sequence, seq);
  for (let i = 0; i < M; i++) assert.equal((await getBalances(lp, lpEvents, `lp-${i}`)).sequence, seq);

  const during = await scrape();
  assert.equal(during.get(S.wsJson) - before.get(S.wsJson), 1, 'one WebSockets/JSON connection open');
  assert.equal(during.get(S.lpMsgpack) - before.get(S.lpMsgpack), 1, 'one Long Polling/MessagePack connection open');
  assert.equal(during.get(S.invokeOk) - before.get(S.invokeOk), N + M);
  assert.equal(during.get(S.snapshot) - before.get(S.snapshot), N + M);
  assert.ok(during.get(S.tcpOpen) >= before.get(S.tcpOpen) + 1, 'the WebSocket is an open TCP connection');

  // A bad key: refused at negotiate, counted once.
  const bad = await request(server.url, 'POST', `${HUB_PATH}/negotiate?negotiateVersion=1`, { headers: { authorization: `Bearer ${BAD_KEY}` } });
  assert.equal(bad.status, 401, bad.text);

  // A deposit through the admin API: one op, one commit, one update to each connection.
  const d = await adminDeposit(`metrics-d-${process.pid}`, '0.5');
  assert.equal(d.status, 200, d.text);
  assert.equal(d.json.sequence, seq + 1);
  const [u1] = await wsEvents.next(1, 5_000);
  const [u2] = await lpEvents.next(1, 5_000);
  assert.equal(u1.subject, 'account.balances.update');
  assert.equal(u2.subject, 'account.balances.update');
  // A rejected op: withdrawing more than the limits allow.
  const rej = await request(server.adminUrl, 'POST', `/admin/users/${USER}/ops`, {
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ opId: `metrics-w-${process.pid}`, op: 'withdraw', asset: 'BTC', amount: '1000000000' }),
  });
  assert.ok(rej.status >= 400 && rej.status < 500, `rejected withdraw: ${rej.status} ${rej.text}`);

  await withTimeout(ws.stop(), 5_000, 'WebSockets stop');
  await withTimeout(lp.stop(), 5_000, 'Long Polling stop');

  // The hub gauges return to their old values once the server has seen the connections go.
  const afterAll = await until(
    async () => {
      const m = await scrape();
      return m.get(S.wsJson) === before.get(S.wsJson) && m.get(S.lpMsgpack) === before.get(S.lpMsgpack) ? m : undefined;
    },
    5_000,
    'hub connection gauges back to their values before',
  );
  const delta = (k) => afterAll.get(k) - before.get(k);
  assert.equal(delta(S.invokeOk), N + M, 'GetBalances ok');
  assert.equal(delta(S.invokeErr), 0, 'GetBalances error');
  assert.equal(delta(S.snapshot), N + M, 'snapshots pushed');
  assert.equal(delta(S.update), 2, 'one update to each connection');
  assert.equal(delta(S.authFail), 1, 'the bad key');
  assert.equal(delta(S.opsOk), 1, 'the deposit');
  assert.equal(delta(S.opsRejected), 1, 'the withdraw');
  assert.equal(delta(S.opsFailed), 0);
  assert.equal(delta(S.commits), 1, 'one group commit');
  assert.equal(delta(S.commitCount), 1, 'one commit latency sample');
  assert.equal(delta(S.storeErrors), 0);
  // Transport-level counters only grow; each scrape is at least one request and one connection.
  assert.ok(delta(S.tcpAccepted) >= 6, `accepted ${delta(S.tcpAccepted)}`);
  assert.ok(delta(S.httpRequests) >= 8, `requests ${delta(S.httpRequests)}`);
  assert.ok(delta(S.bytesIn) > 0 && delta(S.bytesOut) > 0, 'bytes both ways');
  // Every connection of the test is closed (the SignalR client's pooled keep-alive sockets
  // too, once stopped): the TCP gauge is back to the scrape's own connection.
  assert.ok(afterAll.get(S.tcpOpen) >= 1, 'tcp gauge');
  await until(
    async () => ((await scrape()).get(S.tcpOpen) === 1 ? true : undefined),
    15_000,
    'TCP connection gauge back to its value before',
  );
}));

// ---------------------------------------------------------------------------------------------
// readiness follows the store

// Starts `sqlite3 DB` holding the write lock (BEGIN EXCLUSIVE, kept open through its stdin);
// resolves once the lock is held. release() rolls back and waits for the process to exit.
async function lockDatabase(db) {
  const proc = spawn('sqlite3', ['-batch', db], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  proc.on('error', (e) => (err += `spawn sqlite3: ${e.message} (install the Debian package sqlite3: scripts/deps)`));
  proc.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  proc.stderr.setEncoding('utf8').on('data', (d) => (err += d));
  // The server's probe holds the lock for an instant twice a second: wait for it, don't fail.
  proc.stdin.write(".timeout 5000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n");
  try {
    await until(
      () => {
        if (err) throw new Error(`sqlite3: ${err}`);
        return out.includes('locked') ? true : undefined;
      },
      8_000,
      'sqlite3 holding the lock',
    );
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  return {
    release: async () => {
      proc.stdin.end('ROLLBACK;\n.quit\n');
      const code = await withTimeout(exited, 5_000, 'sqlite3 exit');
      assert.equal(code, 0, `sqlite3: ${err}`);
    },
    kill: () => proc.kill('SIGKILL'),
  };
}

async function readyz() {
  const r = await request(server.adminUrl, 'GET', '/readyz');
  return r;
}

test('/readyz: 503 while another process holds the database lock, GetBalances still answers, 200 again after', { timeout: 60_000 }, ex(async () => {
  let r = await readyz();
  assert.equal(r.status, 200);
  assert.equal(r.text, 'ready');

  const ws = build({ transport: T.WebSockets });
  const events = new EventQueue(ws);
  await withTimeout(ws.start(), 10_000, 'start');
  const held = await getBalances(ws, events, 'before-lock');
  const seq = held.sequence;
  const before = await scrape();

  const lock = await lockDatabase(path.join(server.dataDir, 'balancehub.db'));
  try {
    r = await until(
      async () => {
        const x = await readyz();
        return x.status === 503 ? x : undefined;
      },
      5_000,
      '/readyz 503 while the database is locked',
    );
    assert.equal(r.text, 'store unavailable');
    assert.equal((await request(server.url, 'GET', '/readyz')).status, 503, 'the main listener agrees');
    const m = await scrape();
    assert.equal(m.get(S.ready), 0, 'bh_ready 0');
    assert.ok(m.get(S.storeErrors) > before.get(S.storeErrors), 'failed probes are store errors');
    // Alive, and reads are served from memory.
    assert.equal((await request(server.adminUrl, 'GET', '/healthz')).status, 200);
    assert.deepEqual(await getBalances(ws, events, 'during-lock'), held, 'GetBalances answers from memory');
    // Still unavailable a moment later (a probe every ~500 ms keeps failing).
    await sleep(700);
    assert.equal((await readyz()).status, 503);
  } finally {
    await lock.release().catch((e) => {
      lock.kill();
      throw e;
    });
  }

  r = await until(
    async () => {
      const x = await readyz();
      return x.status === 200 ? x : undefined;
    },
    5_000,
    '/readyz 200 after the lock is released',
  );
  assert.equal(r.text, 'ready');
  assert.equal((await scrape()).get(S.ready), 1, 'bh_ready 1');

  const d = await adminDeposit(`metrics-after-lock-${process.pid}`, '0.25');
  assert.equal(d.status, 200, d.text);
  assert.equal(d.json.sequence, seq + 1);
  const [u] = await events.next(1, 5_000);
  assert.equal(u.subject, 'account.balances.update');
  assert.equal(u.data.sequence, seq + 1);
  await withTimeout(ws.stop(), 5_000, 'stop');
}));
