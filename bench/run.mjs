// The benchmark behind `make bench` (bench/run is its entry point): balancehub's GetBalances round
// trip against the loopback TCP floor (bench/floor.c), its throughput on one core and on all cores,
// idle-connection memory, the Node peers (a `ws` server driven by the same C load generator, and
// Socket.IO driven by socket.io-client), the durable ledger (bench/ledger_bench.c), and a heap
// profile (bench/malloc_count.c preloaded: allocations per request). Everything is measured in
// this one run; ratios are taken between numbers of the same run. Every child process runs under
// a deadline and is stopped by pid.
//
//   bench/run            the full run (~5 min), writes bench/report.md
//   bench/run --smoke    a few seconds: floor, one rr run, one ws-peer run, a tiny idle run, a
//                        tiny heap profile; checks that each produced numbers; prints the report
//                        (--out FILE too)
//
// Environment: BALANCEHUB_BIN, FLOOR_BIN, LEDGER_BENCH, MALLOC_COUNT_SO (binaries and the heap
// profile's preload library; default build/...), BENCH_DURATION_S (3), BENCH_WARMUP_S (0.5),
// BENCH_PIPELINE (32), BENCH_IDLE (10000,100000),
// BENCH_DATA_PARENT (the ledger's data directory goes there; default build/bench, on the disk of
// the checkout: fsync on tmpfs would prove nothing).
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
if (argv.includes('-h') || argv.includes('--help')) {
  const head = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
  console.log(head.slice(0, head.findIndex((l) => !l.startsWith('//'))).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
const SMOKE = argv.includes('--smoke');
const outIdx = argv.indexOf('--out');
const OUT = outIdx >= 0 ? argv[outIdx + 1] : null;
for (const a of argv) {
  if (!['--smoke', '--out', OUT].includes(a)) {
    console.error(`bench/run: unknown argument '${a}' (try --help)`);
    process.exit(2);
  }
}

const env = process.env;
const BIN = env.BALANCEHUB_BIN || path.join(ROOT, 'build', 'balancehub');
const FLOOR = env.FLOOR_BIN || path.join(ROOT, 'build', 'bench', 'floor');
const LEDGER = env.LEDGER_BENCH || path.join(ROOT, 'build', 'bench', 'ledger_bench');
const MALLOC_SO = env.MALLOC_COUNT_SO || path.join(ROOT, 'build', 'bench', 'malloc_count.so');
const DUR = Number(env.BENCH_DURATION_S || (SMOKE ? 0.5 : 3));
const WARM = Number(env.BENCH_WARMUP_S || (SMOKE ? 0.2 : 0.5));
const PIPE = Number(env.BENCH_PIPELINE || 32);
const ROUNDS = Number(env.BENCH_ROUNDS || (SMOKE ? 1 : 3));
const IDLE = (env.BENCH_IDLE || (SMOKE ? '20' : '10000,100000')).split(',').map(Number);
const CLIENT_ID = 'user-123';
const NCPU = os.cpus().length;
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
// The open-file limit every child gets: 1048576 where the hard limit may be raised (root with
// CAP_SYS_RESOURCE), else the current hard limit; idle runs larger than it are not attempted.
const NOFILE_WANT = 1048576;
const NOFILE_HARD = Number(execFileSync('sh', ['-c', 'ulimit -Hn']).toString().trim()) || 1024;
const NOFILE = (() => {
  try {
    execFileSync('prlimit', [`--nofile=${NOFILE_WANT}:${NOFILE_WANT}`, 'true'], { stdio: 'pipe' });
    return NOFILE_WANT;
  } catch (e) {
    return NOFILE_HARD === 'unlimited' || !Number.isFinite(NOFILE_HARD) ? NOFILE_WANT : NOFILE_HARD;
  }
})();
const NOFILE_NOTE = NOFILE < NOFILE_WANT
  ? `the open-file limit could not be raised to ${NOFILE_WANT} (hard limit ${NOFILE_HARD}; \`prlimit\` refused: no CAP_SYS_RESOURCE), so every process had ${NOFILE}`
  : `every process had an open-file limit of ${NOFILE}`;

for (const [what, p] of [['balancehub', BIN], ['floor', FLOOR], ['malloc_count.so', MALLOC_SO], ...(SMOKE ? [] : [['ledger_bench', LEDGER]])]) {
  if (!existsSync(p)) {
    console.error(`bench/run: ${what} binary not found at ${p} (make bench builds it)`);
    process.exit(1);
  }
}

const WORK = mkdtempSync(path.join(os.tmpdir(), 'balancehub-bench-'));
const children = new Set(); // live child processes, stopped by pid on exit
const T0 = Date.now();
const log = (s) => console.error(`bench/run [${((Date.now() - T0) / 1000).toFixed(0)} s] ${s}`);

function fail(msg) {
  console.error(`bench/run: ${msg}`);
  cleanup();
  process.exit(1);
}
function cleanup() {
  for (const c of children) {
    try { process.kill(c.pid, 'SIGKILL'); } catch { /* gone */ }
  }
  if (typeof WORK === 'string') rmSync(WORK, { recursive: true, force: true });
}
process.on('SIGINT', () => fail('interrupted'));
process.on('SIGTERM', () => fail('terminated'));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// /proc

function procCpuS(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime (fields 14, 15)
  } catch {
    return NaN;
  }
}
function procStatusKb(pid, key) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}
// Busy CPU seconds of the whole machine and of each CPU (user nice system irq softirq steal).
function machineBusyS() {
  const out = [];
  for (const l of readFileSync('/proc/stat', 'utf8').split('\n')) {
    if (!l.startsWith('cpu')) continue;
    const f = l.trim().split(/\s+/);
    out.push([1, 2, 3, 6, 7, 8].reduce((a, i) => a + Number(f[i] || 0), 0) / CLK_TCK);
  }
  return out; // [all, cpu0, cpu1, ...]
}

// ---------------------------------------------------------------------------------------------
// processes

// argv prefix that pins to cpu (a list like "0" or "1"; null: unpinned) with a raised fd limit;
// both exec, so the pid spawn() returns is the program's.
function wrap(cmd, args, cpu) {
  const pre = ['--nofile=' + NOFILE + ':' + NOFILE, '--'];
  if (cpu != null) pre.push('taskset', '-c', String(cpu));
  return ['prlimit', [...pre, cmd, ...args]];
}

function startProc(name, cmd, args, { cpu = null, readyRe, timeoutMs = 15000, extraEnv = null } = {}) {
  const [c, a] = wrap(cmd, args, cpu);
  const p = spawn(c, a, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: extraEnv ? { ...env, ...extraEnv } : env });
  children.add(p);
  const s = { name, proc: p, pid: p.pid, out: '', err: '', exited: null };
  p.stdout.on('data', (d) => { s.out += d; });
  p.stderr.on('data', (d) => { s.err = (s.err + d).slice(-20000); });
  p.on('exit', (code, sig) => { s.exited = sig ? `killed by ${sig}` : `exit status ${code}`; children.delete(p); });
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    const poll = () => {
      const m = s.out.match(readyRe);
      if (m) return resolve(Object.assign(s, { match: m }));
      if (s.exited) return reject(new Error(`${name} ${s.exited} before it was ready: ${s.err.slice(-2000)}`));
      if (Date.now() > deadline) return reject(new Error(`${name}: not ready within ${timeoutMs} ms`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

async function stopProc(s, timeoutMs = 10000) {
  if (!s || s.exited) return s ? s.exited : 'not started';
  s.proc.kill('SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (!s.exited && Date.now() < deadline) await sleep(20);
  if (!s.exited) {
    s.proc.kill('SIGKILL');
    while (!s.exited) await sleep(20);
    return `killed: no exit within ${timeoutMs / 1000} s of SIGTERM`;
  }
  return s.exited;
}

// Runs a load generator to completion (deadline timeoutMs) while sampling serverPid's CPU time
// every 50 ms; the last stdout line is its JSON. The measured window is taken to be the client's
// last duration_s seconds before it exited, and the server's CPU over that window is interpolated
// from the samples. onTick(elapsedMs) may run extra checks while it waits.
async function runClient(cmd, args, { cpu = null, serverPid = null, timeoutMs, onTick } = {}) {
  const [c, a] = wrap(cmd, args, cpu);
  const p = spawn(c, a, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(p);
  let out = '', err = '', exited = null;
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { err = (err + d).slice(-20000); });
  p.on('exit', (code, sig) => { exited = { code, sig, t: performance.now() }; children.delete(p); });
  const samples = [];
  const t0 = performance.now();
  let timedOut = false;
  while (!exited) {
    samples.push([performance.now(), serverPid ? procCpuS(serverPid) : 0, ...machineBusyS()]);
    if (onTick) await onTick(performance.now() - t0, p);
    if (performance.now() - t0 > timeoutMs && !timedOut) {
      timedOut = true;
      p.kill('SIGKILL');
    }
    await sleep(50);
  }
  samples.push([performance.now(), serverPid ? procCpuS(serverPid) : 0, ...machineBusyS()]);
  let res = null;
  try {
    res = JSON.parse(out.trim().split('\n').pop());
  } catch { /* reported below */ }
  const r = { res, err, code: exited.code, timedOut, cmd: [cmd, ...args].join(' ') };
  if (res && samples.length > 1 && res.duration_s > 0) {
    // column k of the samples, linearly interpolated at time t
    const at = (t, k) => {
      for (let i = 1; i < samples.length; i++) {
        if (samples[i][0] >= t) {
          const a = samples[i - 1], b = samples[i];
          return b[0] === a[0] ? b[k] : a[k] + ((b[k] - a[k]) * (t - a[0])) / (b[0] - a[0]);
        }
      }
      return samples[samples.length - 1][k];
    };
    const win = (k) => at(exited.t, k) - at(exited.t - res.duration_s * 1000, k);
    if (serverPid) r.serverCpuS = win(1);
    r.machineCpuS = win(2);
    r.perCpuBusyS = samples[0].slice(3).map((_, j) => win(3 + j));
    // CPU time of everything else on the machine in the window (other sessions, the kernel's
    // softirq work not charged to these processes): a sign of a noisy neighbour.
    r.otherCpuS = r.machineCpuS - (r.serverCpuS || 0) - (res.client_cpu_s || 0) - (res.server_cpu_s || 0);
  }
  return r;
}

function describe(r) {
  const why = r.timedOut ? 'timed out' : `exit ${r.code}`;
  return `${why}: ${r.cmd}\n${(r.err || '').slice(-1500)}`;
}

// ---------------------------------------------------------------------------------------------
// balancehub

let serverCount = 0;
const benchHelp = (() => {
  try { return execFileSync(BIN, ['bench', '--help'], { stdio: ['ignore', 'pipe', 'pipe'] }).toString(); } catch (e) { return String(e.stdout || ''); }
})();
const serveHelp = execFileSync(BIN, ['serve', '--help']).toString();
if (!/--connections/.test(benchHelp)) fail(`${BIN} has no working \`bench\` command yet`);

// Each balancehub gets a fresh data directory (several may run at once); --demo makes the key.
async function startBalancehub(name, { cpu = null, threads = null, extraEnv = null } = {}) {
  const data = path.join(WORK, `data${++serverCount}`);
  mkdirSync(data);
  const args = ['serve', '--demo', '--data', data, '--listen', '127.0.0.1:0', '--max-connections-per-key', '1000000',
    '--rate-limit', '1000000000', '--rate-burst', '1000000000', '--max-connections', '1000000'];
  if (/--admin-listen/.test(serveHelp)) args.push('--admin-listen', 'off');
  if (/--log-level/.test(serveHelp)) args.push('--log-level', 'warn');
  if (threads && /--threads/.test(serveHelp)) args.push('--threads', String(threads));
  const s = await startProc(name, BIN, args, { cpu, extraEnv, readyRe: /listening on (http:\/\/127\.0\.0\.1:\d+)/ });
  s.url = s.match[1];
  s.keyFile = path.join(data, 'demo-api-key');
  return s;
}

// The peers take any key: they get the first server's.
let PEER_KEY_FILE = null;

// One `balancehub bench` run: rr (or idle with extra args) against url.
function benchArgs(server, { connections, pipeline = 1, threads = 1, mode = 'rr', duration = DUR, warmup = WARM, extra = [] }) {
  return ['bench', '--url', server.url, '--api-key-file', server.keyFile || PEER_KEY_FILE, '--client-id', CLIENT_ID, '--mode', mode,
    '--connections', String(connections), '--pipeline', String(pipeline), '--threads', String(threads),
    '--duration-s', String(duration), '--warmup-s', String(warmup), '--format', 'json', ...extra];
}

async function rr(server, label, o, { cpu = null } = {}) {
  const r = await runClient(BIN, benchArgs(server, o), {
    cpu, serverPid: server.pid, timeoutMs: (o.duration ?? DUR) * 1000 + (o.warmup ?? WARM) * 1000 + 60000,
  });
  check(r, label);
  log(`${label}: ${fmtRps(r.res.throughput_rps)}/s, p50 ${r.res.latency_us.p50} µs, p99 ${r.res.latency_us.p99} µs, server ${(r.serverCpuS ?? NaN).toFixed(2)} CPU s, other ${fmtS(r.otherCpuS)} s`);
  return { label, ...o, res: r.res, serverCpuS: r.serverCpuS, otherCpuS: r.otherCpuS };
}

const problems = []; // runs that did not produce numbers: the smoke run fails on any
function check(r, label) {
  if (!r.res || !(r.res.completed > 0)) {
    problems.push(`${label}: no numbers (${describe(r)})`);
    if (!r.res) r.res = { completed: 0, throughput_rps: 0, latency_us: {}, errors: {}, failed: true };
  }
}

// ---------------------------------------------------------------------------------------------
// formatting

const fmtRps = (x) => (x == null || Number.isNaN(x) ? '—' : x >= 100000 ? `${Math.round(x / 1000)}k` : x >= 10000 ? `${(x / 1000).toFixed(1)}k` : `${Math.round(x)}`);
const fmtUs = (x) => (x == null || Number.isNaN(x) ? '—' : x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(1)} µs`);
const fmtX = (x) => (x == null || !Number.isFinite(x) ? '—' : x >= 10 ? `${x.toFixed(0)}×` : `${x.toFixed(2)}×`);
const fmtRange = (r) => (r && r.spread && r.rounds > 1 ? `${fmtRps(r.spread[0])}–${fmtRps(r.spread[1])}` : '—');
const fmtS = (x) => (x == null || !Number.isFinite(x) ? '—' : Math.max(0, x).toFixed(2));
const fmtSmall = (x) => (x == null || !Number.isFinite(x) ? '—' : x === 0 ? '0' : Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) < 1e-4 ? x.toExponential(1) : x.toPrecision(2));
const fmtN = (x) => (Number.isFinite(x) ? x.toLocaleString('en-US') : '—');
const perCpu = (run) => (run.serverCpuS > 0 ? run.res.completed / run.serverCpuS : NaN);
const yes = (c) => (c ? 'yes' : '**no**');
const errStr = (e) => {
  const parts = Object.entries(e || {}).filter(([, v]) => v);
  return parts.length ? parts.map(([k, v]) => `${k} ${v}`).join(', ') : '0';
};

// ---------------------------------------------------------------------------------------------
// the run

const report = [];
const facts = {
  date: new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC'),
  commit: (() => {
    try {
      let c = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT }).toString().trim();
      if (execFileSync('git', ['status', '--porcelain'], { cwd: ROOT }).toString().trim()) c += ' (with uncommitted changes)';
      return c;
    } catch { return 'unknown'; }
  })(),
  cpu: (readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) || [])[1] || '?',
  mem: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
  kernel: `${os.type()} ${os.release()}`,
  node: process.version,
  load: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
};

const R = {}; // every result by key

async function floorRun(label, args) {
  const r = await runClient(FLOOR, ['--duration-s', String(DUR), '--warmup-s', String(WARM), ...args], { timeoutMs: (DUR + WARM) * 1000 + 30000 });
  check(r, label);
  log(`${label}: ${fmtRps(r.res.throughput_rps)}/s, p50 ${r.res.latency_us.p50} µs, p99 ${r.res.latency_us.p99} µs, other ${fmtS(r.otherCpuS)} s`);
  return { label, connections: 1, pipeline: r.res.pipeline, res: r.res, serverCpuS: r.res.server_cpu_s, otherCpuS: r.otherCpuS };
}

// n idle connections on a fresh server: VmRSS before, once all are up, and again after the
// server's first keep-alive round (pings every 15 s by default) has gone over every connection.
const KEEPALIVE_S = 15;
async function idleRun(n) {
  const sources = Math.max(1, Math.ceil(n / 25000));
  if (n + 1000 > NOFILE) {
    const why = `${NOFILE_NOTE}, fewer than the ${n} sockets one server process needs`;
    problems.push(`idle ${n}: not attempted: ${why}`);
    log(`idle ${n}: not attempted: ${why}`);
    return { n, sources, ok: false, skipped: why };
  }
  // hold past one keep-alive round (the load generator's connect phase is bounded by itself: 20 s)
  const holdS = SMOKE ? 1 : KEEPALIVE_S + 2;
  const server = await startBalancehub(`balancehub idle ${n}`);
  await sleep(300);
  const rss0 = procStatusKb(server.pid, 'VmRSS');
  const hold = path.join(WORK, `hold-${n}`);
  let held = null, pinged = null, rampMs = null;
  const r = await runClient(BIN, benchArgs(server, {
    connections: n, mode: 'idle', threads: Math.min(2, NCPU), duration: holdS, warmup: 0,
    extra: ['--hold-file', hold, '--source-count', String(sources)],
  }), {
    timeoutMs: (20 + holdS) * 1000 + 60000,
    onTick: async (ms) => {
      if (!held && existsSync(hold)) {
        rampMs = ms;
        await sleep(300); // let the last handshakes settle
        held = { rss: procStatusKb(server.pid, 'VmRSS') };
      } else if (held && !pinged && !SMOKE && ms > rampMs + (KEEPALIVE_S + 1) * 1000) {
        pinged = { rss: procStatusKb(server.pid, 'VmRSS') };
      }
    },
  });
  const hwm = procStatusKb(server.pid, 'VmHWM');
  const exit = await stopProc(server);
  const res = r.res;
  const out = { n, sources, rss0, held, pinged, hwm, rampMs, res, exit, err: r.err, ok: !!(held && res && res.connected > 0) };
  if (!out.ok) problems.push(`idle ${n}: ${held ? 'no JSON from the load generator' : 'connections never all up (no hold file)'} (${describe(r)})`);
  else log(`idle ${n}: ${res.connected} connected in ${(rampMs / 1000).toFixed(1)} s, server RSS ${rss0} -> ${held.rss} kB${pinged ? `, ${pinged.rss} kB after a keep-alive round` : ''}`);
  return out;
}

// Heap profile: a fresh release balancehub per protocol with bench/malloc_count.so preloaded,
// which appends the process's running malloc/calloc/realloc/free/bytes totals to a file on
// SIGUSR2. A warm-up run first (the server's one-time allocations), then a short and a long
// measured window with a snapshot around each (the long one is the figure; long minus short shows
// what an extra request costs, without the set-up of the windows' own connections), then N idle
// connections with a snapshot before and once all are up: the set-up of one connection.
const HEAP_C = 16, HEAP_D = 8;
const HEAP_WARM_S = SMOKE ? 0.3 : 1, HEAP_SHORT_S = SMOKE ? 0.2 : 1, HEAP_LONG_S = SMOKE ? 0.5 : 3;
const HEAP_IDLE = SMOKE ? 20 : 1000;
const allocsIn = (a, b) => ['malloc', 'calloc', 'realloc'].reduce((n, k) => n + b[k] - a[k], 0);
// ASan must come first in the preload order: a sanitizer build cannot be profiled this way.
const BIN_ASAN = (() => {
  try { return /libasan/.test(execFileSync('ldd', [BIN], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()); } catch { return false; }
})();

// SIGUSR2 to the server, then the totals line it appends (null if none within 5 s).
async function heapSnap(server, file) {
  const lines = () => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : []);
  const n = lines().length;
  if (server.exited) return null;
  process.kill(server.pid, 'SIGUSR2');
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    const l = lines();
    if (l.length > n) return JSON.parse(l[n]);
    await sleep(10);
  }
  return null;
}

async function heapRun(protocol) {
  const out = { protocol, ok: false };
  if (BIN_ASAN) {
    out.skipped = `${BIN} is built with AddressSanitizer, which cannot run under another LD_PRELOAD malloc`;
    log(`heap profile ${protocol}: not run: ${out.skipped}`);
    return out;
  }
  const file = path.join(WORK, `malloc-count-${protocol}.jsonl`);
  const server = await startBalancehub(`balancehub (heap profile, ${protocol})`, { extraEnv: { LD_PRELOAD: MALLOC_SO, BH_MALLOC_COUNT_FILE: file } });
  const proto = ['--protocol', protocol];
  const rrWindow = async (what, secs) => {
    // no client warm-up: every request the server answers falls between the two snapshots
    const r = await runClient(BIN, benchArgs(server, { connections: HEAP_C, pipeline: HEAP_D, duration: secs, warmup: 0, extra: proto }), { serverPid: server.pid, timeoutMs: secs * 1000 + 60000 });
    check(r, `heap profile ${protocol} ${what}`);
    await sleep(200); // the server's side of the closes
    return r.res;
  };
  try {
    // without the counter loaded, SIGUSR2 would end the server
    let maps = '';
    try { maps = readFileSync(`/proc/${server.pid}/maps`, 'utf8'); } catch { /* gone */ }
    if (!maps.includes(path.basename(MALLOC_SO))) throw new Error(`${MALLOC_SO} is not loaded in the server`);
    const sw = await heapSnap(server, file);
    const warm = await rrWindow('warm-up', HEAP_WARM_S);
    const s0 = await heapSnap(server, file);
    if (sw && s0) out.warm = { n: warm.completed, allocs: allocsIn(sw, s0) };
    const short = await rrWindow('short window', HEAP_SHORT_S);
    const s1 = await heapSnap(server, file);
    const long = await rrWindow('window', HEAP_LONG_S);
    const s2 = await heapSnap(server, file);
    if (!s0 || !s1 || !s2) throw new Error('no totals from the server on SIGUSR2');
    out.short = { n: short.completed, allocs: allocsIn(s0, s1), bytes: s1.bytes - s0.bytes };
    out.long = { n: long.completed, allocs: allocsIn(s1, s2), bytes: s2.bytes - s1.bytes, frees: s2.free - s1.free, d: s1, e: s2 };
    out.perReq = out.long.allocs / out.long.n;
    out.bytesPerReq = out.long.bytes / out.long.n;
    out.marginal = (out.long.allocs - out.short.allocs) / (out.long.n - out.short.n);

    const hold = path.join(WORK, `heap-hold-${protocol}`);
    let s3 = null;
    const r = await runClient(BIN, benchArgs(server, {
      connections: HEAP_IDLE, mode: 'idle', duration: SMOKE ? 0.5 : 1, warmup: 0, extra: [...proto, '--hold-file', hold],
    }), {
      timeoutMs: 90000,
      onTick: async () => {
        if (!s3 && existsSync(hold)) {
          await sleep(200); // let the last handshakes settle
          s3 = await heapSnap(server, file);
        }
      },
    });
    if (!s3 || !r.res || !(r.res.connected > 0)) throw new Error(`idle ${HEAP_IDLE}: ${s3 ? 'no result' : 'no totals once all were up'} (${describe(r)})`);
    out.idle = { n: r.res.connected, allocs: allocsIn(s2, s3), bytes: s3.bytes - s2.bytes };
    out.perConn = out.idle.allocs / out.idle.n;
    out.bytesPerConn = out.idle.bytes / out.idle.n;
    out.ok = [out.perReq, out.bytesPerReq, out.marginal, out.perConn].every(Number.isFinite) && out.long.n > 0;
    if (!out.ok) throw new Error('no numbers');
    log(`heap profile ${protocol}: ${out.long.allocs} allocations for ${out.long.n} requests = ${fmtSmall(out.perReq)} per request ` +
      `(${fmtSmall(out.bytesPerReq)} B), ${fmtSmall(out.marginal)} per extra request; connection set-up ${fmtSmall(out.perConn)} allocations`);
  } catch (e) {
    out.ok = false;
    out.err = e.message;
    problems.push(`heap profile ${protocol}: ${e.message}`);
  } finally {
    out.exit = await stopProc(server);
  }
  return out;
}

async function main() {
  log(`work dir ${WORK}; ${DUR} s windows after ${WARM} s warm-up${SMOKE ? ' (smoke)' : ''}`);
  const pinned = NCPU >= 2; // server on CPU 0, client on CPU 1
  const SCPU = pinned ? 0 : null, CCPU = pinned ? 1 : null;

  // --- 1. capture the real exchange (sizes, the event bytes the peers replay)
  let server = await startBalancehub('balancehub (all cores)');
  const capFile = path.join(WORK, 'capture.json');
  // The load generator numbers invocations per connection; a 6-digit id is typical for a run.
  const cap = JSON.parse(execFileSync('node', [path.join(ROOT, 'bench/peers/capture.mjs'), server.url, server.keyFile, CLIENT_ID, '100000'], { timeout: 15000 }).toString());
  writeFileSync(capFile, JSON.stringify(cap));
  PEER_KEY_FILE = server.keyFile;
  const sizes = ['--req-bytes', String(cap.request_frame), '--resp-bytes', String(cap.response_frames)];
  log(`exchange: request frame ${cap.request_frame} B, response frames ${cap.response_frames} B`);

  if (SMOKE) {
    R.floor = await floorRun('floor', sizes);
    R.rr = await rr(server, 'balancehub rr 4×4', { connections: 4, pipeline: 4 });
    R.server = await stopProc(server);
    const ws = await startProc('ws peer', 'node', [path.join(ROOT, 'bench/peers/ws_server.mjs'), '--event-file', capFile], { readyRe: /listening on (http:\/\/[\d.:]+)/ });
    ws.url = ws.match[1];
    R.ws = await rr(ws, 'ws peer rr 4×4', { connections: 4, pipeline: 4 });
    await stopProc(ws);
    R.idle = [await idleRun(IDLE[0])];
    R.heap = [await heapRun('json'), await heapRun('messagepack')];
    return smokeReport(cap);
  }

  // --- 2. every server at once (each idles while another is driven), then ROUNDS interleaved
  // rounds: the floor, then per load balancehub on all cores, pinned, and the peers pinned the
  // same way, so that neighbours in time are compared; each cell reports its median round.
  const matrix = [[1, 1], [1, PIPE], [64, 1], [64, PIPE], [1024, 1], [1024, PIPE]];
  const peerLoads = [[1, 1], [64, 1], [64, PIPE]];
  const isPeerLoad = (c, d) => peerLoads.some(([pc, pd]) => pc === c && pd === d);
  const nodeServer = (name, script, extra = []) => startProc(name, 'node', [path.join(ROOT, 'bench/peers', script), '--event-file', capFile, ...extra], { cpu: SCPU, readyRe: /listening on (http:\/\/[\d.:]+)/ });
  const servers = { all: server };
  if (pinned) servers.pin = await startBalancehub('balancehub (CPU 0)', { cpu: SCPU, threads: 1 });
  servers.ws = await nodeServer('ws peer', 'ws_server.mjs');
  servers.sio = await nodeServer('socket.io peer', 'socketio_server.mjs');
  servers.sioData = await nodeServer('socket.io peer (ack data)', 'socketio_server.mjs', ['--ack-data']);
  for (const k of ['ws', 'sio', 'sioData']) servers[k].url = servers[k].match[1];

  const runs = {}; // cell key -> runs over the rounds
  const add = (key, run) => (runs[key] ||= []).push(run);
  const sioRun = async (srv, label, c, d, ackData) => {
    const r = await runClient('node', [path.join(ROOT, 'bench/peers/socketio_client.mjs'), '--url', srv.url, '--connections', String(c), '--pipeline', String(d), '--duration-s', String(DUR), '--warmup-s', String(WARM), '--client-id', CLIENT_ID],
      { cpu: CCPU, serverPid: srv.pid, timeoutMs: (DUR + WARM) * 1000 + 90000 });
    check(r, label);
    log(`${label}: ${fmtRps(r.res.throughput_rps)}/s, p50 ${r.res.latency_us.p50} µs, server ${(r.serverCpuS ?? NaN).toFixed(2)} CPU s, other ${fmtS(r.otherCpuS)} s`);
    return { label, connections: c, pipeline: d, ackData, res: r.res, serverCpuS: r.serverCpuS, otherCpuS: r.otherCpuS };
  };
  for (let round = 1; round <= ROUNDS; round++) {
    log(`round ${round} of ${ROUNDS}`);
    add('floor_all', await floorRun(`floor, round ${round}`, sizes));
    if (pinned) add('floor_pin', await floorRun(`floor pinned, round ${round}`, [...sizes, '--server-cpu', '0', '--client-cpu', '1']));
    add('floor_pipe', await floorRun(`floor ${PIPE} in flight, round ${round}`, [...sizes, '--pipeline', String(PIPE), ...(pinned ? ['--server-cpu', '0', '--client-cpu', '1'] : [])]));
    for (const [c, d] of matrix) {
      add(`all ${c}x${d}`, await rr(servers.all, `all cores ${c}×${d}`, { connections: c, pipeline: d, threads: c > 1 ? Math.min(2, NCPU) : 1 }));
      if (pinned) add(`pin ${c}x${d}`, await rr(servers.pin, `CPU 0 ${c}×${d}`, { connections: c, pipeline: d }, { cpu: CCPU }));
      if (isPeerLoad(c, d)) {
        add(`ws ${c}x${d}`, await rr(servers.ws, `ws peer ${c}×${d}`, { connections: c, pipeline: d }, { cpu: CCPU }));
        add(`sio ${c}x${d}`, await sioRun(servers.sio, `socket.io ${c}×${d}`, c, d, false));
        if (c === 64 && d === PIPE) add(`sioData ${c}x${d}`, await sioRun(servers.sioData, `socket.io (ack carries data) ${c}×${d}`, c, d, true));
      }
    }
  }
  R.exits = {};
  for (const [k, srv] of Object.entries(servers)) R.exits[srv.name] = await stopProc(srv);

  // the median round of each cell (by throughput), with the spread over the rounds
  const med = (key) => {
    const xs = runs[key];
    if (!xs) return undefined;
    const sorted = [...xs].sort((a, b) => a.res.throughput_rps - b.res.throughput_rps);
    return { ...sorted[Math.floor((sorted.length - 1) / 2)], spread: [sorted[0].res.throughput_rps, sorted[sorted.length - 1].res.throughput_rps], rounds: xs.length };
  };
  R.floor_all = med('floor_all');
  R.floor_pin = med('floor_pin');
  R.floor_pipe = med('floor_pipe');
  R.all = matrix.map(([c, d]) => med(`all ${c}x${d}`));
  R.pin = pinned ? matrix.map(([c, d]) => med(`pin ${c}x${d}`)) : [];
  R.ws = peerLoads.map(([c, d]) => med(`ws ${c}x${d}`)).filter(Boolean);
  R.sio = [...peerLoads.map(([c, d]) => med(`sio ${c}x${d}`)), med(`sioData 64x${PIPE}`)].filter(Boolean);

  // --- 6. idle connections
  R.idle = [];
  for (const n of IDLE) {
    const r = await idleRun(n);
    R.idle.push(r);
    // Too many for this machine's open-file limit: measure the most that fits instead.
    const fits = Math.floor((NOFILE - 1000) / 1000) * 1000;
    if (r.skipped && fits > Math.max(...IDLE.filter((m) => m < n), 0)) R.idle.push(await idleRun(fits));
  }

  // --- heap profile (allocation counts do not depend on timing: any slot in the run will do)
  R.heap = [await heapRun('json'), await heapRun('messagepack')];

  // --- 7. the durable ledger (its own server: admin API on, data on disk)
  R.ledger = await ledgerRun();

  return fullReport(cap);
}

async function ledgerRun() {
  const parent = env.BENCH_DATA_PARENT || path.join(ROOT, 'build', 'bench');
  mkdirSync(parent, { recursive: true });
  const dir = mkdtempSync(path.join(parent, 'run.'));
  try {
    const tok = path.join(dir, 'admin-token');
    writeFileSync(tok, Buffer.from(Array.from({ length: 24 }, () => Math.floor(Math.random() * 256))).toString('hex'), { mode: 0o600 });
    mkdirSync(path.join(dir, 'data'));
    const args = ['serve', '--listen', '127.0.0.1:0', '--data', path.join(dir, 'data'), '--admin-token-file', tok];
    const split = /--admin-listen/.test(serveHelp);
    if (split) args.push('--admin-listen', '127.0.0.1:0');
    const s = await startProc('balancehub (ledger)', BIN, args, { readyRe: split ? /listening on (http:\/\/[\d.:]+)[\s\S]*admin: (http:\/\/[\d.:]+)/ : /listening on (http:\/\/[\d.:]+)/ });
    const hub = s.match[1], admin = split ? s.match[2] : hub;
    const results = path.join(dir, 'results');
    const r = await runClient(LEDGER, ['--url', admin, '--hub-url', hub, '--admin-token-file', tok, '--duration-ms', String(DUR * 1000), '--warmup-ms', String(WARM * 1000), '--clients', '64', '--server-pid', String(s.pid), '--results', results], { timeoutMs: 300000 });
    const exit = await stopProc(s);
    const fsinfo = (() => {
      try {
        const src = execFileSync('findmnt', ['-n', '-o', 'SOURCE,FSTYPE', '--target', parent]).toString().trim().replace(/\s+/g, ' ');
        const dev = path.basename(src.split(' ')[0]);
        let rot = '';
        try { rot = `, sysfs rotational=${readFileSync(`/sys/class/block/${dev}/queue/rotational`, 'utf8').trim()}`; } catch { /* none */ }
        return src + rot;
      } catch { return '?'; }
    })();
    if (r.code !== 0 || !existsSync(results)) {
      problems.push(`ledger_bench: ${describe(r)}`);
      return { ok: false, exit, err: r.err };
    }
    const kv = Object.fromEntries(readFileSync(results, 'utf8').trim().split('\n').map((l) => l.split('=')));
    log(`ledger: ${kv.conc_ops_per_s} durable ops/s with 64 clients`);
    return { ok: true, kv, exit, fs: fsinfo };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// reports

function machineTable() {
  return [
    '| machine | |', '|---|---|',
    `| date | ${facts.date} |`, `| commit | ${facts.commit} |`, `| CPUs (nproc) | ${NCPU} |`,
    `| CPU | ${facts.cpu} |`, `| memory | ${facts.mem} |`, `| kernel | ${facts.kernel} |`,
    `| Node (peers) | ${facts.node} |`, `| load average before the run | ${facts.load} |`,
  ];
}

function sizeLine(cap) {
  return `Message sizes (captured from balancehub in this run): request = the WebSocket-framed SignalR ` +
    `invocation, ${cap.request_payload} B of JSON + 6 B of masked frame header = **${cap.request_frame} B**; ` +
    `response = the \`executionEvents\` frame (${cap.event_payload} B record, of which the balances \`data\` ` +
    `JSON is ${cap.data_json} B) + the Completion frame (${cap.completion_payload} B record) = ` +
    `**${cap.response_frames} B** with frame headers. The floor sends and answers exactly these sizes.`;
}

function smokeReport(cap) {
  const idle = R.idle[0];
  const lines = ['# balancehub benchmark — smoke run', '', ...machineTable(), '', sizeLine(cap), '',
    '| run | completed | throughput | p50 | p99 |', '|---|---|---|---|---|'];
  for (const [name, run] of [['floor', R.floor], ['balancehub rr 4×4', R.rr], ['ws peer rr 4×4', R.ws]]) {
    const l = run.res.latency_us || {};
    lines.push(`| ${name} | ${run.res.completed} | ${fmtRps(run.res.throughput_rps)}/s | ${fmtUs(l.p50)} | ${fmtUs(l.p99)} |`);
  }
  lines.push('', idle.ok
    ? `Idle: ${idle.res.connected} of ${idle.n} connections held; server VmRSS ${idle.rss0} kB before, ${idle.held.rss} kB held.`
    : `Idle: **failed** (${idle.n} connections).`);
  if (R.server !== 'exit status 0') problems.push(`balancehub shutdown: ${R.server}`);
  if (idle.ok && !(idle.held.rss > 0 && idle.rss0 > 0)) problems.push('idle: no VmRSS numbers');
  lines.push('', ...heapLines());
  for (const h of R.heap) if (!h.skipped && h.exit !== 'exit status 0') problems.push(`balancehub (heap profile, ${h.protocol}) shutdown: ${h.exit}`);
  return lines;
}

// The heap-profile section (the full and the smoke report alike).
function heapLines() {
  const L = ['## Heap profile: allocations per request', '',
    'bench/malloc_count.c, preloaded (`LD_PRELOAD`) into a release balancehub (the options of the other balancehub runs: raised limits, `--admin-listen off`; all cores; a fresh server per protocol), ' +
    'counts every malloc, calloc and realloc call of the whole process (all threads) and the bytes they ask for; on SIGUSR2 the server appends the running totals to a file. ' +
    '**A request is one GetBalances invocation in and its `executionEvents` event and Completion out.** Per protocol (`balancehub bench --mode rr --protocol json|messagepack`):', '',
    `1. warm-up: ${HEAP_C} connections × ${HEAP_D} in flight, ${HEAP_WARM_S} s. It takes the server's one-time allocations (per-thread spare blocks and other buffers made on first use) ` +
    `out of the measured windows: the warm-up run itself counted ${R.heap.map((h) => `${h.protocol === 'json' ? 'JSON' : 'MessagePack'} ${h.warm ? `${fmtN(h.warm.allocs)} allocations for ${fmtN(h.warm.n)} requests` : '—'}`).join(', ')};`,
    `2. SIGUSR2, a short window (${HEAP_C} × ${HEAP_D}, ${HEAP_SHORT_S} s), SIGUSR2, the measured window (${HEAP_C} × ${HEAP_D}, ${HEAP_LONG_S} s), SIGUSR2. ` +
    'No client warm-up in these runs, so every request the server answers falls between the two snapshots; requests = those the load generator counted ' +
    `(the few answered before its window opened or in flight at its end are not counted, which errs high). **Allocations per request** = (malloc + calloc + realloc) in the measured window / its requests. ` +
    `Each window opens its own ${HEAP_C} connections, so their set-up is in the window too: the figure is an upper bound on the per-message cost. ` +
    '**Per extra request** = (allocations of the measured window − of the short one) / (requests of the measured window − of the short one): the same set-up cancels out, and 0 means nothing is allocated per message;',
    `3. connection set-up: a \`--mode idle\` run opens ${HEAP_IDLE} connections (WebSocket upgrade, SignalR handshake, one subscribing GetBalances each) on the same server, ` +
    'SIGUSR2 before it and once all are up; per connection = the difference / the connections. It runs after the windows, so it is in none of them.', '',
    '| protocol | requests in the measured window | allocations in it (malloc + calloc + realloc) | frees | allocations per request | bytes per request | short window: requests, allocations | per extra request | connection set-up, per connection |',
    '|---|---|---|---|---|---|---|---|---|'];
  const name = (h) => (h.protocol === 'json' ? 'JSON' : 'MessagePack');
  for (const h of R.heap) {
    if (h.skipped) {
      L.push(`| ${name(h)} | **not run**: ${h.skipped} | | | | | | | |`);
      continue;
    }
    const lg = h.long;
    const split = lg ? ` (${lg.e.malloc - lg.d.malloc} + ${lg.e.calloc - lg.d.calloc} + ${lg.e.realloc - lg.d.realloc})` : '';
    L.push(`| ${name(h)} | ${fmtN(lg?.n)} in ${HEAP_LONG_S} s | ${fmtN(lg?.allocs)}${split} | ${fmtN(lg?.frees)} | **${fmtSmall(h.perReq)}** | ${fmtSmall(h.bytesPerReq)} B | ` +
      `${h.short ? `${fmtN(h.short.n)}, ${fmtN(h.short.allocs)}` : '—'} | ${fmtSmall(h.marginal)} | ` +
      `${h.idle ? `${fmtSmall(h.perConn)} allocations, ${(h.bytesPerConn / 1024).toFixed(1)} KiB (${fmtN(h.idle.n)} connections)` : '—'} |`);
  }
  const done = R.heap.filter((h) => h.long);
  if (done.length) {
    L.push('', `Allocations in the measured window per connection it opened (/ ${HEAP_C}): ` +
      done.map((h) => `${name(h)} ${fmtSmall(h.long.allocs / HEAP_C)}`).join(', ') + '.');
  }
  const bad = R.heap.filter((h) => !h.ok && !h.skipped);
  if (bad.length) L.push('', ...bad.map((h) => `**${name(h)} failed**: ${(h.err || '').replace(/\n/g, ' / ').slice(0, 400)}`));
  L.push('');
  return L;
}

function fullReport(cap) {
  const L = [];
  const f1 = R.floor_all, fp = R.floor_pin, fpipe = R.floor_pipe;
  const lat = R.all[0], latPin = R.pin[0];
  const pinByKey = (c, d) => R.pin.find((r) => r.connections === c && r.pipeline === d);
  const bestPinPipe = R.pin.filter((r) => r.pipeline > 1).reduce((a, b) => (!a || perCpu(b) > perCpu(a) ? b : a), null);
  const wsBy = (c, d) => R.ws.find((r) => r.connections === c && r.pipeline === d);
  const sioBy = (c, d) => R.sio.find((r) => r.connections === c && r.pipeline === d && !r.ackData);
  // balancehub / peer per server CPU second, per load: [[label, ratio]]
  const peerRatios = (peerOf) => [[1, 1], [64, 1], [64, PIPE]].map(([c, d]) => {
    const b = pinByKey(c, d), p = peerOf(c, d);
    return [`${c}×${d}`, b && p ? perCpu(b) / perCpu(p) : NaN];
  });
  const wsR = peerRatios(wsBy), sioR = peerRatios(sioBy);
  const worst = (rs) => Math.min(...rs.map(([, x]) => (Number.isFinite(x) ? x : -Infinity)));
  const minWs = worst(wsR), minSio = worst(sioR);
  const listR = (rs) => rs.map(([l, x]) => `${fmtX(x)} at ${l}`).join(', ');
  const idleBy = (n) => R.idle.find((i) => i.n === n);
  // bytes of server VmRSS per connection: the larger of "all up" and "after a keep-alive round"
  const perConn = (i) => (i && i.ok ? ((Math.max(i.held.rss, i.pinged?.rss || 0) - i.rss0) * 1024) / i.res.connected : NaN);
  const biggestIdle = R.idle[R.idle.length - 1];

  L.push('# balancehub benchmark', '',
    '`make bench` (bench/run → bench/run.mjs; bench/floor.c, bench/peers/, bench/ledger_bench.c). ' +
    `Every number below comes from this one run: ${DUR} s measured windows after ${WARM} s of warm-up, ` +
    `server and load generator on the same machine over loopback. The floor, balancehub and peer runs were repeated in ${ROUNDS} interleaved rounds ` +
    '(each round: the floor, then for each load balancehub on all cores, pinned, and the peers); every cell shows its median round by throughput ' +
    '(that run\'s latency and CPU too) and the throughput range over the rounds.', '', ...machineTable(), '', sizeLine(cap), '');

  // --- targets
  const rtRatio = latPin && fp ? latPin.res.latency_us.p50 / fp.res.latency_us.p50 : lat.res.latency_us.p50 / f1.res.latency_us.p50;
  const perCore = bestPinPipe ? perCpu(bestPinPipe) : NaN;
  const idle100 = idleBy(100000);
  const measured = R.idle.filter((i) => !i.skipped);
  const idleMet = measured.length && measured.every((i) => i.ok && perConn(i) <= 4096)
    ? (measured.length < R.idle.length ? `yes, for the sizes measured (${R.idle.filter((i) => i.skipped).map((i) => i.n).join(', ')} not run)` : 'yes')
    : '**no**';
  L.push('## Targets (issue 6)', '', '| target | measured | met |', '|---|---|---|',
    `| round-trip p50 ≤ 2× the TCP floor (1 connection, server on CPU 0, client on CPU 1) | ${fmtX(rtRatio)} (${fmtUs(latPin?.res.latency_us.p50 ?? lat.res.latency_us.p50)} vs ${fmtUs((fp ?? f1).res.latency_us.p50)}) | ${yes(rtRatio <= 2)} |`,
    `| ≥ 10× the Node peers' throughput per core (GetBalances per server CPU second; connections × in flight) | \`ws\` server: ${listR(wsR)}; Socket.IO: ${listR(sioR)} | ${yes(minWs >= 10 && minSio >= 10)} |`,
    `| ≥ 500,000 GetBalances/s per core with pipelining (per server CPU second, server on 1 core) | ${fmtRps(perCore)}/s (${bestPinPipe ? `${bestPinPipe.connections}×${bestPinPipe.pipeline}` : '—'}) | ${yes(perCore >= 500000)} |`,
    `| ≤ 4 KiB of server memory per idle connection (VmRSS) | ${R.idle.map((i) => `${i.n}: ${i.ok ? `${(perConn(i) / 1024).toFixed(2)} KiB` : i.skipped ? 'not run' : 'failed'}`).join('; ')} | ${idleMet} |`,
    `| 100,000 concurrent connections | ${idle100 ? (idle100.ok ? `${idle100.res.connected} held` : idle100.skipped ? `not measured: ${NOFILE_NOTE}${R.idle.filter((i) => i.ok).map((i) => `; ${i.res.connected} held`).pop() || ''}` : `**failed**: ${idle100.res ? `${idle100.res.connected} connected` : 'no result'}`) : 'not run'} | ${yes(idle100 && idle100.ok && idle100.res.connected >= 100000)} |`,
    `| no per-message malloc on the hot path (heap profile: allocations per GetBalances request, ${HEAP_C} × ${HEAP_D} after a warm-up; met when < 0.01) | ` +
    `${R.heap.map((h) => `${h.protocol === 'json' ? 'JSON' : 'MessagePack'} ${h.ok ? `${fmtSmall(h.perReq)} (per extra request ${fmtSmall(h.marginal)})` : h.skipped ? 'not run' : 'failed'}`).join('; ')} | ` +
    `${yes(R.heap.length && R.heap.every((h) => h.ok && h.perReq < 0.01))} |`,
    '');

  // --- floor and round trip
  L.push('## Round trip: GetBalances vs the TCP floor', '',
    'Floor: bench/floor.c, one loopback TCP connection, a forked server answering each request with one response ' +
    'of the sizes above (all answers of one read in one write), TCP_NODELAY both sides. GetBalances: ' +
    '`balancehub bench --mode rr`, one WebSocket connection, one invocation in flight.', '',
    '| | floor p50 | floor p99 | GetBalances p50 | GetBalances p99 | ratio p50 | ratio p99 |', '|---|---|---|---|---|---|---|');
  const rtRow = (name, f, g) => f && g && L.push(`| ${name} | ${fmtUs(f.res.latency_us.p50)} | ${fmtUs(f.res.latency_us.p99)} | ${fmtUs(g.res.latency_us.p50)} | ${fmtUs(g.res.latency_us.p99)} | ${fmtX(g.res.latency_us.p50 / f.res.latency_us.p50)} | ${fmtX(g.res.latency_us.p99 / f.res.latency_us.p99)} |`);
  rtRow('server on CPU 0, client on CPU 1', fp, latPin);
  rtRow('unpinned (both on all cores)', f1, lat);
  L.push('', `Other CPU time on the machine during these windows (not server, not client): floor ${fmtS((fp ?? f1).otherCpuS)} / ${fmtS(f1.otherCpuS)} s, ` +
    `GetBalances ${fmtS(latPin?.otherCpuS)} / ${fmtS(lat.otherCpuS)} s (pinned / unpinned).`);
  L.push('', `Floor throughput: ${fmtRps(f1.res.throughput_rps)} round trips/s with 1 in flight; ${fmtRps(fpipe.res.throughput_rps)}/s with ${PIPE} in flight ` +
    `(p50 ${fmtUs(fpipe.res.latency_us.p50)}; floor server ${fpipe.res.server_cpu_s.toFixed(2)} CPU s in ${fpipe.res.duration_s.toFixed(1)} s = ${fmtRps(fpipe.res.completed / fpipe.res.server_cpu_s)} per CPU second).`, '');

  // --- throughput
  const tpTable = (title, rows, note) => {
    L.push(`### ${title}`, '', note, '',
      `| connections × in flight | GetBalances/s | range over ${ROUNDS} rounds | p50 | p99 | p99.9 | server CPU (cores busy) | per server CPU second | client CPU s | other CPU s | errors |`,
      '|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      const l = r.res.latency_us;
      const busy = r.serverCpuS / r.res.duration_s;
      L.push(`| ${r.connections} × ${r.pipeline} | ${fmtRps(r.res.throughput_rps)} | ${fmtRange(r)} | ${fmtUs(l.p50)} | ${fmtUs(l.p99)} | ${fmtUs(l.p999)} | ${r.serverCpuS?.toFixed(2) ?? '—'} s (${Number.isFinite(busy) ? busy.toFixed(2) : '—'}) | ${fmtRps(perCpu(r))} | ${r.res.client_cpu_s ?? '—'} | ${fmtS(r.otherCpuS)} | ${errStr(r.res.errors)} |`);
    }
    L.push('');
  };
  L.push('## Throughput', '');
  if (R.pin.length) tpTable('Server pinned to CPU 0 (`taskset -c 0`, one I/O thread), load generator on CPU 1', R.pin, 'The load generator has one core to itself; where the server is not saturated (cores busy < 1), the client is the limit.');
  tpTable('Server on all cores', R.all, `Server with its default thread count; the load generator (${Math.min(2, NCPU)} threads when connections > 1) shares the same ${NCPU} cores.`);

  // --- peers
  L.push('## Peers: the same workload on Node', '',
    '- **`ws` peer** (bench/peers/ws_server.mjs): `ws` ' + `${pkgVersion('ws')}` + ' speaking just enough SignalR JSON: handshake `{}`, then for every GetBalances the ' +
    'captured event record, byte for byte, and a Completion for its invocationId. Driven by the same `balancehub bench`, so client and bytes on the wire are identical: the ceiling for a Node server.',
    '- **Socket.IO** (bench/peers/socketio_server.mjs): `socket.io` ' + `${pkgVersion('socket.io')}` + ', event `GetBalances` with an ack; it emits `executionEvents` with the same envelope ' +
    '(built per request) and then acknowledges with `null`, as balancehub sends the event and then a Completion with result null. Driven by `socket.io-client` ' +
    `${pkgVersion('socket.io-client')}` + ' (bench/peers/socketio_client.mjs, WebSocket transport, one Node process). One more row has the ack carry the balances `data` as well.',
    '', 'Each server pinned to CPU 0, its client on CPU 1; each server is one process and its CPU time is read from /proc/PID/stat (utime + stime) over the measured window. ' +
    '"per CPU s" = GetBalances answered per second of server CPU: the fair comparison when the client, not the server, is the limit.', '',
    `| load (connections × in flight) | server | GetBalances/s | range over ${ROUNDS} rounds | p50 | p99 | server CPU (cores busy) | per server CPU s | client CPU s | other CPU s | balancehub / peer, throughput | balancehub / peer, per CPU s |`,
    '|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const [c, d] of [[1, 1], [64, 1], [64, PIPE]]) {
    const b = pinByKey(c, d);
    const rows = [['balancehub', b], ['ws', wsBy(c, d)], ['Socket.IO', sioBy(c, d)]];
    if (c === 64 && d === PIPE) rows.push(['Socket.IO, ack carries data', R.sio.find((r) => r.ackData)]);
    for (const [name, r] of rows) {
      if (!r) continue;
      const l = r.res.latency_us;
      const busy = r.serverCpuS / r.res.duration_s;
      const ratios = name === 'balancehub' || !b ? '— | —' : `${fmtX(b.res.throughput_rps / r.res.throughput_rps)} | ${fmtX(perCpu(b) / perCpu(r))}`;
      L.push(`| ${c} × ${d} | ${name} | ${fmtRps(r.res.throughput_rps)} | ${fmtRange(r)} | ${fmtUs(l.p50)} | ${fmtUs(l.p99)} | ${r.serverCpuS?.toFixed(2) ?? '—'} s (${Number.isFinite(busy) ? busy.toFixed(2) : '—'}) | ${fmtRps(perCpu(r))} | ${r.res.client_cpu_s ?? '—'} | ${fmtS(r.otherCpuS)} | ${ratios} |`);
    }
  }
  L.push('');

  // --- idle
  L.push('## Idle connections', '',
    'A fresh server (all cores) per size; `balancehub bench --mode idle` opens the connections from 127.0.0.1..127.0.0.K (WebSocket upgrade, ' +
    'SignalR handshake and one GetBalances, so each connection is subscribed to updates; then silence), writes the hold file once all are up, ' +
    `and holds them ${KEEPALIVE_S + 2} s: past the server's first keep-alive round (a ping to every connection every ${KEEPALIVE_S} s). ` +
    'Server VmRSS from /proc before the first connection, once all are up, and after the keep-alive round; per connection = the larger ' +
    'growth / connections. Kernel memory (socket structures and buffers) is not in VmRSS and not counted.', '',
    '| connections | sources | connected | time to connect | server VmRSS before → all up → after keep-alive | server RSS per connection | result |',
    '|---|---|---|---|---|---|---|');
  const mib = (kb) => (Number.isFinite(kb) ? (kb / 1024).toFixed(1) : '—');
  for (const i of [...R.idle].sort((a, b) => a.n - b.n)) {
    if (i.ok) {
      L.push(`| ${i.n} | ${i.sources} | ${i.res.connected} | ${(i.rampMs / 1000).toFixed(1)} s | ${mib(i.rss0)} → ${mib(i.held.rss)} → ${i.pinged ? mib(i.pinged.rss) : '—'} MiB | ${(perConn(i) / 1024).toFixed(2)} KiB | ${errStr(i.res.errors) === '0' ? 'ok' : `errors: ${errStr(i.res.errors)}`} |`);
    } else {
      const tail = (i.err || '').trim().split('\n').slice(-3).join(' / ').replace(/\|/g, '\\|').slice(0, 300);
      const what = i.skipped ? `**not run**: ${i.skipped}` : `**failed**: ${i.held ? 'no result' : 'not all connections came up'}${tail ? ` (${tail})` : ''}`;
      L.push(`| ${i.n} | ${i.sources} | ${i.res ? i.res.connected : '—'} | — | — | — | ${what} |`);
    }
  }
  L.push('');

  L.push(...heapLines());

  // --- ledger
  L.push('## Durable ledger and update fan-out', '');
  const g = R.ledger.kv || {};
  if (!R.ledger.ok) {
    L.push(`**ledger_bench failed**: ${(R.ledger.err || '').trim().split('\n').slice(-3).join(' / ')}`, '');
  } else {
    const chk = (v, c) => yes(c(Number(v)));
    L.push(`bench/ledger_bench.c against its own server (admin API on, SQLite store on ${R.ledger.fs}; fresh data directory). ` +
      'Every admin op answers 200 only after its group commit is durable (fsync). Latencies from CLOCK_MONOTONIC, nearest-rank percentiles.', '',
      '| measurement | result | target | met |', '|---|---|---|---|',
      `| durable deposits/s, 1 client, sequential | ${g.seq_ops_per_s} ops/s (p50 ${g.seq_p50_us} µs, p99 ${g.seq_p99_us} µs) | — | — |`,
      `| durable deposits/s, ${g.conc_clients} concurrent keep-alive clients | ${g.conc_ops_per_s} ops/s (p50 ${g.conc_p50_us} µs, p99 ${g.conc_p99_us} µs) | ≥ 50000 ops/s | ${chk(g.conc_ops_per_s, (v) => v >= 50000)} |`,
      `| server CPU per durable op (all threads), sequential / concurrent | ${g.seq_server_cpu_us_per_op} µs / ${g.conc_server_cpu_us_per_op} µs (${g.seq_server_cores} / ${g.conc_server_cores} cores busy) | — | — |`,
      `| fan-out: admin ack → client receipt (t_event − t_ack, signed) | p50 ${g.fan_event_minus_ack_p50_us} µs, p99 ${g.fan_event_minus_ack_p99_us} µs | p99 < 1000 µs | ${chk(g.fan_event_minus_ack_p99_us, (v) => v < 1000)} |`,
      `| fan-out: admin send → client receipt (t_event − t_send) | p50 ${g.fan_event_minus_send_p50_us} µs, p99 ${g.fan_event_minus_send_p99_us} µs | — | — |`,
      `| admin send → ack, one op at a time (t_ack − t_send) | p50 ${g.fan_ack_p50_us} µs, p99 ${g.fan_ack_p99_us} µs | — | — |`, '',
      `Fan-out: one SignalR JSON WebSocket client subscribed to one user while a driver sends ${g.fan_ops} deposits one at a time, each waiting for both its ` +
      `HTTP 200 and its \`account.balances.update\`; the update arrived before the admin answer in ${g.fan_event_before_ack} of ${g.fan_ops} ops ` +
      `(the server publishes, then answers). Ops counted: seq ${g.seq_ops} in ${g.seq_seconds} s, concurrent ${g.conc_ops} in ${g.conc_seconds} s. ` +
      `Server shutdown after the run: ${R.ledger.exit}.`, '');
  }

  // --- how
  const exits = [...Object.entries(R.exits), ...R.idle.map((i) => [`balancehub (idle ${i.n})`, i.exit]),
    ...R.heap.map((h) => [`balancehub (heap profile, ${h.protocol})`, h.exit])].filter(([, e]) => e);
  L.push('## How it was measured', '',
    '- balancehub: `serve --demo --max-connections-per-key 1000000 --rate-limit 1000000000 --rate-burst 1000000000 --max-connections 1000000 --admin-listen off --log-level warn` ' +
    '(`--threads 1` when pinned, where supported), release build, fresh data directory; the load generator is `balancehub bench` ' +
    `(client id ${CLIENT_ID}, the demo key), pipelined runs keep ${PIPE} invocations in flight per connection.`,
    '- Throughput and latency come from the load generator\'s JSON (nearest-rank percentiles over the measured window). Server CPU is sampled every 50 ms from /proc/PID/stat and ' +
    'interpolated over the client\'s measured window (its last duration_s seconds before it exits).',
    '- "other CPU s": busy CPU time of the whole machine in the window (/proc/stat) minus the server\'s and the client\'s: other sessions on a shared machine. ' +
    'Where it is large, that run competed for its cores and its numbers are low.',
    `- Open files: ${NOFILE_NOTE} (\`prlimit --nofile\`); pinning with \`taskset -c\`.`,
    `- Shutdowns: ${exits.map(([n, e]) => `${n}: ${e}`).join('; ')}.`,
    `- Wall time of the whole run: ${((Date.now() - T0) / 1000).toFixed(0)} s.`, '');
  if (problems.length) L.push('## Problems in this run', '', ...problems.map((p) => `- ${p.replace(/\n/g, ' / ').slice(0, 600)}`), '');
  return L;
}

function pkgVersion(name) {
  try { return JSON.parse(readFileSync(path.join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version; } catch { return '?'; }
}

// ---------------------------------------------------------------------------------------------

const MARKER = '<!-- Hand-written notes below this line are kept by bench/run; everything above is regenerated. -->';
try {
  const lines = await main();
  const text = lines.join('\n') + '\n';
  if (SMOKE) {
    if (OUT) {
      mkdirSync(path.dirname(path.resolve(OUT)), { recursive: true });
      writeFileSync(OUT, text);
    }
    process.stdout.write(text);
    cleanup();
    if (problems.length) {
      console.error(`bench/run --smoke: FAILED\n${problems.map((p) => `- ${p}`).join('\n')}`);
      process.exit(1);
    }
    console.error(`bench/run --smoke: ok (${((Date.now() - T0) / 1000).toFixed(1)} s)`);
  } else {
    const dest = OUT || path.join(ROOT, 'bench', 'report.md');
    let notes = '';
    if (existsSync(dest)) {
      const old = readFileSync(dest, 'utf8');
      const i = old.indexOf(MARKER);
      if (i >= 0) notes = old.slice(i);
    }
    writeFileSync(dest + '.tmp', text + (notes ? '\n' + notes : `\n${MARKER}\n`));
    renameSync(dest + '.tmp', dest);
    process.stdout.write(text);
    cleanup();
    console.error(`bench/run: wrote ${path.relative(ROOT, dest)} in ${((Date.now() - T0) / 1000).toFixed(0)} s`);
    if (problems.length) console.error(`bench/run: problems:\n${problems.map((p) => `- ${p}`).join('\n')}`);
  }
} catch (e) {
  fail(e.stack || String(e));
}
