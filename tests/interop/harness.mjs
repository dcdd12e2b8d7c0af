// Shared helpers for the Node interop tests: temp data dirs, the offline admin CLI, a
// balancehub server per test file (stop() asserts a clean exit 0, which under ASan also means
// "no leaks"), @microsoft/signalr connections, and raw HTTP / WebSocket sockets for the tests
// that must send what no well-behaved client sends. Every wait has a timeout.
//
// Secrets never in logs: with BALANCEHUB_TEST_LOG_DIR set, every server's stderr (its logs) is
// appended to a file there, and every secret the tests know (demo keys, keys from admin answers,
// admin tokens) to its `secrets` file; tests/system/secrets_scan.mjs checks the one against the
// other after the run (`make interop`).

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
export const signalR = require('@microsoft/signalr');

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const NODE_MODULES = path.join(REPO_ROOT, 'node_modules');
export const HUB_PATH = '/ExecutionLiveServer/v1';
export const RS = '\x1e';

export function binPath() {
  const bin = process.env.BALANCEHUB_BIN || path.join(REPO_ROOT, 'build', 'balancehub');
  if (!existsSync(bin)) {
    throw new Error(`balancehub binary not found at ${bin}: run \`make build/balancehub\` or set BALANCEHUB_BIN`);
  }
  return bin;
}

// ---------------------------------------------------------------------------------------------
// small utilities

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const tail = (s, n = 4096) => (s.length > n ? '…' + s.slice(-n) : s);

export function makeTempDir(prefix = 'balancehub-interop-') {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function removeTempDir(dir) {
  if (dir) rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// secrets and server logs (BALANCEHUB_TEST_LOG_DIR)

const LOG_DIR = process.env.BALANCEHUB_TEST_LOG_DIR || null;
const recorded = new Set();
// Shorter strings would match ordinary text; no real secret of the tests is that short.
const MIN_SECRET_LEN = 8;

// Records a secret (API key, admin token) for the log scan; a no-op without a log dir.
export function recordSecret(secret) {
  if (typeof secret !== 'string') return;
  const s = secret.trim();
  if (!LOG_DIR || s.length < MIN_SECRET_LEN || /[\r\n]/.test(s) || recorded.has(s)) return;
  recorded.add(s);
  mkdirSync(LOG_DIR, { recursive: true });
  appendFileSync(path.join(LOG_DIR, 'secrets'), s + '\n');
}

// Records every "apiKey" / "key" string field anywhere in a parsed JSON value (an admin answer).
// Returns the value, so helpers can wrap their result in it.
export function recordSecrets(value) {
  if (Array.isArray(value)) {
    for (const v of value) recordSecrets(v);
  } else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if ((k === 'apiKey' || k === 'key') && typeof v === 'string') recordSecret(v);
      else recordSecrets(v);
    }
  }
  return value;
}

let logSeq = 0;

// The file a new server's stderr goes to (null without a log dir): named after the test file.
function serverLogFile() {
  if (!LOG_DIR) return null;
  mkdirSync(LOG_DIR, { recursive: true });
  const base = path.basename(process.argv[1] ?? 'node').replace(/[^A-Za-z0-9_.-]/g, '_');
  return path.join(LOG_DIR, `${base}.${process.pid}.${++logSeq}.log`);
}

// The admin token a server is given (--admin-token-file F, or env), recorded as a secret.
function recordAdminToken(args, childEnv) {
  for (let i = 0; i < args.length; i++) {
    let file = null;
    if (args[i] === '--admin-token-file' && i + 1 < args.length) file = args[i + 1];
    else if (args[i].startsWith('--admin-token-file=')) file = args[i].slice('--admin-token-file='.length);
    if (file) {
      try {
        recordSecret(readFileSync(file, 'utf8').split(/\r?\n/)[0]);
      } catch {
        // A missing file is the server's error to report.
      }
    }
  }
  recordSecret(childEnv.BALANCEHUB_ADMIN_TOKEN);
}

// ---------------------------------------------------------------------------------------------
// offline admin CLI

// Runs the offline admin CLI, `balancehub admin --data DIR ARGS...` (the server must not be
// running on DIR); returns the trimmed stdout (one JSON line), throws with stderr on failure.
export function admin(dataDir, ...args) {
  const argv = ['admin', '--data', dataDir, ...args];
  let out;
  try {
    out = execFileSync(binPath(), argv, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
    }).trim();
  } catch (err) {
    const e = new Error(
      `balancehub ${argv.join(' ')} failed (status ${err.status}, signal ${err.signal}):\n` +
        `stdout: ${err.stdout ?? ''}\nstderr: ${err.stderr ?? ''}`,
    );
    e.cause = err;
    throw e;
  }
  try {
    recordSecrets(JSON.parse(out)); // create-key answers carry a key
  } catch {
    // not JSON: nothing to record
  }
  return out;
}

// admin(), parsed: every admin command prints one JSON value.
export function adminJson(dataDir, ...args) {
  return JSON.parse(admin(dataDir, ...args));
}

// ---------------------------------------------------------------------------------------------
// the server

const READY_RE = /listening on (https?:\/\/127\.0\.0\.1:(\d+))/;
const ADMIN_RE = /^admin: (https?:\/\/\S+?:(\d+))\/?\r?\n/m; // a whole line: the port may come in pieces

// The value of option `name` in args (the last one wins, like the server's parser), or undefined.
function flagValue(args, name) {
  let v;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) v = args[i + 1];
    else if (args[i].startsWith(`--${name}=`)) v = args[i].slice(name.length + 3);
  }
  return v;
}

// The admin-listen a config file sets, or undefined (also when the file cannot be read).
function configAdminListen(file) {
  try {
    const m = /^[ \t]*admin-listen[ \t]*=[ \t]*(\S*)[ \t]*\r?$/m.exec(readFileSync(file, 'utf8'));
    return m ? m[1] : undefined;
  } catch {
    return undefined;
  }
}

// Starts `balancehub serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data DIR [--demo]
// EXTRA...` and waits for its "listening on" line and, when the operations listener is on, its
// "admin:" line. Returns {url, hubUrl, port, adminUrl, adminPort, apiKey, dataDir, proc,
// connect(), stop(), ...}; adminUrl (the operations listener: /admin/, /metrics) is null when
// it is off. An admin-listen of the caller's (extraArgs, else env BALANCEHUB_ADMIN_LISTEN, else
// the --config / BALANCEHUB_CONFIG file) replaces the harness's.
// env: variables to set (a value of undefined removes one) on top of this process's environment.
export async function startServer({ dataDir, demo = true, extraArgs = [], ownDataDir, env } = {}) {
  const bin = binPath();
  const dir = dataDir ?? makeTempDir();
  const removeDir = ownDataDir ?? dataDir === undefined;
  const configFile = flagValue(extraArgs, 'config') ?? env?.BALANCEHUB_CONFIG;
  let adminListen =
    flagValue(extraArgs, 'admin-listen') ?? (env?.BALANCEHUB_ADMIN_LISTEN || undefined) ?? (configFile ? configAdminListen(configFile) : undefined);
  const ownAdmin = [];
  if (adminListen === undefined) {
    adminListen = '127.0.0.1:0'; // never the default port: test servers run side by side
    ownAdmin.push('--admin-listen', adminListen);
  }
  const expectAdmin = adminListen !== 'off';
  // Two I/O threads unless the caller picks (flag, env BALANCEHUB_THREADS or config file): every
  // test then also crosses threads (connections migrate, updates are posted to both loops).
  const configThreads = () => {
    try {
      return /^[ \t]*threads[ \t]*=/m.test(readFileSync(configFile, 'utf8')) ? 'file' : undefined;
    } catch {
      return undefined;
    }
  };
  const envThreads = (env && 'BALANCEHUB_THREADS' in env ? env.BALANCEHUB_THREADS : process.env.BALANCEHUB_THREADS) || undefined;
  const callerThreads = flagValue(extraArgs, 'threads') ?? envThreads ?? (configFile ? configThreads() : undefined);
  const ownThreads = callerThreads === undefined ? ['--threads', '2'] : [];
  const args = ['serve', '--listen', '127.0.0.1:0', ...ownAdmin, ...ownThreads, '--data', dir, ...(demo ? ['--demo'] : []), ...extraArgs];
  const childEnv = { ...process.env };
  for (const [k, v] of Object.entries(env ?? {})) {
    if (v === undefined) delete childEnv[k];
    else childEnv[k] = v;
  }
  recordAdminToken(args, childEnv);
  const logFile = serverLogFile();
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv });
  let stdout = '';
  let stderr = '';
  let exit = null; // {code, signal} once exited
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exit = { code, signal };
      resolve(exit);
    });
  });
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  // Keep draining both pipes for the server's whole life so it can never block on a full pipe.
  proc.stderr.on('data', (d) => {
    stderr = tail(stderr + d, 1 << 20);
    if (logFile) appendFileSync(logFile, d);
    if (process.env.BALANCEHUB_TEST_STDERR) process.stderr.write(d);
  });
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      stdout = tail(stdout + d, 1 << 20);
      const m = READY_RE.exec(stdout);
      if (m && (!expectAdmin || ADMIN_RE.test(stdout))) resolve(m);
    });
    proc.on('error', reject);
    exited.then(({ code, signal }) =>
      reject(new Error(`server exited before it was ready (code ${code}, signal ${signal})`)),
    );
  });

  let match;
  try {
    match = await withTimeout(ready, 10_000, `server "listening on"${expectAdmin ? ' and "admin:" lines' : ' line'}`);
  } catch (err) {
    if (!exit) proc.kill('SIGKILL');
    await withTimeout(exited, 5_000, 'killed server exit').catch(() => {});
    if (removeDir) removeTempDir(dir);
    throw new Error(`${err.message}\nargs: ${args.join(' ')}\nstdout:\n${tail(stdout)}\nstderr:\n${tail(stderr)}`);
  }

  const url = match[1];
  const adminMatch = ADMIN_RE.exec(stdout);
  const server = {
    url,
    port: Number(match[2]),
    hubUrl: url + HUB_PATH,
    adminUrl: adminMatch ? adminMatch[1] : null,
    adminPort: adminMatch ? Number(adminMatch[2]) : null,
    dataDir: dir,
    proc,
    apiKey: null,
    connections: new Set(),
    sockets: new Set(),
    stdout: () => stdout,
    stderr: () => stderr,
    alive: () => exit === null,
    connect: (opts = {}) => {
      const conn = buildConnection(server.hubUrl, { key: server.apiKey, ...opts });
      server.connections.add(conn);
      return conn;
    },
    // Appends the server's stderr to an assertion error so a failing test shows what the server said.
    explain: (err) => {
      if (err && typeof err === 'object' && !err.serverStderrAttached) {
        err.serverStderrAttached = true;
        err.message += `\n--- balancehub stderr (tail) ---\n${tail(stderr) || '(empty)'}`;
      }
      return err;
    },
    stop: async () => {
      for (const conn of server.connections) {
        await withTimeout(conn.stop(), 5_000, 'HubConnection.stop()').catch(() => {});
      }
      server.connections.clear();
      for (const s of server.sockets) s.destroy();
      server.sockets.clear();
      try {
        assert.equal(exit, null, 'server died before stop()');
        proc.kill('SIGTERM');
        try {
          await withTimeout(exited, 10_000, 'server exit after SIGTERM');
        } catch (err) {
          proc.kill('SIGKILL');
          await withTimeout(exited, 5_000, 'server exit after SIGKILL').catch(() => {});
          throw err;
        }
        assert.deepEqual(exit, { code: 0, signal: null }, 'server exit status after SIGTERM (non-zero under ASan = leak)');
      } catch (err) {
        throw server.explain(err);
      } finally {
        if (removeDir) removeTempDir(dir);
      }
    },
  };

  if (demo) {
    try {
      server.apiKey = readFileSync(path.join(dir, 'demo-api-key'), 'utf8').trim();
      recordSecret(server.apiKey);
      assert.ok(server.apiKey.length > 0, 'demo-api-key is empty');
    } catch (err) {
      await server.stop().catch(() => {});
      throw err;
    }
  }
  return server;
}

// Wraps a test body so that a failure shows the server's stderr. `getServer` is a function
// because the server is usually started in a before() hook.
export function explained(getServer, fn) {
  return async (t) => {
    try {
      return await fn(t);
    } catch (err) {
      const server = getServer();
      throw server ? server.explain(err) : err;
    }
  };
}

// ---------------------------------------------------------------------------------------------
// @microsoft/signalr

export function buildConnection(hubUrl, { key, transport = signalR.HttpTransportType.WebSockets, logLevel, options = {} } = {}) {
  const httpOptions = { transport, ...options };
  if (key !== undefined && key !== null) httpOptions.accessTokenFactory = () => key;
  return new signalR.HubConnectionBuilder()
    .withUrl(hubUrl, httpOptions)
    .configureLogging(logLevel ?? (process.env.BALANCEHUB_TEST_SIGNALR_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None))
    .build();
}

export async function startConnection(conn, ms = 5_000) {
  await withTimeout(conn.start(), ms, 'HubConnection.start()');
  return conn;
}

// Records every `name` event of a connection; next(n) resolves with the next n not yet taken.
export class EventQueue {
  constructor(conn, name = 'executionEvents') {
    this.name = name;
    this.items = [];
    this.taken = 0;
    this.waiter = null;
    conn.on(name, (...args) => {
      this.items.push(args.length === 1 ? args[0] : args);
      if (this.waiter && this.items.length - this.taken >= this.waiter.n) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve();
      }
    });
  }

  get pending() {
    return this.items.length - this.taken;
  }

  // Events that arrived but were not taken yet, without waiting.
  drain() {
    const out = this.items.slice(this.taken);
    this.taken = this.items.length;
    return out;
  }

  async next(n = 1, ms = 5_000) {
    if (this.waiter) throw new Error('EventQueue.next() is already waiting');
    if (this.pending < n) {
      const p = new Promise((resolve) => {
        this.waiter = { n, resolve };
      });
      try {
        await withTimeout(p, ms, `${n} '${this.name}' event(s) (got ${this.pending})`);
      } finally {
        this.waiter = null;
      }
    }
    const out = this.items.slice(this.taken, this.taken + n);
    this.taken += n;
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// raw sockets

// A TCP socket with an input buffer: read helpers wait for bytes or for the peer to close.
export class RawSocket {
  static async connect(port, server) {
    const sock = net.createConnection({ host: '127.0.0.1', port });
    await withTimeout(
      new Promise((resolve, reject) => {
        sock.once('connect', resolve);
        sock.once('error', reject);
      }),
      5_000,
      `TCP connect to port ${port}`,
    );
    const raw = new RawSocket(sock);
    if (server) {
      server.sockets.add(sock);
      sock.on('close', () => server.sockets.delete(sock));
    }
    return raw;
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.ended = false; // peer closed (FIN) or connection reset
    this.error = null;
    this.notify = null;
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('end', () => {
      this.ended = true;
      this.wake();
    });
    sock.on('close', () => {
      this.ended = true;
      this.wake();
    });
    sock.on('error', (err) => {
      // ECONNRESET / EPIPE after the server closed on us are expected in the hostile tests.
      this.error = err;
      this.ended = true;
      this.wake();
    });
  }

  wake() {
    const n = this.notify;
    this.notify = null;
    if (n) n();
  }

  write(data) {
    if (!this.sock.destroyed) this.sock.write(data);
  }

  end(data) {
    if (!this.sock.destroyed) this.sock.end(data);
  }

  destroy() {
    this.sock.destroy();
  }

  // Waits until pred(buffer) returns a non-undefined value and returns it; rejects on timeout,
  // or when the peer closed first (pred is tried once more on the final buffer).
  async waitFor(pred, ms, what) {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = pred(this.buf);
      if (v !== undefined) return v;
      if (this.ended) {
        throw new Error(`connection closed while waiting for ${what}; got ${JSON.stringify(this.buf.toString('latin1').slice(0, 300))}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(this.buf.toString('latin1').slice(0, 300))}`);
      await withTimeout(new Promise((resolve) => (this.notify = resolve)), left, what).catch(() => {});
    }
  }

  // Resolves once the peer has closed the connection (FIN or reset).
  async waitClosed(ms = 5_000) {
    const deadline = Date.now() + ms;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for the server to close the connection`);
      await withTimeout(new Promise((resolve) => (this.notify = resolve)), left, 'close').catch(() => {});
    }
  }

  take(n) {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

// Parses one HTTP/1.1 response head (+ Content-Length body) from the front of buf, or undefined.
export function parseHttpResponse(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const head = buf.subarray(0, end).toString('latin1');
  const [statusLine, ...lines] = head.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!m) throw new Error(`bad HTTP status line: ${JSON.stringify(statusLine)}`);
  const headers = {};
  for (const line of lines) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const len = headers['content-length'] !== undefined ? Number(headers['content-length']) : 0;
  if (buf.length < end + 4 + len) return undefined;
  return {
    status: Number(m[1]),
    reason: m[2] ?? '',
    headers,
    body: buf.subarray(end + 4, end + 4 + len).toString('utf8'),
    length: end + 4 + len,
  };
}

// Sends raw request bytes and reads one response.
export async function rawHttp(port, bytes, { server, ms = 5_000 } = {}) {
  const s = await RawSocket.connect(port, server);
  s.write(bytes);
  const res = await s.waitFor(parseHttpResponse, ms, 'an HTTP response');
  s.take(res.length);
  return { res, socket: s };
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames (RFC 6455), written here so the tests can send what no library would

export const OP = { CONT: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 };

export function encodeFrame(opcode, payload = Buffer.alloc(0), { fin = true, mask = true, rsv = 0 } = {}) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
  const len = data.length;
  let head;
  if (len < 126) {
    head = Buffer.alloc(2);
    head[1] = len;
  } else if (len < 65536) {
    head = Buffer.alloc(4);
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  head[0] = (fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0f);
  if (!mask) return Buffer.concat([head, data]);
  head[1] |= 0x80;
  const key = randomBytes(4);
  const body = Buffer.alloc(len);
  for (let i = 0; i < len; i++) body[i] = data[i] ^ key[i & 3];
  return Buffer.concat([head, key, body]);
}

// Decodes one frame from the front of buf: {fin, rsv, opcode, masked, payload, length} or undefined.
export function decodeFrame(buf) {
  if (buf.length < 2) return undefined;
  const fin = (buf[0] & 0x80) !== 0;
  const rsv = (buf[0] >> 4) & 7;
  const opcode = buf[0] & 0x0f;
  const masked = (buf[1] & 0x80) !== 0;
  let len = buf[1] & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return undefined;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return undefined;
    len = Number(buf.readBigUInt64BE(2));
    off = 10;
  }
  let key = null;
  if (masked) {
    if (buf.length < off + 4) return undefined;
    key = buf.subarray(off, off + 4);
    off += 4;
  }
  if (buf.length < off + len) return undefined;
  let payload = Buffer.from(buf.subarray(off, off + len));
  if (key) for (let i = 0; i < len; i++) payload[i] ^= key[i & 3];
  return { fin, rsv, opcode, masked, payload, length: off + len };
}

export function wsAccept(key) {
  return createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

// A raw WebSocket client over RawSocket with SignalR JSON record helpers.
export class RawWs {
  // Performs the upgrade; resolves with the RawWs on 101, rejects otherwise (use upgradeRequest
  // to look at a refused upgrade).
  static async open(server, { query = `access_token=${encodeURIComponent(server.apiKey)}`, ms = 5_000 } = {}) {
    const { res, socket, key } = await RawWs.upgradeRequest(server, { query, ms });
    assert.equal(res.status, 101, `WebSocket upgrade status (body: ${res.body})`);
    assert.equal(res.headers['upgrade']?.toLowerCase(), 'websocket', 'Upgrade header of the 101');
    assert.match(res.headers['connection'] ?? '', /upgrade/i, 'Connection header of the 101');
    assert.equal(res.headers['sec-websocket-accept'], wsAccept(key), 'Sec-WebSocket-Accept');
    return new RawWs(socket);
  }

  static async upgradeRequest(server, { query, ms = 5_000, extraHeaders = '' } = {}) {
    const key = randomBytes(16).toString('base64');
    const target = HUB_PATH + (query ? `?${query}` : '');
    const req =
      `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`;
    const socket = await RawSocket.connect(server.port, server);
    socket.write(req);
    // A 101 has no body; other answers may carry a Content-Length body.
    const res = await socket.waitFor(parseHttpResponse, ms, 'the upgrade response');
    socket.take(res.length);
    return { res, socket, key };
  }

  constructor(socket) {
    this.socket = socket;
    this.text = ''; // reassembled text not yet split into records
    this.fragments = null;
  }

  send(opcode, payload, opts) {
    this.socket.write(encodeFrame(opcode, payload, opts));
  }

  sendText(str) {
    this.send(OP.TEXT, str);
  }

  // Next frame from the server (any opcode); server frames must never be masked.
  async nextFrame(ms = 5_000) {
    const f = await this.socket.waitFor(decodeFrame, ms, 'a WebSocket frame');
    this.socket.take(f.length);
    assert.equal(f.masked, false, 'server-to-client frames must not be masked');
    assert.equal(f.rsv, 0, 'RSV bits must be 0 (no extension negotiated)');
    return f;
  }

  // Next complete data message (fragments joined; pings answered; close frame returned as is).
  async nextMessage(ms = 5_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const f = await this.nextFrame(Math.max(1, deadline - Date.now()));
      if (f.opcode === OP.PING) {
        this.send(OP.PONG, f.payload);
        continue;
      }
      if (f.opcode === OP.PONG) continue;
      if (f.opcode === OP.CLOSE) return { close: true, ...parseClose(f.payload) };
      if (f.opcode === OP.CONT) {
        assert.ok(this.fragments, 'continuation frame without a started message');
        this.fragments.parts.push(f.payload);
      } else {
        assert.equal(this.fragments, null, 'new data frame inside a fragmented message');
        this.fragments = { opcode: f.opcode, parts: [f.payload] };
      }
      if (f.fin) {
        const m = { opcode: this.fragments.opcode, payload: Buffer.concat(this.fragments.parts) };
        this.fragments = null;
        return m;
      }
    }
  }

  // Next SignalR JSON record (text between 0x1E separators), parsed; skips pings (type 6) unless
  // keepPings. Returns {close:true, code, reason} when a WebSocket close frame comes instead.
  async nextRecord(ms = 5_000, { keepPings = false, raw = false } = {}) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.text.indexOf(RS);
      if (i >= 0) {
        const rec = this.text.slice(0, i);
        this.text = this.text.slice(i + 1);
        if (raw) return rec;
        let msg;
        try {
          msg = JSON.parse(rec);
        } catch {
          throw new Error(`server sent a record that is not JSON: ${JSON.stringify(rec)}`);
        }
        if (msg.type === 6 && !keepPings) continue;
        return msg;
      }
      const m = await this.nextMessage(Math.max(1, deadline - Date.now()));
      if (m.close) return m;
      assert.equal(m.opcode, OP.TEXT, 'JSON hub protocol messages must come in text frames');
      this.text += m.payload.toString('utf8');
    }
  }

  // Sends the JSON handshake and checks the exact '{}\x1e' answer.
  async handshake() {
    this.sendText(`{"protocol":"json","version":1}${RS}`);
    const rec = await this.nextRecord(5_000, { raw: true });
    assert.equal(typeof rec, 'string', `handshake answer: ${JSON.stringify(rec)}`);
    assert.equal(rec, '{}', 'handshake response');
  }

  // Clean close: send 1000, expect the server's close frame and then the TCP close.
  async close() {
    this.send(OP.CLOSE, closePayload(1000));
    for (;;) {
      const m = await this.nextMessage();
      if (m.close) {
        assert.equal(m.code, 1000, 'server echoes close code 1000');
        break;
      }
    }
    await this.socket.waitClosed();
    this.socket.destroy();
  }
}

export function closePayload(code, reason = '') {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason));
  b.writeUInt16BE(code, 0);
  b.write(reason, 2);
  return b;
}

function parseClose(payload) {
  if (payload.length < 2) return { code: null, reason: '' };
  return { code: payload.readUInt16BE(0), reason: payload.subarray(2).toString('utf8') };
}

// The seed's example data for user-123 (without `sequence`, which tests check separately).
export const DEMO_DATA = {
  userId: 'user-123',
  assets: [
    { name: 'BTC', available: 0.5, allocated: 0, currentExposure: 0, maxExposure: 1500 },
    { name: 'ETH', available: 5, allocated: 0, currentExposure: 0, maxExposure: 1500 },
    { name: 'USDT', available: 1000, allocated: 250, currentExposure: 0, maxExposure: 1500 },
  ],
  baseCurrency: 'EUR',
  totalCurrentExposure: 0,
  totalMaxExposure: 1500,
  deleted: false,
};

// Checks a snapshot envelope for the demo user: exact envelope, sequence a number >= 1.
export function assertDemoSnapshot(env, clientId) {
  assert.equal(typeof env?.data?.sequence, 'number', `data.sequence is a number in ${JSON.stringify(env)}`);
  assert.ok(env.data.sequence >= 1, `data.sequence >= 1 (got ${env.data.sequence})`);
  const { sequence, ...data } = env.data;
  assert.deepEqual(
    { ...env, data },
    {
      channel: 'executionEvents',
      topic: 'account.balances',
      subject: 'account.balances.snapshot',
      type: 'message',
      clientId,
      data: DEMO_DATA,
    },
  );
  return sequence;
}

// ---------------------------------------------------------------------------------------------
// a throwaway PKI

// A CA (ca.pem) and server certificates for 127.0.0.1 / localhost signed by it, in dir: for each
// [name, serial] of leaves, NAME.pem, NAME.key and NAME-chain.pem (the certificate followed by
// the CA: what --tls-cert takes); other.key is a key that matches none of them.
export function makeTestPki(dir, leaves) {
  mkdirSync(dir, { recursive: true });
  const cnf = path.join(dir, 'openssl.cnf');
  writeFileSync(
    cnf,
    `[req]
distinguished_name = dn
prompt = no
[dn]
CN = balancehub test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[srv_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`,
  );
  const f = (name) => path.join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', '-config', cnf, '-extensions', 'ca_ext', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=balancehub throwaway test CA');
  const out = { dir, ca: f('ca.pem'), otherKey: f('other.key') };
  for (const [name, serial] of leaves) {
    openssl('req', '-new', '-config', cnf, ...ec, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', '/CN=localhost');
    openssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-set_serial', String(serial), '-days', '2', '-extfile', cnf, '-extensions', 'srv_ext', '-out', f(`${name}.pem`));
    writeFileSync(f(`${name}-chain.pem`), readFileSync(f(`${name}.pem`), 'utf8') + readFileSync(f('ca.pem'), 'utf8'));
    out[name] = { cert: f(`${name}.pem`), key: f(`${name}.key`), chain: f(`${name}-chain.pem`), serial };
  }
  openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f('other.key'));
  return out;
}
