// The multi-core runtime (--threads N): every check runs against --threads 2 and --threads 1.
// A connection lives on one I/O thread; a request for a session owned by another thread is
// migrated there. The clients below open a new TCP connection for every HTTP request (no
// keep-alive), so the kernel's SO_REUSEPORT hash spreads the requests of one Long Polling or
// Server-Sent Events session over both threads, and WebSockets land on either. Checked: every
// connection gets its snapshot and then exactly its user's updates in sequence order, requests
// were migrated (bh_connection_migrations_total > 0 with two threads, 0 with one) and none
// failed; the per-key connection limit and the per-key command rate hold across threads; SIGTERM
// gives every connection on every thread Close with allowReconnect and the server exits 0.
//
// Which thread the kernel picks is not observable from outside: the spread is a matter of
// numbers (16 WebSockets on one of two threads: 1 in 32768).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  EventQueue,
  HUB_PATH,
  RawWs,
  explained,
  makeTempDir,
  recordSecrets,
  removeTempDir,
  signalR,
  startServer,
  withTimeout,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const { MessagePackHubProtocol } = require('@microsoft/signalr-protocol-msgpack');
const T = signalR.HttpTransportType;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// an HTTP client for @microsoft/signalr that never reuses a socket

// Every request on its own TCP connection (agent: false, Connection: close). Records every
// answer that is not 2xx and every network error in stats.failed (aborts by the client itself,
// e.g. the poll a stop() cancels, are not failures).
class SocketPerRequestClient extends signalR.HttpClient {
  constructor(stats) {
    super();
    this.stats = stats;
  }

  getCookieString() {
    return '';
  }

  send(request) {
    if (request.abortSignal?.aborted) return Promise.reject(new signalR.AbortError());
    return new Promise((resolve, reject) => {
      const headers = { ...(request.headers ?? {}) };
      let body;
      if (request.content !== undefined && request.content !== null && request.content !== '') {
        const text = typeof request.content === 'string';
        body = text ? Buffer.from(request.content, 'utf8') : Buffer.from(new Uint8Array(request.content));
        headers['Content-Type'] = text ? 'text/plain;charset=UTF-8' : 'application/octet-stream';
        headers['Content-Length'] = String(body.length);
      }
      let settled = false;
      let timer = null;
      const done = (fn, v) => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        if (request.abortSignal) request.abortSignal.onabort = null;
        fn(v);
      };
      const what = `${request.method} ${request.url.replace(/access_token=[^&]*/, 'access_token=…')}`;
      this.stats.requests++;
      const req = http.request(request.url, { method: request.method, headers, agent: false }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', (err) => {
          this.stats.failed.push(`${what}: ${err.message}`);
          done(reject, err);
        });
        res.on('end', () => {
          const buf = Buffer.concat(chunks);
          const status = res.statusCode;
          if (status < 200 || status > 299) {
            this.stats.failed.push(`${what}: ${status} ${buf.toString('utf8')}`);
            done(reject, new signalR.HttpError(buf.toString('utf8') || res.statusMessage, status));
            return;
          }
          const content =
            request.responseType === 'arraybuffer' ? buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length) : buf.toString('utf8');
          done(resolve, new signalR.HttpResponse(status, res.statusMessage, content));
        });
      });
      req.on('error', (err) => {
        if (!settled) this.stats.failed.push(`${what}: ${err.message}`);
        done(reject, err);
      });
      if (request.abortSignal) {
        request.abortSignal.onabort = () => {
          done(reject, new signalR.AbortError());
          req.destroy();
        };
      }
      if (request.timeout) {
        timer = setTimeout(() => {
          done(reject, new signalR.TimeoutError());
          req.destroy();
        }, request.timeout);
      }
      req.end(body);
    });
  }
}

const newStats = () => ({ requests: 0, failed: [] });

// A HubConnection (not started) with an event queue and the record of its close/reconnecting.
function hubConnection(server, { key, transport, stats, msgpack = false, skipNegotiation = false, reconnect = false }) {
  const options = { transport, accessTokenFactory: () => key, skipNegotiation };
  if (stats) options.httpClient = new SocketPerRequestClient(stats);
  let b = new signalR.HubConnectionBuilder().withUrl(server.hubUrl, options).configureLogging(signalR.LogLevel.None);
  if (msgpack) b = b.withHubProtocol(new MessagePackHubProtocol());
  if (reconnect) b = b.withAutomaticReconnect([60_000]); // the first retry long after the test
  const conn = b.build();
  server.connections.add(conn); // stop() in the harness stops what a failed test left
  const c = { conn, events: new EventQueue(conn), closed: null, reconnecting: null };
  conn.onclose((err) => (c.closed = err ?? 'clean'));
  conn.onreconnecting((err) => (c.reconnecting = err ?? 'none'));
  return c;
}

// Starts connections a few at a time (a burst of hundreds of handshakes tells nothing more).
async function startAll(conns, batch = 10) {
  for (let i = 0; i < conns.length; i += batch) {
    await Promise.all(conns.slice(i, i + batch).map((c) => withTimeout(c.conn.start(), 15_000, 'HubConnection.start()')));
  }
}

async function stopAll(conns) {
  await Promise.all(conns.map((c) => withTimeout(c.conn.stop(), 10_000, 'HubConnection.stop()')));
}

// Completes after everything the server queued for this connection before the call.
async function barrier(c) {
  await assert.rejects(withTimeout(c.conn.invoke('BarrierNoSuchMethod'), 10_000, 'barrier'), /Unknown hub method 'BarrierNoSuchMethod'/);
}

// GetBalances(clientId) and its snapshot event: returns the snapshot's sequence.
async function subscribe(c, clientId, userId) {
  await withTimeout(c.conn.invoke('GetBalances', clientId), 10_000, `GetBalances(${clientId})`);
  const [ev] = await c.events.next(1, 10_000);
  assert.equal(ev.subject, 'account.balances.snapshot', JSON.stringify(ev));
  assert.equal(ev.clientId, clientId);
  assert.equal(ev.data.userId, userId);
  assert.equal(typeof ev.data.sequence, 'number');
  return ev.data.sequence;
}

// ---------------------------------------------------------------------------------------------
// the server and its admin API

function writeToken(dir) {
  const token = randomBytes(24).toString('hex');
  const file = path.join(dir, 'admin-token');
  writeFileSync(file, token + '\n', { mode: 0o600 });
  return { token, file };
}

async function start(threads, extraArgs = []) {
  const dir = makeTempDir();
  const { token, file } = writeToken(dir);
  const server = await startServer({
    dataDir: dir,
    ownDataDir: true,
    extraArgs: ['--threads', String(threads), '--admin-token-file', file, ...extraArgs],
  });
  server.token = token;
  return server;
}

async function adminApi(server, method, urlPath, body, want) {
  const res = await withTimeout(
    fetch(server.adminUrl + urlPath, {
      method,
      headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    }),
    10_000,
    `${method} ${urlPath}`,
  );
  const text = await res.text();
  assert.equal(res.status, want, `${method} ${urlPath} -> ${res.status} ${text}`);
  return recordSecrets(JSON.parse(text));
}

async function createUser(server, userId) {
  await adminApi(server, 'POST', '/admin/users', { userId, baseCurrency: 'EUR', totalMaxExposure: '1000000', opId: `create-${userId}` }, 201);
  return (await adminApi(server, 'POST', `/admin/users/${userId}/keys`, {}, 201)).apiKey;
}

let opSeq = 0;
async function deposit(server, userId, amount) {
  return adminApi(server, 'POST', `/admin/users/${userId}/ops`, { opId: `thr-${process.pid}-${++opSeq}`, op: 'deposit', asset: 'BTC', amount }, 200);
}

async function metric(server, name) {
  const res = await fetch(`${server.adminUrl}/metrics`);
  assert.equal(res.status, 200);
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(await res.text());
  assert.ok(m, `${name} is in /metrics`);
  return Number(m[1]);
}

async function negotiateStatus(server, key) {
  // A fresh socket each time, so the attempts reach both threads.
  const res = await fetch(`${server.url}${HUB_PATH}/negotiate?negotiateVersion=1`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, connection: 'close' },
  });
  return { status: res.status, body: await res.text() };
}

// ---------------------------------------------------------------------------------------------

for (const threads of [2, 1]) {
  describe(`--threads ${threads}`, () => {
    let server;
    const ex = (fn) => explained(() => server, fn);
    before(async () => {
      server = await start(threads);
    });
    after(async () => {
      if (server) await server.stop();
    });

    test('40 Long Polling and 40 Server-Sent Events sessions, a socket per request: snapshot, then exactly their updates; no request failed', { timeout: 120_000 }, ex(async () => {
      const USERS = 20;
      const DEPOSITS = 5;
      const stats = newStats();
      const users = [];
      for (let u = 0; u < USERS; u++) {
        const userId = `t${threads}-lpsse-${u}`;
        users.push({ userId, key: await createUser(server, userId), conns: [] });
      }
      const migrations0 = await metric(server, 'bh_connection_migrations_total');
      const all = [];
      for (const u of users) {
        for (const transport of [T.LongPolling, T.LongPolling, T.ServerSentEvents, T.ServerSentEvents]) {
          const c = hubConnection(server, { key: u.key, transport, stats });
          c.user = u;
          c.clientId = `${u.userId}-${all.length}`;
          u.conns.push(c);
          all.push(c);
        }
      }
      await startAll(all);
      for (const c of all) c.s0 = await subscribe(c, c.clientId, c.user.userId);

      // Deposits of 1, 2, ... BTC per user (the users side by side): update k carries the
      // snapshot's sequence + k and the running sum.
      await Promise.all(
        users.map(async (u) => {
          for (let k = 1; k <= DEPOSITS; k++) await deposit(server, u.userId, String(k));
        }),
      );
      for (const c of all) {
        const got = await c.events.next(DEPOSITS, 15_000);
        let sum = 0;
        got.forEach((ev, i) => {
          sum += i + 1;
          assert.equal(ev.subject, 'account.balances.update', JSON.stringify(ev));
          assert.equal(ev.clientId, c.clientId);
          assert.equal(ev.data.userId, c.user.userId);
          assert.equal(ev.data.sequence, c.s0 + i + 1, `${c.clientId}: update ${i + 1} sequence`);
          assert.equal(ev.data.assets.find((a) => a.name === 'BTC')?.available, sum, `${c.clientId}: BTC after ${i + 1} deposits`);
        });
      }
      await Promise.all(all.map((c) => barrier(c)));
      for (const c of all) assert.equal(c.events.pending, 0, `${c.clientId}: nothing after its updates`);
      for (const c of all) assert.equal(c.conn.state, 'Connected', `${c.clientId} is still connected`);

      assert.deepEqual(stats.failed, [], `no request failed (of ${stats.requests})`);
      const migrated = (await metric(server, 'bh_connection_migrations_total')) - migrations0;
      if (threads > 1) assert.ok(migrated > 0, `requests were migrated between the threads (${migrated} of ${stats.requests})`);
      else assert.equal(migrated, 0, 'one I/O thread: nothing to migrate');
      await stopAll(all);
      for (const c of all) {
        assert.equal(c.closed, 'clean', `${c.clientId} closed cleanly`);
        server.connections.delete(c.conn);
      }
      assert.ok(server.alive());
    }));

    test('16 WebSockets (MessagePack, negotiated on any thread or not at all) receive every update in sequence order', { timeout: 60_000 }, ex(async () => {
      const N = 16;
      const OPS = 30;
      const userId = `t${threads}-ws`;
      const key = await createUser(server, userId);
      const stats = newStats();
      const conns = [];
      for (let i = 0; i < N; i++) {
        const c = hubConnection(server, { key, transport: T.WebSockets, msgpack: true, stats, skipNegotiation: i % 2 === 1 });
        c.clientId = `ws-${i}`;
        conns.push(c);
      }
      await startAll(conns);
      for (const c of conns) c.s0 = await subscribe(c, c.clientId, userId);
      const s0 = conns[0].s0;
      for (const c of conns) assert.equal(c.s0, s0, 'no change between the snapshots');

      // 30 deposits, 6 in flight at a time: the ledger orders them; every connection must see
      // that order, whichever thread it is on.
      let next = 0;
      await Promise.all(
        Array.from({ length: 6 }, async () => {
          while (next < OPS) {
            next++;
            await deposit(server, userId, '0.5');
          }
        }),
      );
      for (const c of conns) {
        const got = await c.events.next(OPS, 15_000);
        assert.deepEqual(
          got.map((ev) => [ev.subject, ev.clientId, Number(ev.data.sequence)]),
          Array.from({ length: OPS }, (_, i) => ['account.balances.update', c.clientId, s0 + i + 1]),
          `${c.clientId}: every update, in sequence order`,
        );
      }
      await Promise.all(conns.map((c) => barrier(c)));
      for (const c of conns) assert.equal(c.events.pending, 0);
      assert.deepEqual(stats.failed, []);
      await stopAll(conns);
      for (const c of conns) server.connections.delete(c.conn);
    }));
  });

  describe(`--threads ${threads}: limits shared by the threads`, () => {
    test('--max-connections-per-key 5: exactly 5 of 12 concurrent WebSockets connect; the 6th negotiate or upgrade gets 429 on any thread', { timeout: 60_000 }, async () => {
      const server = await start(threads, ['--max-connections-per-key', '5']);
      try {
        const key = server.apiKey;
        const stats = newStats();
        const conns = Array.from({ length: 12 }, (_, i) =>
          hubConnection(server, { key, transport: T.WebSockets, stats, skipNegotiation: i % 2 === 0 }),
        );
        const results = await Promise.allSettled(conns.map((c) => withTimeout(c.conn.start(), 15_000, 'start')));
        const ok = conns.filter((c, i) => results[i].status === 'fulfilled');
        assert.equal(ok.length, 5, `connected: ${ok.length}; failures: ${results.filter((r) => r.status === 'rejected').map((r) => r.reason?.message).join(' | ')}`);
        for (let i = 0; i < 6; i++) {
          const r = await negotiateStatus(server, key);
          assert.equal(r.status, 429, `negotiate ${i}: ${r.body}`);
          assert.deepEqual(JSON.parse(r.body), { error: 'too many connections for this API key' });
          const { res, socket } = await RawWs.upgradeRequest(server, { query: `access_token=${encodeURIComponent(key)}` });
          socket.destroy();
          assert.equal(res.status, 429, `upgrade ${i}: ${res.body}`);
        }
        // One closes: exactly one slot comes free (the server notices the close a moment later).
        await ok[0].conn.stop();
        let extra = null;
        for (let i = 0; i < 50 && !extra; i++) {
          const c = hubConnection(server, { key, transport: T.WebSockets, skipNegotiation: true });
          try {
            await withTimeout(c.conn.start(), 5_000, 'start');
            extra = c;
          } catch {
            server.connections.delete(c.conn);
            await sleep(50);
          }
        }
        assert.ok(extra, 'a connection fits once one was closed');
        assert.equal((await negotiateStatus(server, key)).status, 429, 'and then the key is full again');
        await stopAll([...ok.slice(1), extra]);
      } catch (err) {
        throw server.explain(err);
      } finally {
        await server.stop();
      }
    });

    test('--rate-limit 1 --rate-burst 10: one bucket per key across 16 WebSockets', { timeout: 60_000 }, async () => {
      const server = await start(threads, ['--rate-limit', '1', '--rate-burst', '10']);
      try {
        const conns = Array.from({ length: 16 }, () => hubConnection(server, { key: server.apiKey, transport: T.WebSockets, skipNegotiation: true }));
        await startAll(conns, 16);
        const t0 = Date.now();
        await Promise.all(conns.flatMap((c, i) => [c.conn.invoke('GetBalances', `r${i}a`), c.conn.invoke('GetBalances', `r${i}b`)]));
        const elapsed = Date.now() - t0;
        const events = [];
        for (const c of conns) events.push(...(await c.events.next(2, 10_000)));
        const snaps = events.filter((e) => e.subject === 'account.balances.snapshot').length;
        const errors = events.filter((e) => e.subject === 'account.balances.error');
        assert.equal(snaps + errors.length, 32);
        // 10 at once, then 1 a second: per-thread buckets would have let about 20 through.
        const extra = Math.floor(elapsed / 1000) + 1;
        assert.ok(snaps >= 10 && snaps <= 10 + extra, `snapshots: ${snaps} of 32 (took ${elapsed} ms)`);
        for (const e of errors) {
          assert.deepEqual(e, {
            channel: 'executionEvents',
            topic: 'account.balances',
            subject: 'account.balances.error',
            type: 'error',
            clientId: e.clientId,
            data: { message: 'rate limit exceeded' },
          });
        }
        for (const c of conns) assert.equal(c.conn.state, 'Connected', 'a limited connection stays');
        await stopAll(conns);
      } catch (err) {
        throw server.explain(err);
      } finally {
        await server.stop();
      }
    });
  });

  test(`--threads ${threads}: SIGTERM with connections on every thread: each gets Close with allowReconnect; exit 0`, { timeout: 60_000 }, async () => {
    const server = await start(threads);
    const exited = new Promise((resolve) => server.proc.on('exit', (code, signal) => resolve({ code, signal })));
    const conns = [];
    const raws = [];
    try {
      const stats = newStats();
      for (let i = 0; i < 8; i++) conns.push(hubConnection(server, { key: server.apiKey, transport: T.WebSockets, stats, reconnect: true }));
      for (let i = 0; i < 4; i++) conns.push(hubConnection(server, { key: server.apiKey, transport: T.ServerSentEvents, stats, reconnect: true }));
      for (let i = 0; i < 4; i++) conns.push(hubConnection(server, { key: server.apiKey, transport: T.LongPolling, stats, reconnect: true }));
      await startAll(conns, 16);
      for (let i = 0; i < 8; i++) {
        const ws = await RawWs.open(server);
        await ws.handshake();
        raws.push(ws);
      }
      await sleep(200); // the Long Polling clients' polls are waiting
      assert.deepEqual(stats.failed, []);
      server.proc.kill('SIGTERM');
      for (const ws of raws) assert.deepEqual(await ws.nextRecord(5_000), { type: 7, allowReconnect: true }, 'the Close record');
      const deadline = Date.now() + 10_000;
      while (conns.some((c) => c.reconnecting === null && c.closed === null) && Date.now() < deadline) await sleep(50);
      for (const [i, c] of conns.entries()) {
        assert.equal(c.closed, null, `connection ${i} (${c.conn.connection?.transport?.constructor?.name}) was not closed for good`);
        assert.equal(c.reconnecting, 'none', `connection ${i}: Close with allowReconnect starts a reconnect`);
      }
      assert.deepEqual(await withTimeout(exited, 10_000, 'exit after SIGTERM'), { code: 0, signal: null });
    } catch (err) {
      throw server.explain(err);
    } finally {
      for (const c of conns) await withTimeout(c.conn.stop(), 5_000, 'stop').catch(() => {});
      server.connections.clear();
      if (server.alive()) server.proc.kill('SIGKILL');
      for (const s of server.sockets) s.destroy();
      removeTempDir(server.dataDir);
    }
  });
}
