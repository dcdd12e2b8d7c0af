// Load generator for the Socket.IO peer, the counterpart of `balancehub bench --mode rr`:
// N socket.io-client connections (WebSocket transport), D "GetBalances" emits in flight on each,
// latency = emit -> ack. Optionally spread over P worker processes. Prints one JSON object shaped
// like `balancehub bench --format json`. Bounded: connecting, warm-up and the window all time out.
//   node socketio_client.mjs --url http://HOST:PORT [--connections N] [--pipeline D]
//        [--duration-s S] [--warmup-s W] [--client-id ID] [--workers P]
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const o = {
  url: opt('--url'),
  connections: Number(opt('--connections', '1')),
  pipeline: Number(opt('--pipeline', '1')),
  duration: Number(opt('--duration-s', '3')),
  warmup: Number(opt('--warmup-s', '0.5')),
  clientId: opt('--client-id', 'user-123'),
  workers: Number(opt('--workers', '1')),
};
const CONNECT_TIMEOUT_MS = 30000;
if (!o.url || !(o.connections >= 1) || !(o.pipeline >= 1) || !(o.duration > 0) || !(o.warmup >= 0) || !(o.workers >= 1)) {
  console.error('usage: node socketio_client.mjs --url http://HOST:PORT [--connections N] [--pipeline D] ' +
    '[--duration-s S] [--warmup-s W] [--client-id ID] [--workers P]');
  process.exit(2);
}
const cpuS = (u) => (u.user + u.system) / 1e6;

// One process's share: connect, wait for "go", warm up, measure, report the raw samples.
async function worker(n, send, waitGo) {
  const sockets = [];
  const errors = { connect: 0, disconnect: 0 };
  await new Promise((resolve) => {
    let settled = 0;
    const timer = setTimeout(resolve, CONNECT_TIMEOUT_MS);
    const done = () => { if (++settled === n) { clearTimeout(timer); resolve(); } };
    for (let i = 0; i < n; i++) {
      const s = io(o.url, { transports: ['websocket'], forceNew: true, reconnection: false, timeout: CONNECT_TIMEOUT_MS });
      s.once('connect', () => { sockets.push(s); done(); });
      s.once('connect_error', () => { errors.connect++; done(); });
    }
  });
  await waitGo(sockets.length);
  let measuring = false, running = true, completed = 0, events = 0;
  let samples = new Float64Array(1 << 16), ns = 0;
  const record = (us) => {
    if (ns === samples.length) { const b = new Float64Array(ns * 2); b.set(samples); samples = b; }
    samples[ns++] = us;
  };
  for (const s of sockets) {
    s.on('executionEvents', () => { if (measuring) events++; });
    s.on('disconnect', () => { if (running) errors.disconnect++; });
    const fire = () => {
      const t = performance.now();
      s.emit('GetBalances', o.clientId, () => {
        if (measuring) { completed++; record((performance.now() - t) * 1000); }
        if (running) fire();
      });
    };
    for (let d = 0; d < o.pipeline; d++) fire();
  }
  await new Promise((r) => setTimeout(r, o.warmup * 1000));
  measuring = true;
  const t0 = performance.now(), c0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, o.duration * 1000));
  measuring = false;
  running = false;
  const wall = (performance.now() - t0) / 1000, cpu = cpuS(process.cpuUsage(c0));
  for (const s of sockets) s.close();
  send({ connected: sockets.length, completed, events, errors, wall, cpu, samples: Array.from(samples.subarray(0, ns)) });
}

function summarize(parts) {
  const all = Float64Array.from(parts.flatMap((p) => p.samples)).sort();
  const pct = (p) => (all.length ? all[Math.max(0, Math.ceil(p * all.length) - 1)] : 0);
  const sum = parts.reduce((a, p) => a + p.completed, 0);
  const wall = Math.max(...parts.map((p) => p.wall));
  const errors = { connect: 0, disconnect: 0 };
  for (const p of parts) { errors.connect += p.errors.connect; errors.disconnect += p.errors.disconnect; }
  const r2 = (x) => Math.round(x * 100) / 100;
  return {
    mode: 'rr', client: 'socket.io-client', connections: o.connections,
    connected: parts.reduce((a, p) => a + p.connected, 0), pipeline: o.pipeline, threads: o.workers,
    duration_s: r2(wall), completed: sum, events: parts.reduce((a, p) => a + p.events, 0), errors,
    throughput_rps: Math.round((sum / wall) * 10) / 10,
    latency_us: {
      p50: r2(pct(0.5)), p90: r2(pct(0.9)), p99: r2(pct(0.99)), p999: r2(pct(0.999)),
      max: r2(all.length ? all[all.length - 1] : 0), mean: r2(all.length ? all.reduce((a, b) => a + b, 0) / all.length : 0),
    },
    client_cpu_s: Math.round(parts.reduce((a, p) => a + p.cpu, 0) * 1000) / 1000,
  };
}

if (args.includes('--worker')) {
  // A child: connections from --worker-connections; "go" and the result travel over IPC.
  const n = Number(opt('--worker-connections', '1'));
  const go = new Promise((r) => process.on('message', (m) => m === 'go' && r()));
  await worker(n, (res) => process.send(res, () => process.exit(0)), (connected) => { process.send({ ready: connected }); return go; });
} else if (o.workers === 1) {
  let res;
  await worker(o.connections, (r) => { res = r; }, async () => {});
  console.log(JSON.stringify(summarize([res])));
  process.exit(0);
} else {
  const self = fileURLToPath(import.meta.url);
  const kids = [], parts = [];
  let ready = 0;
  const allReady = new Promise((resolve) => {
    for (let w = 0; w < o.workers; w++) {
      const n = Math.floor(o.connections / o.workers) + (w < o.connections % o.workers ? 1 : 0);
      const k = fork(self, [...args, '--worker', '--worker-connections', String(n)]);
      k.on('message', (m) => {
        if (m.ready !== undefined) { if (++ready === o.workers) resolve(); } else parts.push(m);
      });
      kids.push(k);
    }
  });
  const bound = setTimeout(() => { console.error('socketio_client: workers did not finish'); process.exit(1); },
    CONNECT_TIMEOUT_MS + (o.warmup + o.duration) * 1000 + 30000);
  await allReady;
  for (const k of kids) k.send('go');
  await Promise.all(kids.map((k) => new Promise((r) => k.on('exit', r))));
  clearTimeout(bound);
  console.log(JSON.stringify(summarize(parts)));
}
