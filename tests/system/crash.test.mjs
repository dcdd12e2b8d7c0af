// Crash test: 16 clients stream admin ops (deposits and withdrawals, each with its own opId) at
// 4 users; the server is SIGKILLed mid-stream, restarted on the same data directory, and the admin
// API must prove that every acknowledged op survived exactly once at its acknowledged sequence,
// journals run 1..N without gaps, re-sent opIds answer their first result or apply once, balances
// equal their journal to the last 1e-18 (BigInt, never floats), and new ops continue at N+1.
// Three kill/restart cycles, then a graceful stop and one more restart. Bounded well below 30 s.

import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { test } from 'node:test';
import { makeTempDir, removeTempDir, startServer, withTimeout } from '../interop/harness.mjs';

const USERS = ['crash-a', 'crash-b', 'crash-c', 'crash-d'];
const CLIENTS = 16;
const ROUNDS = 3;
const MAX_OPS_PER_CLIENT = 20_000; // safety bound; the kill comes long before
const SCALE = 10n ** 18n;
const JOURNAL_PAGE = 10_000;

// ---------------------------------------------------------------------------------------------
// exact numbers: JSON numbers are kept as their source text, decimals become BigInt * 1e-18

class Num {
  constructor(text) {
    this.text = text;
  }
}

// JSON.parse that keeps every number as a Num holding its exact source text.
function parseExact(text) {
  let i = 0;
  const fail = (what) => {
    throw new Error(`bad JSON (${what}) at offset ${i}: ${JSON.stringify(text.slice(0, 300))}`);
  };
  const ws = () => {
    while (i < text.length && ' \t\r\n'.includes(text[i])) i++;
  };
  const STR = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const NUM = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const str = () => {
    STR.lastIndex = i;
    const m = STR.exec(text);
    if (!m) fail('string');
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o = Object.create(null);
      ws();
      if (text[i] === '}') return i++, o;
      for (;;) {
        ws();
        if (text[i] !== '"') fail('key');
        const k = str();
        ws();
        if (text[i++] !== ':') fail("':'");
        o[k] = value();
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i++] === '}') return o;
        fail('object');
      }
    }
    if (c === '[') {
      i++;
      const a = [];
      ws();
      if (text[i] === ']') return i++, a;
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i++] === ']') return a;
        fail('array');
      }
    }
    if (c === '"') return str();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) return (i += word.length), v;
    }
    NUM.lastIndex = i;
    const m = NUM.exec(text);
    if (!m) fail('value');
    i += m[0].length;
    return new Num(m[0]);
  };
  const v = value();
  ws();
  if (i !== text.length) fail('trailing bytes');
  return v;
}

// A decimal (string or exact JSON number) as a BigInt count of 1e-18 units; throws if inexact.
function toUnits(v, what) {
  const s = v instanceof Num ? v.text : v;
  assert.equal(typeof s, 'string', `${what}: expected a decimal, got ${JSON.stringify(v)}`);
  const m = /^(-)?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(s);
  assert.ok(m, `${what}: not a decimal: ${JSON.stringify(s)}`);
  const frac = m[3] ?? '';
  const shift = 18 + Number(m[4] ?? 0) - frac.length;
  let units = BigInt(m[2] + frac);
  if (shift >= 0) {
    units *= 10n ** BigInt(shift);
  } else {
    const d = 10n ** BigInt(-shift);
    assert.equal(units % d, 0n, `${what}: ${s} has more than 18 decimals`);
    units /= d;
  }
  return m[1] ? -units : units;
}

// BigInt units -> shortest exact decimal string ("0.000000000000000001", "12.5", "3").
function fromUnits(u) {
  const neg = u < 0n;
  const a = neg ? -u : u;
  const frac = (a % SCALE).toString().padStart(18, '0').replace(/0+$/, '');
  return (neg ? '-' : '') + (a / SCALE).toString() + (frac ? '.' + frac : '');
}

// A JSON integer (Num) as a JS number.
function int(v, what) {
  assert.ok(v instanceof Num, `${what}: expected a number, got ${JSON.stringify(v)}`);
  const n = Number(v.text);
  assert.ok(Number.isSafeInteger(n) && String(n) === v.text, `${what}: not an integer: ${v.text}`);
  return n;
}

// ---------------------------------------------------------------------------------------------
// admin HTTP

// One request to the admin API (on the operations listener); resolves {status, text} only when
// the whole answer arrived, rejects on any connection failure (then the op's outcome is unknown).
function request(srv, agent, method, urlPath, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const headers = { authorization: `Bearer ${srv.token}` };
    if (data !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(data);
    }
    const req = http.request({ host: '127.0.0.1', port: srv.adminPort, method, path: urlPath, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('error', reject);
      res.on('close', () => {
        if (!res.complete) reject(new Error('response cut off'));
        else resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') });
      });
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${urlPath}: no answer in 10 s`)));
    req.end(data);
  });
}

async function call(srv, agent, method, urlPath, body, expectStatus = 200) {
  const res = await request(srv, agent, method, urlPath, body);
  assert.equal(res.status, expectStatus, `${method} ${urlPath} ${JSON.stringify(body ?? null)} -> ${res.status} ${res.text}`);
  return res;
}

// Every journal entry of a user, paging with since=<last sequence>.
async function readJournal(srv, agent, user) {
  const out = [];
  let since = 0;
  for (let page = 0; page < 1000; page++) {
    const res = await call(srv, agent, 'GET', `/admin/users/${user}/journal?since=${since}&limit=${JOURNAL_PAGE}`);
    const { entries } = parseExact(res.text);
    assert.ok(Array.isArray(entries), `journal answer has entries[]: ${res.text.slice(0, 300)}`);
    out.push(...entries);
    if (entries.length < JOURNAL_PAGE) break;
    since = int(entries[entries.length - 1].sequence, 'journal sequence');
  }
  return out;
}

// Runs fn(item, agent) over items with n workers, each with its own keep-alive connection.
async function pool(items, n, fn) {
  let next = 0;
  const worker = async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      while (next < items.length) await fn(items[next++], agent);
    } finally {
      agent.destroy();
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

function shuffle(a) {
  for (let i = a.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// the model: every op ever attempted, by user then opId

class Model {
  constructor() {
    this.ops = new Map(); // `${user}\n${opId}` -> op
    this.k = 1; // makes every amount distinct
  }

  add(op) {
    const key = `${op.user}\n${op.opId}`;
    assert.ok(!this.ops.has(key), `duplicate opId in the test itself: ${op.opId}`);
    this.ops.set(key, op);
    return op;
  }

  get(user, opId) {
    return this.ops.get(`${user}\n${opId}`);
  }

  // A deposit or withdrawal with an amount no other op has: most deposits are k * (1e-6 + 1e-18),
  // every 7th also carries k whole units, withdrawals are k * 1e-18 of BTC (funded at creation).
  balanceOp(user, opId) {
    const k = BigInt(this.k++);
    const withdraw = k % 5n === 4n;
    const asset = withdraw || k % 2n === 0n ? 'BTC' : 'ETH';
    let units = withdraw ? k : k * (10n ** 12n + 1n);
    if (!withdraw && k % 7n === 0n) units += k * SCALE;
    return this.add({ user, opId, op: withdraw ? 'withdraw' : 'deposit', asset, units, outcome: 'unsent' });
  }

  // Exact expected balances of a user from every op the model knows as applied.
  expected(user, onlyCommitted) {
    const sums = new Map();
    for (const op of this.ops.values()) {
      if (op.user !== user || (op.op !== 'deposit' && op.op !== 'withdraw')) continue;
      if (onlyCommitted && op.seq === undefined) continue;
      sums.set(op.asset, (sums.get(op.asset) ?? 0n) + (op.op === 'deposit' ? op.units : -op.units));
    }
    return sums;
  }
}

const opBody = (op) => ({ opId: op.opId, op: op.op, asset: op.asset, amount: fromUnits(op.units) });
const opPath = (op) => `/admin/users/${op.user}/ops`;

// Sends an op; on a 200 records the acknowledged sequence and the exact answer text.
async function sendOp(srv, agent, op) {
  const res = await call(srv, agent, 'POST', opPath(op), opBody(op));
  const ans = parseExact(res.text);
  const seq = int(ans.sequence, `sequence of ${op.opId}`);
  assert.equal(int(ans.data?.sequence, `data.sequence of ${op.opId}`), seq, `answer ${res.text}`);
  return { seq, text: res.text };
}

// ---------------------------------------------------------------------------------------------
// checks

// Reads every user's journal and balances and checks them against each other and the model:
// sequences 1..N, each entry an op the test sent (same kind, asset, exact amount) appearing once,
// every acknowledged op at its acknowledged sequence, balances == journal sum, sequence == N.
// With complete=true every op the model knows must be journaled. Returns user -> {n, seqOf}.
async function verify(srv, model, { complete }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const out = new Map();
  try {
    for (const user of USERS) {
      const entries = await readJournal(srv, agent, user);
      const seqOf = new Map();
      const sums = new Map();
      entries.forEach((e, i) => {
        const where = `${user} journal entry ${i}: ${JSON.stringify(e, (k, v) => (v instanceof Num ? v.text : v))}`;
        assert.equal(int(e.sequence, where), i + 1, `sequences are 1..N without gaps or duplicates; ${where}`);
        assert.equal(typeof e.opId, 'string', where);
        assert.ok(!seqOf.has(e.opId), `opId journaled twice; ${where}`);
        seqOf.set(e.opId, i + 1);
        const op = model.get(user, e.opId);
        assert.ok(op, `journal has an op the test never sent; ${where}`);
        assert.equal(e.op, op.op, where);
        assert.equal(typeof e.time, 'string', where);
        if (op.op === 'deposit' || op.op === 'withdraw') {
          assert.equal(e.asset, op.asset, where);
          assert.equal(toUnits(e.amount, where), op.units, `exact amount; ${where}`);
          const d = op.op === 'deposit' ? op.units : -op.units;
          sums.set(op.asset, (sums.get(op.asset) ?? 0n) + d);
        }
        if (op.seq !== undefined) assert.equal(i + 1, op.seq, `acknowledged op at its acknowledged sequence; ${where}`);
      });
      for (const op of model.ops.values()) {
        if (op.user !== user) continue;
        if (op.seq !== undefined) assert.ok(seqOf.has(op.opId), `acknowledged op ${op.opId} (sequence ${op.seq}) missing from the journal of ${user}`);
        if (complete) assert.ok(seqOf.has(op.opId), `op ${op.opId} (${op.outcome}) was re-sent but is not journaled for ${user}`);
      }

      const res = await call(srv, agent, 'GET', `/admin/users/${user}/balances`);
      const data = parseExact(res.text);
      assert.equal(data.userId, user);
      assert.equal(data.deleted, false);
      assert.equal(int(data.sequence, 'balances sequence'), entries.length, `balances sequence == last journal sequence for ${user}`);
      const seen = new Set();
      for (const a of data.assets) {
        seen.add(a.name);
        const want = sums.get(a.name) ?? 0n;
        const got = toUnits(a.available, `${user} ${a.name} available`);
        assert.equal(got, want, `${user} ${a.name} available ${fromUnits(got)} != journal sum ${fromUnits(want)} (half-applied op?)`);
        assert.equal(toUnits(a.allocated, `${user} ${a.name} allocated`), 0n);
        assert.equal(toUnits(a.currentExposure, `${user} ${a.name} currentExposure`), 0n);
      }
      for (const [asset, sum] of sums) if (sum !== 0n) assert.ok(seen.has(asset), `${user} balances lack ${asset}: ${res.text}`);
      if (complete) {
        for (const [asset, sum] of model.expected(user, false)) {
          assert.equal(sums.get(asset) ?? 0n, sum, `${user} ${asset}: journal sum != sum of every op sent`);
        }
      }
      out.set(user, { n: entries.length, seqOf });
    }
  } finally {
    agent.destroy();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// the test

test('SIGKILL mid-stream x3: acknowledged ops survive exactly once, journals gapless, balances exact', { timeout: 30_000 }, async (t) => {
  const dataDir = makeTempDir('balancehub-crash-');
  const tokenDir = makeTempDir('balancehub-crash-token-');
  const token = randomBytes(24).toString('hex');
  const tokenFile = path.join(tokenDir, 'admin-token');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  const model = new Model();
  let srv = null;
  const start = async () => {
    srv = await startServer({ dataDir, demo: false, extraArgs: ['--admin-token-file', tokenFile] });
    srv.token = token;
    return srv;
  };

  try {
    await start();
    {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      for (const user of USERS) {
        const create = model.add({ user, opId: `create-${user}`, op: 'create-user', outcome: 'acked', seq: 1 });
        await call(srv, agent, 'POST', '/admin/users', { userId: user, baseCurrency: 'EUR', totalMaxExposure: '0', opId: create.opId }, 201);
        const fund = model.add({ user, opId: `fund-${user}`, op: 'deposit', asset: 'BTC', units: SCALE, outcome: 'acked' });
        const ack = await sendOp(srv, agent, fund);
        assert.equal(ack.seq, 2, 'first deposit after create-user has sequence 2');
        Object.assign(fund, { seq: ack.seq, text: ack.text });
      }
      agent.destroy();
    }

    for (let round = 1; round <= ROUNDS; round++) {
      // --- stream, then SIGKILL mid-stream
      const roundOps = [];
      let stop = false;
      let inFlight = 0;
      const failures = [];
      const agents = [];
      const clients = Array.from({ length: CLIENTS }, async (_, c) => {
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        agents.push(agent);
        const user = USERS[c % USERS.length];
        for (let i = 0; i < MAX_OPS_PER_CLIENT && !stop; i++) {
          const op = model.balanceOp(user, `r${round}-c${c}-${i}`);
          roundOps.push(op);
          op.outcome = 'lost'; // until an answer proves otherwise
          inFlight++;
          let res;
          try {
            res = await request(srv, agent, 'POST', opPath(op), opBody(op));
          } catch {
            return; // the server is gone: this op's fate is unknown
          } finally {
            inFlight--;
          }
          if (res.status !== 200) {
            failures.push(`${op.opId}: ${res.status} ${res.text}`);
            return;
          }
          const ans = parseExact(res.text);
          Object.assign(op, { outcome: 'acked', seq: int(ans.sequence, op.opId), text: res.text });
        }
      });
      const delay = randomInt(300, 801);
      await sleep(delay);
      assert.ok(srv.alive(), 'the server died by itself during the stream');
      const inFlightAtKill = inFlight;
      const killed = new Promise((resolve) => srv.proc.once('exit', resolve));
      srv.proc.kill('SIGKILL');
      await withTimeout(killed, 5_000, 'server exit after SIGKILL');
      stop = true;
      await withTimeout(Promise.all(clients), 15_000, 'clients to notice the kill');
      for (const a of agents) a.destroy();
      assert.deepEqual(failures, [], 'every op answered before the kill succeeded');
      const acked = roundOps.filter((op) => op.outcome === 'acked').length;
      assert.ok(acked > 0, `round ${round}: no op was acknowledged in ${delay} ms`);
      assert.ok(inFlightAtKill > 0, `round ${round}: nothing was in flight at the kill`);

      // --- restart on the same data; acknowledged ops are there, unacknowledged ones whole or absent
      await start();
      const before = await verify(srv, model, { complete: false });
      const lost = roundOps.filter((op) => op.outcome === 'lost');
      let lostCommitted = 0;
      for (const op of lost) {
        const seq = before.get(op.user).seqOf.get(op.opId);
        op.committedSeq = seq;
        if (seq !== undefined) lostCommitted++;
      }

      // --- re-send every op of the round: first result, or applied once
      await pool(shuffle([...roundOps]), CLIENTS, async (op, agent) => {
        const ans = await sendOp(srv, agent, op);
        if (op.outcome === 'acked') {
          assert.equal(ans.text, op.text, `re-sent acknowledged ${op.opId} answers its first result exactly`);
        } else if (op.committedSeq !== undefined) {
          assert.equal(ans.seq, op.committedSeq, `re-sent committed-but-unacknowledged ${op.opId} answers its journaled sequence`);
          Object.assign(op, { seq: ans.seq, text: ans.text });
        } else {
          assert.ok(ans.seq > before.get(op.user).n, `re-sent uncommitted ${op.opId} is applied now, after sequence ${before.get(op.user).n} (got ${ans.seq})`);
          Object.assign(op, { seq: ans.seq, text: ans.text });
        }
      });
      // ... and once more: now every one of them is a repeat answering the same bytes
      await pool(shuffle([...roundOps]), CLIENTS, async (op, agent) => {
        const res = await call(srv, agent, 'POST', opPath(op), opBody(op));
        assert.equal(res.text, op.text, `second re-send of ${op.opId} answers the first result exactly`);
      });
      const after = await verify(srv, model, { complete: true });

      // --- and the server keeps working: a new op gets sequence N+1
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      for (const user of USERS) {
        const op = model.balanceOp(user, `after-r${round}-${user}`);
        const ans = await sendOp(srv, agent, op);
        assert.equal(ans.seq, after.get(user).n + 1, `new op on ${user} after restart ${round}`);
        Object.assign(op, { outcome: 'acked', seq: ans.seq, text: ans.text });
      }
      agent.destroy();
      t.diagnostic(
        `round ${round}: kill after ${delay} ms, ${roundOps.length} ops sent, ${acked} acknowledged, ` +
          `${lost.length} unacknowledged (${lostCommitted} of them committed), ${inFlightAtKill} in flight at the kill`,
      );
    }

    // A graceful stop (exit 0, no leaks under ASan), a restart, and everything is still exact.
    await srv.stop();
    srv = null;
    await start();
    const final = await verify(srv, model, { complete: true });
    t.diagnostic(`final journals: ${USERS.map((u) => `${u}=${final.get(u).n}`).join(' ')}`);
    await srv.stop();
    srv = null;
  } catch (err) {
    throw srv ? srv.explain(err) : err;
  } finally {
    if (srv?.alive()) {
      const gone = new Promise((resolve) => srv.proc.once('exit', resolve));
      srv.proc.kill('SIGKILL');
      await withTimeout(gone, 5_000, 'server exit').catch(() => {});
    }
    removeTempDir(dataDir);
    removeTempDir(tokenDir);
  }
});
