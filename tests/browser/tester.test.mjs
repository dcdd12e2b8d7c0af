// The API tester page (GET /) in headless Chromium: playwright-core drives Debian's
// /usr/bin/chromium against a real balancehub serving the page and the @microsoft/signalr browser
// bundles from its own binary. A bad key shows a clear error; the demo key connects with each
// transport (and MessagePack) and shows the demo balances; an admin deposit made during the test
// shows up in the table without a reload; the key never reaches storage; the page raises no CSP
// violation or script error. Screenshots go to build/screenshots/.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { HUB_PATH, REPO_ROOT, makeTempDir, recordSecrets, removeTempDir, startServer, withTimeout } from '../interop/harness.mjs';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.BALANCEHUB_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const TOKEN = 'browser-admin-token-' + 'y'.repeat(16);
const SHOTS = path.join(REPO_ROOT, 'build', 'screenshots');
const WAIT = 15_000; // generous: the same tests run against the ASan build

let tokenDir;
let server;
let browser;

before(async () => {
  tokenDir = makeTempDir('balancehub-browser-');
  const file = path.join(tokenDir, 'token');
  writeFileSync(file, TOKEN + '\n', { mode: 0o600 });
  server = await startServer({
    extraArgs: ['--admin-token-file', file],
    env: { BALANCEHUB_ADMIN_TOKEN: undefined },
  });
  // A fresh profile per run: launch() gives Chromium a new temporary --user-data-dir.
  browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 }),
    40_000,
    `launch ${CHROMIUM}`,
  );
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    try {
      if (server) await server.stop();
    } finally {
      removeTempDir(tokenDir);
    }
  }
});

// A page in its own context that records script errors and CSP violations; check() asserts none.
async function openPage({ width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    const text = msg.text();
    if (/Content Security Policy|Refused to/i.test(text)) problems.push(`CSP: ${text}`);
  });
  const res = await page.goto(server.url + '/');
  assert.equal(res.status(), 200, 'GET / status');
  await page.waitForFunction(() => document.getElementById('state-text')?.textContent === 'Disconnected');
  return {
    page,
    problems,
    close: () => context.close(),
    check: () => assert.deepEqual(problems, [], 'no script errors or CSP violations'),
  };
}

const text = (page, sel) => page.locator(sel).textContent().then((s) => s.trim());

async function waitText(page, sel, pred, what) {
  const p = pred instanceof RegExp ? (s) => pred.test(s) : (s) => s === pred;
  const deadline = Date.now() + WAIT;
  let last;
  for (;;) {
    last = (await page.locator(sel).textContent())?.trim();
    if (p(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what ?? sel}: last text ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function connect(page, { key = server.apiKey, transport = 'auto', protocol = 'json' } = {}) {
  await page.fill('#api-key', key);
  await page.selectOption('#transport', transport);
  await page.selectOption('#protocol', protocol);
  await page.click('#connect');
}

async function connected(page, transport, protocol = 'json') {
  await connect(page, { transport, protocol });
  await waitText(page, '#state-text', /^(Connected|Disconnected)$/, 'the connection to settle');
  const state = await text(page, '#state-text');
  if (state !== 'Connected') {
    const err = await page.locator('#error').textContent();
    assert.fail(`expected Connected with ${transport}/${protocol}, page says ${state}: ${err?.trim()}`);
  }
}

// The balances table as rows of cell texts.
async function tableRows(page) {
  return page.$$eval('#balances-body tr', (trs) =>
    trs.map((tr) => [...tr.children].map((td) => td.textContent.trim())),
  );
}

const DEMO_ROWS = [
  ['BTC', '0.5', '0', '0', '1,500'],
  ['ETH', '5', '0', '0', '1,500'],
  ['USDT', '1,000', '250', '0', '1,500'],
];

async function invokeAndCheckDemo(page) {
  await page.click('#invoke');
  await waitText(page, '#command-status', /completed/, 'GetBalances completion');
  assert.deepEqual(await tableRows(page), DEMO_ROWS, 'demo balances in the table');
  assert.equal(await text(page, '#user-id'), 'user-123');
  assert.equal(await text(page, '#base-currency'), 'EUR');
  assert.match(await text(page, '#sequence'), /^\d+$/);
  assert.equal(await text(page, '#total-current'), '0');
  assert.equal(await text(page, '#total-max'), '1,500');
  // The newest log entry is the snapshot envelope, pretty-printed.
  const first = page.locator('#log > li.event').first();
  assert.equal((await first.locator('.badge').textContent()).trim(), 'account.balances.snapshot');
  const env = JSON.parse(await first.locator('pre').textContent());
  assert.equal(env.clientId, 'my-client-123');
  assert.equal(env.channel, 'executionEvents');
}

// The admin API on the operations listener; keys in the answers are recorded for the log scan.
async function api(method, urlPath, body) {
  const res = await withTimeout(
    fetch(server.adminUrl + urlPath, {
      method,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    }),
    10_000,
    `${method} ${urlPath}`,
  );
  return { status: res.status, body: recordSecrets(await res.json()) };
}

// ---------------------------------------------------------------------------------------------

test('GET / serves the page, its script and the bundles with a strict CSP; nothing else loads', async () => {
  const p = await openPage();
  try {
    const { page } = p;
    assert.equal(await page.inputValue('#hub-url'), server.url + HUB_PATH, 'hub URL defaults to the origin + hub path');
    assert.equal(await page.inputValue('#client-id'), 'my-client-123');
    assert.equal(await page.getAttribute('#client-id', 'maxlength'), '36');
    assert.equal(await page.getAttribute('#api-key', 'type'), 'password');
    assert.match(await page.locator('body').textContent(), /only used locally and never stored/);
    assert.deepEqual(
      await page.$$eval('#transport option', (os) => os.map((o) => o.value)),
      ['auto', 'WebSockets', 'ServerSentEvents', 'LongPolling'],
    );
    assert.deepEqual(await page.$$eval('#protocol option', (os) => os.map((o) => o.value)), ['json', 'messagepack']);
    assert.equal(await page.evaluate(() => typeof signalR.HubConnectionBuilder), 'function', 'signalr.min.js ran');
    assert.equal(
      await page.evaluate(() => typeof signalR.protocols.msgpack.MessagePackHubProtocol),
      'function',
      'signalr-protocol-msgpack.min.js ran',
    );
    assert.equal(await page.locator('script:not([src])').count(), 0, 'no inline scripts');
    assert.equal(await page.locator('[style]').count(), 0, 'no inline styles');
    // The same bundles, byte for byte, as the npm packages ship.
    for (const [url, file] of [
      ['/signalr.min.js', 'node_modules/@microsoft/signalr/dist/browser/signalr.min.js'],
      ['/signalr-protocol-msgpack.min.js', 'node_modules/@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.min.js'],
    ]) {
      const res = await fetch(server.url + url);
      assert.equal(res.status, 200, url);
      assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8', url);
      assert.ok((await res.text()) === readFileSync(path.join(REPO_ROOT, file), 'utf8'), `${url} is the npm bundle`);
    }
    const res = await fetch(server.url + '/');
    const csp = res.headers.get('content-security-policy');
    assert.match(csp, /(^|; )script-src 'self'(;|$)/, 'scripts from the origin only');
    assert.match(csp, /(^|; )default-src 'none'(;|$)/);
    assert.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${server.port} wss://127\\.0\\.0\\.1:${server.port}(;|$)`));
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    p.check();
  } finally {
    await p.close();
  }
});

test('static files: ETag revalidation answers 304, HEAD has no body, other methods 405', async () => {
  for (const url of ['/', '/index.html', '/app.js', '/app.css', '/signalr.min.js', '/signalr-protocol-msgpack.min.js']) {
    const res = await fetch(server.url + url);
    assert.equal(res.status, 200, url);
    const etag = res.headers.get('etag');
    assert.match(etag, /^"[0-9a-f]{16}"$/, `${url} ETag`);
    assert.equal(res.headers.get('cache-control'), 'no-cache', `${url} Cache-Control`);
    await res.arrayBuffer();
    const again = await fetch(server.url + url, { headers: { 'if-none-match': `"nope", W/${etag}` } });
    assert.equal(again.status, 304, `${url} revalidated`);
    assert.equal(again.headers.get('etag'), etag);
    assert.equal((await again.arrayBuffer()).byteLength, 0);
    const changed = await fetch(server.url + url, { headers: { 'if-none-match': '"0000000000000000"' } });
    assert.equal(changed.status, 200, `${url} with a stale ETag`);
    await changed.arrayBuffer();
  }
  const types = { '/': 'text/html', '/app.js': 'text/javascript', '/app.css': 'text/css' };
  for (const [url, type] of Object.entries(types)) {
    const res = await fetch(server.url + url);
    assert.equal(res.headers.get('content-type'), `${type}; charset=utf-8`, url);
    await res.arrayBuffer();
  }
  const head = await fetch(server.url + '/app.js', { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.equal((await head.arrayBuffer()).byteLength, 0);
  // HEAD carries the GET's headers: the real Content-Length, without the body.
  const full = (await (await fetch(server.url + '/app.js')).arrayBuffer()).byteLength;
  assert.ok(full > 0);
  assert.equal(Number(head.headers.get('content-length')), full);
  const post = await fetch(server.url + '/app.js', { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get('allow'), 'GET, HEAD');
  await post.arrayBuffer();
  for (const url of ['/app.js.map', '/web/app.js', '/index.htm', '/APP.JS', '/app.js/']) {
    const res = await fetch(server.url + url);
    assert.equal(res.status, 404, url);
    await res.arrayBuffer();
  }
});

test('a bad key shows a clear error and stays disconnected', async () => {
  const p = await openPage();
  try {
    const { page } = p;
    await connect(page, { key: 'bh_0000000000000000_not-a-real-key' });
    await page.locator('#error').waitFor({ state: 'visible' });
    assert.equal(await text(page, '#error-title'), 'The API key was refused (401).');
    assert.equal(await text(page, '#state-text'), 'Disconnected');
    assert.equal(await page.isDisabled('#invoke'), true, 'Invoke needs a connection');
    assert.equal(await page.isEnabled('#connect'), true, 'Connect can be tried again');
    mkdirSync(SHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SHOTS, 'tester-bad-key.png') });
    // An empty key is caught before any request.
    await page.fill('#api-key', '');
    await page.click('#connect');
    await waitText(page, '#error-title', /Paste an API key/);
    // The browser's own 401 console line is expected; anything else is not.
    p.problems.splice(0, p.problems.length, ...p.problems.filter((s) => !/401/.test(s)));
    p.check();
  } finally {
    await p.close();
  }
});

const TRANSPORTS = [
  ['WebSockets', 'WebSockets'],
  ['ServerSentEvents', 'Server-Sent Events'],
  ['LongPolling', 'Long Polling'],
];

for (const [transport, label] of TRANSPORTS) {
  test(`the demo key connects with ${transport} and shows the demo balances`, async () => {
    const p = await openPage();
    try {
      const { page } = p;
      // Watch the wire: the page must really use the transport it was asked for.
      const seen = { ws: 0, sse: 0, lp: 0 };
      page.on('websocket', (ws) => {
        if (ws.url().includes(HUB_PATH)) seen.ws++;
      });
      page.on('request', (req) => {
        const u = new URL(req.url());
        if (u.pathname !== HUB_PATH || !u.searchParams.get('id')) return;
        if (req.resourceType() === 'eventsource') seen.sse++;
        else if (req.method() === 'GET') seen.lp++;
      });
      await connected(page, transport);
      assert.match(await text(page, '#conn-info'), new RegExp(`^Connected via ${label} · JSON`));
      await invokeAndCheckDemo(page);
      if (transport === 'WebSockets') assert.ok(seen.ws >= 1, 'a WebSocket to the hub');
      if (transport === 'ServerSentEvents') assert.ok(seen.sse >= 1, 'an EventSource to the hub');
      if (transport === 'LongPolling') assert.ok(seen.lp >= 1, 'polls to the hub');
      if (transport !== 'WebSockets') assert.equal(seen.ws, 0, 'no WebSocket');
      await page.click('#disconnect');
      await waitText(page, '#state-text', 'Disconnected');
      assert.equal(await page.locator('#error').isVisible(), false, 'a clean disconnect shows no error');
      p.check();
    } finally {
      await p.close();
    }
  });
}

for (const [transport, label] of [
  ['WebSockets', 'WebSockets'],
  ['LongPolling', 'Long Polling'],
]) {
  test(`MessagePack over ${transport} shows the same balances`, async () => {
    const p = await openPage();
    try {
      const { page } = p;
      await connected(page, transport, 'messagepack');
      assert.match(await text(page, '#conn-info'), new RegExp(`^Connected via ${label} · MessagePack`));
      await invokeAndCheckDemo(page);
      p.check();
    } finally {
      await p.close();
    }
  });
}

test('Auto picks WebSockets first and says so', async () => {
  const p = await openPage();
  try {
    const { page } = p;
    await connected(page, 'auto');
    assert.match(await text(page, '#conn-info'), /^Connected via WebSockets · JSON/);
    await invokeAndCheckDemo(page);
    p.check();
  } finally {
    await p.close();
  }
});

test('a bad ClientId shows the preChecksError', async () => {
  const p = await openPage();
  try {
    const { page } = p;
    await connected(page, 'WebSockets');
    await page.fill('#client-id', '');
    assert.equal(await text(page, '#client-id-count'), '0/36');
    await page.click('#invoke');
    await waitText(page, '#command-status', /^preChecksError: clientId/, 'the preChecksError');
    assert.equal(await page.locator('#command-status').getAttribute('class'), 'status error');
    // The 36-character limit is enforced by the field itself.
    await page.fill('#client-id', 'x'.repeat(40));
    assert.equal((await page.inputValue('#client-id')).length, 36);
    p.check();
  } finally {
    await p.close();
  }
});

test("revoking the key while connected closes the page's connection with a visible reason", async () => {
  const created = await api('POST', '/admin/users/user-123/keys', {});
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const p = await openPage();
  try {
    const { page } = p;
    await page.fill('#api-key', created.body.apiKey);
    await page.click('#connect');
    await waitText(page, '#state-text', 'Connected');
    await page.click('#invoke');
    await waitText(page, '#command-status', /completed/);
    const del = await api('DELETE', `/admin/keys/${created.body.keyId}`);
    assert.equal(del.status, 200, JSON.stringify(del.body));
    await waitText(page, '#state-text', 'Disconnected');
    assert.equal(await text(page, '#error-title'), 'The connection was closed by the server.');
    assert.match(await text(page, '#error-detail'), /API key revoked/);
    assert.match(await text(page, '#log > li:first-child'), /API key revoked/);
    p.check();
  } finally {
    await p.close();
  }
});

test('an admin deposit during the test appears in the table without a reload; the key is never stored', async () => {
  const p = await openPage();
  try {
    const { page } = p;
    await connected(page, 'WebSockets');
    await invokeAndCheckDemo(page);
    await page.evaluate(() => {
      window.__sameDocument = true;
      // Records which cells get the change highlight (it removes itself when its animation ends).
      window.__flashed = [];
      new MutationObserver((records) => {
        for (const r of records) {
          for (const n of r.addedNodes) {
            for (const td of n.querySelectorAll?.('td.changed') ?? []) window.__flashed.push(`${n.dataset.asset}/${td.dataset.field}`);
          }
        }
      }).observe(document.getElementById('balances-body'), { childList: true });
    });
    const seq = Number(await text(page, '#sequence'));
    const count = Number(await text(page, '#log-count'));

    const r = await api('POST', '/admin/users/user-123/ops', { opId: 'browser-deposit-1', op: 'deposit', asset: 'BTC', amount: '0.25' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await waitText(page, '#balances-body tr[data-asset="BTC"] td[data-field="available"]', '0.75', 'BTC available 0.75');
    assert.equal(Number(await text(page, '#sequence')), seq + 1, 'sequence advanced by one');
    assert.deepEqual(await page.evaluate(() => window.__flashed), ['BTC/available'], 'only the changed cell is highlighted');
    const first = page.locator('#log > li').first();
    assert.equal((await first.locator('.badge').textContent()).trim(), 'account.balances.update');
    assert.ok(Number(await text(page, '#log-count')) > count);
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');

    // A second change, this time a trade across two assets, also lands live.
    const t = await api('POST', '/admin/users/user-123/ops', {
      opId: 'browser-trade-1',
      op: 'trade',
      legs: [
        { asset: 'ETH', amount: '-1.5' },
        { asset: 'USDT', amount: '2500.125' },
      ],
    });
    assert.equal(t.status, 200, JSON.stringify(t.body));
    await waitText(page, '#balances-body tr[data-asset="USDT"] td[data-field="available"]', '3,500.125');
    assert.equal(await text(page, '#balances-body tr[data-asset="ETH"] td[data-field="available"]'), '3.5');
    assert.equal(Number(await text(page, '#sequence')), seq + 2);

    // The key is used, never kept.
    const stored = await page.evaluate(() => ({
      local: localStorage.length,
      session: sessionStorage.length,
      cookie: document.cookie,
      url: location.href,
    }));
    assert.deepEqual(stored, { local: 0, session: 0, cookie: '', url: server.url + '/' });

    mkdirSync(SHOTS, { recursive: true });
    // The picture shows the steady state: the change highlight removes itself when it ends.
    await page.waitForFunction(() => !document.querySelector('td.changed'));
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SHOTS, 'tester.png'), fullPage: false });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: path.join(SHOTS, 'tester-narrow.png'), fullPage: true });
    await page.locator('#log').scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(SHOTS, 'tester-narrow-log.png') });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal scrolling on a narrow screen (overflow ${overflow}px)`);
    p.check();
  } finally {
    await p.close();
  }
});
