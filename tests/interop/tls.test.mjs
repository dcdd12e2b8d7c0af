// TLS on the listener (`serve --tls-cert/--tls-key`): a throwaway CA and server certificate made
// with the openssl CLI; https and wss work for a client that trusts the CA (Node https, and the
// real @microsoft/signalr client in a child process with NODE_EXTRA_CA_CERTS, and the C client's
// `balancehub balances --ca-file`), are refused by one that does not, and plain HTTP, garbage and
// silent sockets on the TLS port are closed without harming the server. Also the start-up errors
// (one line each) and the environment variables.

import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import {
  HUB_PATH,
  NODE_MODULES,
  RawSocket,
  binPath,
  explained,
  makeTempDir,
  makeTestPki,
  removeTempDir,
  startServer,
  withTimeout,
} from './harness.mjs';

let server;
let pki; // {dir, ca, chain, cert, key, otherKey}
let idle; // sockets opened at the start that never finish a handshake: {silent, partial, t0}
const ex = (fn) => explained(() => server, fn);

// A CA and a server certificate for 127.0.0.1 / localhost signed by it; chain.pem is the
// certificate followed by the CA (what --tls-cert takes).
function makePki() {
  const p = makeTestPki(makeTempDir('balancehub-tls-'), [['server', 4242]]);
  return { dir: p.dir, ca: p.ca, chain: p.server.chain, cert: p.server.cert, key: p.server.key, otherKey: p.otherKey };
}

// One https request with node:https; resolves {status, body, alpn, protocol, cert} or rejects
// with the TLS error.
function httpsRequest(port, { method = 'GET', reqPath = '/healthz', headers = {}, body, ca, servername, minVersion, maxVersion } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: '127.0.0.1',
          port,
          method,
          path: reqPath,
          headers,
          ca: ca ? readFileSync(ca) : undefined,
          servername,
          minVersion,
          maxVersion,
          ALPNProtocols: ['http/1.1'],
          agent: false,
        },
        (res) => {
          const chunks = [];
          res.on('data', (d) => chunks.push(d));
          res.on('end', () =>
            resolve({
              status: res.statusCode,
              body: Buffer.concat(chunks).toString('utf8'),
              alpn: res.socket.alpnProtocol,
              protocol: res.socket.getProtocol(),
              cert: res.socket.getPeerCertificate(),
            }),
          );
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    }),
    5_000,
    `https ${method} ${reqPath}`,
  );
}

async function healthy(port) {
  const res = await httpsRequest(port, { ca: pki.ca });
  assert.equal(res.status, 200);
  assert.equal(res.body.trim(), 'ok');
}

before(async () => {
  pki = makePki();
  server = await startServer({ extraArgs: ['--tls-cert', pki.chain, '--tls-key', pki.key] });
  // Opened first, checked by the last test: they must be closed by the 10 s handshake deadline.
  const silent = await RawSocket.connect(server.port, server);
  const partial = await RawSocket.connect(server.port, server);
  partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]));
  idle = { silent, partial, t0: Date.now() };
});

after(async () => {
  try {
    if (server) await server.stop();
  } finally {
    if (pki) removeTempDir(pki.dir);
  }
});

test('the listening and hub lines say https', ex(async () => {
  assert.match(server.stdout(), new RegExp(`listening on https://127\\.0\\.0\\.1:${server.port}\\n`));
  // The hub line is the next write; it may still be in the pipe.
  const hubRe = new RegExp(`hub: https://127\\.0\\.0\\.1:${server.port}${HUB_PATH}\\n`);
  for (let i = 0; i < 50 && !hubRe.test(server.stdout()); i++) await new Promise((r) => setTimeout(r, 20));
  assert.match(server.stdout(), hubRe);
  assert.ok(server.url.startsWith('https://'));
}));

test('(a) a client trusting the CA: /healthz 200 and negotiate 200 over TLS 1.3 with ALPN http/1.1', { timeout: 20_000 }, ex(async () => {
  const res = await httpsRequest(server.port, { ca: pki.ca });
  assert.equal(res.status, 200);
  assert.equal(res.body.trim(), 'ok');
  assert.equal(res.alpn, 'http/1.1');
  assert.equal(res.protocol, 'TLSv1.3');
  assert.equal(res.cert.serialNumber, '1092', 'the served certificate is ours (serial 4242)');
  assert.equal(res.cert.issuer.CN, 'balancehub throwaway test CA');

  // By name too: the certificate has DNS:localhost.
  const byName = await httpsRequest(server.port, { ca: pki.ca, servername: 'localhost' });
  assert.equal(byName.status, 200);

  const neg = await httpsRequest(server.port, {
    method: 'POST',
    reqPath: `${HUB_PATH}/negotiate?negotiateVersion=1`,
    headers: { Authorization: `Bearer ${server.apiKey}`, 'Content-Length': '0' },
    ca: pki.ca,
  });
  assert.equal(neg.status, 200, neg.body);
  const body = JSON.parse(neg.body);
  assert.equal(body.negotiateVersion, 1);
  assert.equal(typeof body.connectionToken, 'string');
  assert.ok(body.availableTransports.some((t) => t.transport === 'WebSockets'));

  // A wrong key is still a 401 inside TLS.
  const bad = await httpsRequest(server.port, {
    method: 'POST',
    reqPath: `${HUB_PATH}/negotiate?negotiateVersion=1`,
    headers: { Authorization: 'Bearer nope', 'Content-Length': '0' },
    ca: pki.ca,
  });
  assert.equal(bad.status, 401);
}));

test('(a) TLS 1.2 works; TLS 1.1 and older are refused', { timeout: 20_000 }, ex(async () => {
  const res = await httpsRequest(server.port, { ca: pki.ca, maxVersion: 'TLSv1.2' });
  assert.equal(res.status, 200);
  assert.equal(res.protocol, 'TLSv1.2');
  await assert.rejects(
    httpsRequest(server.port, { ca: pki.ca, minVersion: 'TLSv1', maxVersion: 'TLSv1.1' }),
    (err) => {
      // The server's protocol_version alert (70), not a refusal by the client itself.
      assert.match(err.message, /alert protocol version/, `${err.code}: ${err.message}`);
      return true;
    },
  );
  await healthy(server.port);
}));

// One TLS connection: /healthz over it; resolves {reused, ticket} (the last session ticket).
function tlsHealthz(port, session) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(pki.ca), servername: 'localhost', session, ALPNProtocols: ['http/1.1'] });
    let ticket = null;
    let reused = null;
    let body = '';
    s.setEncoding('utf8');
    s.on('session', (t) => {
      ticket = t;
    });
    s.once('secureConnect', () => {
      reused = s.isSessionReused();
      s.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    });
    s.on('data', (d) => {
      body += d;
    });
    s.on('error', reject);
    s.on('close', () => (body.startsWith('HTTP/1.1 200') ? resolve({ reused, ticket }) : reject(new Error(`answer: ${body}`))));
  });
}

test('TLS sessions resume whichever I/O thread accepts the connection (one shared context)', { timeout: 20_000 }, ex(async () => {
  // The harness runs --threads 2: with a context per thread about half the resumptions would fail.
  let { ticket } = await tlsHealthz(server.port);
  assert.ok(ticket, 'a session ticket');
  for (let i = 0; i < 16; i++) {
    const r = await tlsHealthz(server.port, ticket);
    assert.equal(r.reused, true, `connection ${i + 1} resumed its session`);
    if (r.ticket) ticket = r.ticket;
  }
}));

test('(b) a client without the CA refuses the certificate (https and fetch)', { timeout: 20_000 }, ex(async () => {
  await assert.rejects(httpsRequest(server.port, {}), (err) => {
    assert.equal(err.code, 'SELF_SIGNED_CERT_IN_CHAIN', `${err.code}: ${err.message}`);
    return true;
  });
  await assert.rejects(withTimeout(fetch(`${server.url}/healthz`), 5_000, 'fetch'), (err) => {
    assert.equal(err.cause?.code, 'SELF_SIGNED_CERT_IN_CHAIN', `${err.cause?.code}: ${err.message}`);
    return true;
  });
  // A client that checks the name refuses a name the certificate does not carry.
  await assert.rejects(httpsRequest(server.port, { ca: pki.ca, servername: 'example.com' }), (err) => {
    assert.equal(err.code, 'ERR_TLS_CERT_ALTNAME_INVALID', `${err.code}: ${err.message}`);
    return true;
  });
  await healthy(server.port);
}));

// The seed's example with the WebSockets transport, as its own Node process (so that
// NODE_EXTRA_CA_CERTS, read at start-up, can make it trust the CA).
async function runSignalrChild(extraEnv) {
  const script = `const signalR = require('@microsoft/signalr');
const connection = new signalR.HubConnectionBuilder()
  .withUrl(${JSON.stringify(server.hubUrl)}, {
    accessTokenFactory: () => ${JSON.stringify(server.apiKey)},
    transport: signalR.HttpTransportType.WebSockets,
    skipNegotiation: false,
  })
  .configureLogging(signalR.LogLevel.None)
  .build();
connection.on('executionEvents', (data) => console.log('EVENT ' + JSON.stringify(data)));
connection.start()
  .then(() => { console.log('CONNECTED ' + connection.connectionId); return connection.invoke('GetBalances', 'tls-client'); })
  .then(() => { console.log('INVOKED'); return connection.stop(); })
  .catch((err) => { console.log('FAILED ' + err); process.exitCode = 1; return connection.stop(); });
`;
  const file = path.join(pki.dir, `signalr-${randomBytes(4).toString('hex')}.cjs`);
  writeFileSync(file, script);
  const env = { ...process.env, NODE_PATH: NODE_MODULES };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_TLS_REJECT_UNAUTHORIZED;
  const child = spawn(process.execPath, [file], { env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  try {
    const status = await withTimeout(exited, 15_000, 'the SignalR child process to exit');
    return { status, out, err };
  } catch (e) {
    child.kill('SIGKILL');
    e.message += `\nstdout:\n${out}\nstderr:\n${err}`;
    throw e;
  }
}

test('(c) the real @microsoft/signalr client over wss, trusting the CA, gets the demo balances', { timeout: 30_000 }, ex(async () => {
  const { status, out, err } = await runSignalrChild({ NODE_EXTRA_CA_CERTS: pki.ca });
  const ctx = `\nstdout:\n${out}\nstderr:\n${err}`;
  assert.deepEqual(status, { code: 0, signal: null }, ctx);
  assert.match(out, /^CONNECTED /m, ctx);
  assert.match(out, /^INVOKED$/m, ctx);
  const line = out.split('\n').find((l) => l.startsWith('EVENT '));
  assert.ok(line, `no event${ctx}`);
  const env = JSON.parse(line.slice(6));
  assert.equal(env.subject, 'account.balances.snapshot');
  assert.equal(env.clientId, 'tls-client');
  assert.equal(env.data.userId, 'user-123');
  assert.deepEqual(
    env.data.assets.map((a) => [a.name, a.available, a.allocated]),
    [['BTC', 0.5, 0], ['ETH', 5, 0], ['USDT', 1000, 250]],
  );
  assert.ok(out.indexOf('EVENT ') < out.indexOf('INVOKED'), `event before completion${ctx}`);
}));

test('(c) the same client without the CA fails to connect', { timeout: 30_000 }, ex(async () => {
  const { status, out, err } = await runSignalrChild({});
  const ctx = `\nstdout:\n${out}\nstderr:\n${err}`;
  assert.equal(status.code, 1, ctx);
  assert.match(out, /^FAILED /m, ctx);
  assert.doesNotMatch(out, /^CONNECTED/m, ctx);
  assert.doesNotMatch(out, /^EVENT/m, ctx);
  await healthy(server.port);
}));

test('(d) plain HTTP to the TLS port: no HTTP answer, the connection is closed, the server goes on', { timeout: 20_000 }, ex(async () => {
  const s = await RawSocket.connect(server.port, server);
  s.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\n\r\n`);
  await s.waitClosed(5_000);
  const got = s.buf;
  assert.ok(!got.toString('latin1').includes('HTTP/1.1'), `answered in plaintext: ${JSON.stringify(got.toString('latin1'))}`);
  if (got.length > 0) assert.equal(got[0], 0x15, 'anything sent back is a TLS alert record');
  s.destroy();
  // Node's own http client sees the connection end without a response.
  await assert.rejects(
    withTimeout(
      new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: server.port, path: '/healthz', agent: false }, resolve);
        req.on('error', reject);
      }),
      5_000,
      'plain http request',
    ),
    (err) => ['ECONNRESET', 'HPE_INVALID_CONSTANT', 'HPE_INVALID_VERSION'].includes(err.code) || /hang up/.test(err.message),
  );
  assert.ok(server.alive());
  await healthy(server.port);
}));

test('(e) garbage instead of a ClientHello: closed, the server goes on', { timeout: 20_000 }, ex(async () => {
  // A TLS connection made before the garbage must be untouched by it.
  const sock = tls.connect({ host: '127.0.0.1', port: server.port, ca: readFileSync(pki.ca), servername: 'localhost' });
  sock.on('error', () => {});
  await withTimeout(new Promise((resolve, reject) => { sock.once('secureConnect', resolve); sock.once('error', reject); }), 5_000, 'TLS connect');
  const get = async () => {
    const answer = withTimeout(new Promise((resolve) => sock.once('data', resolve)), 5_000, 'the answer');
    sock.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n');
    assert.match((await answer).toString('utf8'), /^HTTP\/1\.1 200 [^]*\r\n\r\nok$/);
  };
  await get();

  const inputs = [
    randomBytes(1024),
    Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff]), // a hello far too short
    Buffer.concat([Buffer.from([0x16, 0x03, 0x03, 0x48, 0x00]), randomBytes(0x4800)]), // oversized record
    Buffer.from([0x17, 0x03, 0x03, 0x00, 0x10, ...randomBytes(16)]), // application data first
    Buffer.alloc(64), // zeros
  ];
  for (const bytes of inputs) {
    const s = await RawSocket.connect(server.port, server);
    s.write(bytes);
    await s.waitClosed(5_000);
    if (s.buf.length > 0) assert.equal(s.buf[0], 0x15, `only an alert comes back: ${s.buf.toString('hex').slice(0, 40)}`);
    s.destroy();
  }
  assert.ok(server.alive());
  await get();
  const closed = new Promise((resolve) => sock.once('close', resolve));
  sock.end();
  await withTimeout(closed, 5_000, 'TLS socket close');
  await healthy(server.port);
}));

// `balancehub balances` (the C client library) against the TLS server.
async function runBalances(args) {
  // Only --ca-file may make it trust the CA: no OpenSSL trust-store overrides from outside.
  const env = { ...process.env, BALANCEHUB_API_KEY: server.apiKey };
  delete env.SSL_CERT_FILE;
  delete env.SSL_CERT_DIR;
  const child = spawn(binPath(), ['balances', '--url', server.url, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  try {
    const status = await withTimeout(exited, 15_000, 'balancehub balances to exit');
    return { status, out, err };
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
}

test('the C client (balancehub balances) refuses the untrusted certificate', { timeout: 30_000 }, ex(async () => {
  const { status, out, err } = await runBalances(['--format', 'json']);
  assert.deepEqual(status, { code: 1, signal: null }, `stdout: ${out}\nstderr: ${err}`);
  assert.equal(out, '');
  assert.match(err, /certificate/i);
  assert.equal(err.trim().split('\n').length, 1, `one line: ${JSON.stringify(err)}`);
  await healthy(server.port);
}));

test('the C client accepts it with --ca-file, over wss with JSON and MessagePack', { timeout: 30_000 }, ex(async () => {
  for (const protocol of ['json', 'messagepack']) {
    const { status, out, err } = await runBalances(['--ca-file', pki.ca, '--protocol', protocol, '--format', 'json', '--client-id', 'tls-cli']);
    assert.deepEqual(status, { code: 0, signal: null }, `${protocol}: stdout: ${out}\nstderr: ${err}`);
    const data = JSON.parse(out);
    assert.equal(data.userId, 'user-123');
    assert.deepEqual(
      data.assets.map((a) => [a.name, a.available, a.allocated]),
      [['BTC', 0.5, 0], ['ETH', 5, 0], ['USDT', 1000, 250]],
    );
  }
  // The wrong CA is no better than none.
  const other = path.join(pki.dir, 'other-ca.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', path.join(pki.dir, 'other-ca.key'), '-out', other, '-days', '1', '-subj', '/CN=some other CA'], { stdio: 'ignore' });
  const wrong = await runBalances(['--ca-file', other, '--format', 'json']);
  assert.equal(wrong.status.code, 1, wrong.err);
  assert.match(wrong.err, /certificate/i);
}));

test('start-up errors: one line each, no listener', { timeout: 30_000 }, ex(async () => {
  const run = (args, env = {}) => {
    const dir = makeTempDir();
    try {
      const r = spawnSync(binPath(), ['serve', '--listen', '127.0.0.1:0', '--data', dir, ...args], {
        encoding: 'utf8',
        timeout: 10_000,
        env: { ...process.env, BALANCEHUB_TLS_CERT: '', BALANCEHUB_TLS_KEY: '', ...env },
      });
      return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
    } finally {
      removeTempDir(dir);
    }
  };
  const oneLine = (r) => assert.equal(r.stderr.split('\n').length, 1, `one line on stderr: ${JSON.stringify(r.stderr)}`);

  let r = run(['--tls-cert', pki.chain]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--tls-cert and --tls-key go together/);
  oneLine(r);
  r = run(['--tls-key', pki.key]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--tls-cert and --tls-key go together/);

  r = run(['--tls-cert', path.join(pki.dir, 'missing.pem'), '--tls-key', pki.key]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /cannot read TLS certificate file '.*missing\.pem': No such file or directory/);
  assert.doesNotMatch(r.stdout, /listening on/);
  oneLine(r);

  r = run(['--tls-cert', pki.chain, '--tls-key', path.join(pki.dir, 'missing.key')]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /cannot read TLS key file '.*missing\.key': No such file or directory/);
  oneLine(r);

  r = run(['--tls-cert', pki.chain, '--tls-key', pki.otherKey]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /TLS key file '.*other\.key' does not match the certificate in '.*chain\.pem'/);
  assert.doesNotMatch(r.stdout, /listening on/);
  oneLine(r);

  r = run(['--tls-cert', pki.key, '--tls-key', pki.key]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /holds no usable PEM certificate/);
  oneLine(r);

  r = run(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--tls-cert FILE/);
  assert.match(r.stdout, /--tls-key FILE/);
  assert.match(r.stdout, /BALANCEHUB_TLS_CERT/);
}));

test('BALANCEHUB_TLS_CERT / BALANCEHUB_TLS_KEY turn TLS on too', { timeout: 30_000 }, ex(async () => {
  const other = await startServer({ env: { BALANCEHUB_TLS_CERT: pki.chain, BALANCEHUB_TLS_KEY: pki.key } });
  try {
    assert.ok(other.url.startsWith('https://'), other.url);
    await healthy(other.port);
  } finally {
    await other.stop();
  }
}));

test('sockets that never finish a handshake are closed by the 10 s handshake deadline', { timeout: 30_000 }, ex(async () => {
  for (const s of [idle.silent, idle.partial]) {
    await s.waitClosed(Math.max(1, idle.t0 + 15_000 - Date.now()));
    assert.equal(s.buf.length, 0, 'nothing was sent on a timed-out handshake');
  }
  const elapsed = Date.now() - idle.t0;
  assert.ok(elapsed >= 9_000, `closed after ${elapsed} ms, before the 10 s deadline`);
  await healthy(server.port);
}));
