// The log scanner (tests/system/secrets_scan.mjs) itself, run as `make interop` runs it: it
// finds a planted API key (recorded or not, whole or cut short) and a recorded admin token,
// naming file and line without printing the secret whole; it passes a clean directory; and it
// fails a directory without logs or without recorded secrets, so it cannot pass vacuously.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from '../interop/harness.mjs';

const SCANNER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'secrets_scan.mjs');
const dirs = [];

after(() => {
  for (const d of dirs) removeTempDir(d);
});

// A key of the real shape (src/auth/auth.h): bh_ + 16 hex + _ + 43 base64url.
function fakeKey() {
  return `bh_${randomBytes(8).toString('hex')}_${randomBytes(32).toString('base64url')}`;
}

const TOKEN = 'scan-admin-token-' + randomBytes(12).toString('hex');
const KEY = fakeKey();
const CLEAN_LOG =
  'ts=2024-01-01T00:00:00.000Z level=info msg="listening" addr=127.0.0.1:5000\n' +
  `ts=2024-01-01T00:00:01.000Z level=info msg="connection opened" conn=7 key_id=${KEY.slice(3, 19)} user=user-123\n` +
  'ts=2024-01-01T00:00:02.000Z level=warn msg="authentication failed" conn=8 peer=127.0.0.1:4242\n';

// A directory with the given files ({name: text}); secrets: the `secrets` file's lines.
function dirWith(files, secrets = [KEY, TOKEN]) {
  const d = makeTempDir('balancehub-scan-');
  dirs.push(d);
  if (secrets !== null) writeFileSync(path.join(d, 'secrets'), secrets.map((s) => s + '\n').join(''));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(d, name)), { recursive: true });
    writeFileSync(path.join(d, name), text);
  }
  return d;
}

function runScan(...args) {
  const r = spawnSync(process.execPath, [SCANNER, ...args], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// Nothing the scanner prints may hold a whole secret.
function assertNoWholeSecret(r, secrets) {
  for (const s of secrets) {
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `the scanner printed a whole secret: ${r.stdout}${r.stderr}`);
  }
}

test('a clean directory passes (key ids may appear, keys may not)', () => {
  const d = dirWith({ 'a.test.mjs.1.1.log': CLEAN_LOG, 'b.test.mjs.2.1.log': CLEAN_LOG });
  const r = runScan(d);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^secrets_scan: clean: 2 log files \(\d+ bytes\), 2 recorded secrets\n$/);
});

test('a planted recorded key is found, with its file and line, and shown only in part', () => {
  const d = dirWith({ 'a.log': CLEAN_LOG, 'b.log': CLEAN_LOG + `ts=x level=debug msg="auth" token=${KEY}\n` + CLEAN_LOG });
  const r = runScan(d);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.ok(r.stderr.includes(`${path.join(d, 'b.log')}:4: a recorded API key "bh_`), r.stderr);
  assert.match(r.stderr, /\(63 chars\)/);
  assert.match(r.stderr, /FAILED: 1 secrets in the logs/);
  assert.ok(!r.stderr.includes(path.join(d, 'a.log')), 'the clean file is not named');
  assertNoWholeSecret(r, [KEY, TOKEN]);
});

test('anything shaped like an API key is found even when nobody recorded it, and so is part of one', () => {
  const stranger = fakeKey();
  const d = dirWith({
    'x.log': `line one\naccess_token=${stranger}&id=1\n`,
    'sub/y.log': `first\nsecond\nkey=${stranger.slice(0, 30)}\n`,
  });
  const r = runScan(d);
  assert.equal(r.code, 1);
  assert.ok(r.stderr.includes(`${path.join(d, 'x.log')}:2: an API key "bh_`), r.stderr);
  assert.ok(r.stderr.includes(`${path.join(d, 'sub', 'y.log')}:3: part of an API key "bh_`), r.stderr);
  assert.match(r.stderr, /FAILED: 2 secrets in the logs/);
  assertNoWholeSecret(r, [stranger, stranger.slice(0, 30)]);
});

test('a recorded admin token is found wherever it is in a line; each occurrence counts', () => {
  const d = dirWith({ 'srv.log': `${TOKEN}\nok\nerror="bad token ${TOKEN}x" again=${TOKEN}\n` });
  const r = runScan(d);
  assert.equal(r.code, 1);
  const file = path.join(d, 'srv.log');
  const lines = r.stderr.split('\n').filter((l) => l.startsWith(file));
  assert.deepEqual(
    lines.map((l) => l.slice(file.length).replace(/".*$/, '')),
    [':1: a recorded secret ', ':3: a recorded secret ', ':3: a recorded secret '],
  );
  assertNoWholeSecret(r, [TOKEN]);
});

test('no logs, only empty logs, or no recorded secrets: the scan fails instead of passing vacuously', () => {
  let r = runScan(dirWith({}));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no server log/);
  r = runScan(dirWith({ 'empty.log': '' }));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no server log/);
  r = runScan(dirWith({ 'a.log': CLEAN_LOG }, null));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot read .*secrets.*no secret recorded/);
  r = runScan(dirWith({ 'a.log': CLEAN_LOG }, ['', '  ']));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /is empty \(no secret recorded/);
});

test('usage errors exit 2', () => {
  assert.equal(runScan().code, 2);
  assert.equal(runScan('a', 'b').code, 2);
  const d = dirWith({ 'f.log': 'x' });
  assert.equal(runScan(path.join(d, 'missing')).code, 2);
  assert.equal(runScan(path.join(d, 'f.log')).code, 2, 'a file, not a directory');
});
