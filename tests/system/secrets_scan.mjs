#!/usr/bin/env node
// Secrets never in logs: `node tests/system/secrets_scan.mjs DIR` scans the server logs the
// test harness wrote to DIR (BALANCEHUB_TEST_LOG_DIR: every server's stderr, one file each)
// for the secrets it recorded in DIR/secrets (demo keys, keys from admin answers, admin tokens;
// one a line), and for anything shaped like an API key whether recorded or not. Exit 0 when
// clean; 1 naming FILE:LINE of each finding (the secret shown only in part), or when DIR holds
// no log or no secret (so the scan can never pass by having nothing to look at); 2 on usage.

import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// An API key (src/auth/auth.h): "bh_", the 16 lowercase hex digits of its id, "_", 43 base64url
// characters of secret. A key id followed by 8 or more secret characters counts too: a log that
// cut a key short still leaked part of its secret (the id alone, key_id=..., is public).
export const KEY_RE = /bh_[0-9a-f]{16}_[A-Za-z0-9_-]{8,}/g;
export const FULL_KEY_RE = /^bh_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/;
const MAX_SHOWN = 20; // findings printed per file

// What may be printed of a secret: a short prefix and the length.
export function redact(secret) {
  const keep = Math.min(6, Math.floor(secret.length / 4));
  return `${JSON.stringify(secret.slice(0, keep) + '…')} (${secret.length} chars)`;
}

// Every regular file under dir (depth first, sorted), paths relative to dir.
function listFiles(dir, rel = '') {
  const out = [];
  for (const name of readdirSync(path.join(dir, rel)).sort()) {
    const r = path.join(rel, name);
    const st = statSync(path.join(dir, r));
    if (st.isDirectory()) out.push(...listFiles(dir, r));
    else if (st.isFile()) out.push(r);
  }
  return out;
}

// 1-based line of offset i in text, given the sorted offsets of its newlines.
function lineOf(newlines, i) {
  let lo = 0;
  let hi = newlines.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (newlines[mid] < i) lo = mid + 1;
    else hi = mid;
  }
  return lo + 1;
}

// The findings in one log text: [{index, what}] sorted by offset.
export function findSecrets(text, secrets) {
  const found = [];
  const recorded = new Set(secrets);
  for (const m of text.matchAll(KEY_RE)) {
    const s = m[0];
    let what;
    if (recorded.has(s.slice(0, 63))) what = `a recorded API key ${redact(s.slice(0, 63))}`;
    else if (FULL_KEY_RE.test(s.slice(0, 63))) what = `an API key ${redact(s.slice(0, 63))}`;
    else what = `part of an API key ${redact(s)}`;
    found.push({ index: m.index, what });
  }
  // Recorded secrets of another shape (admin tokens); key-shaped ones were found above.
  for (const s of recorded) {
    if (FULL_KEY_RE.test(s)) continue;
    for (let i = text.indexOf(s); i >= 0; i = text.indexOf(s, i + 1)) {
      found.push({ index: i, what: `a recorded secret ${redact(s)}` });
    }
  }
  return found.sort((a, b) => a.index - b.index);
}

// Scans dir; returns {ok, lines: [message...]} (what main prints).
export function scan(dir) {
  const lines = [];
  const fail = (msg) => ({ ok: false, lines: [...lines, msg] });
  let secrets;
  try {
    secrets = readFileSync(path.join(dir, 'secrets'), 'latin1')
      .split('\n')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  } catch (err) {
    return fail(`secrets_scan: cannot read ${path.join(dir, 'secrets')}: ${err.message} (no secret recorded: the scan would prove nothing)`);
  }
  if (secrets.length === 0) return fail(`secrets_scan: ${path.join(dir, 'secrets')} is empty (no secret recorded: the scan would prove nothing)`);
  const logs = listFiles(dir).filter((f) => f !== 'secrets');
  let bytes = 0;
  let bad = 0;
  for (const rel of logs) {
    const file = path.join(dir, rel);
    const text = readFileSync(file, 'latin1'); // byte for byte: secrets are ASCII
    bytes += text.length;
    const found = findSecrets(text, secrets);
    if (found.length === 0) continue;
    bad += found.length;
    const newlines = [];
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) newlines.push(i);
    for (const f of found.slice(0, MAX_SHOWN)) lines.push(`${file}:${lineOf(newlines, f.index)}: ${f.what}`);
    if (found.length > MAX_SHOWN) lines.push(`${file}: ... and ${found.length - MAX_SHOWN} more`);
  }
  if (logs.length === 0 || bytes === 0) return fail(`secrets_scan: no server log in ${dir} (nothing was scanned)`);
  const summary = `${logs.length} log files (${bytes} bytes), ${secrets.length} recorded secrets`;
  if (bad > 0) return fail(`secrets_scan: FAILED: ${bad} secrets in the logs; scanned ${summary}`);
  return { ok: true, lines: [`secrets_scan: clean: ${summary}`] };
}

function main(argv) {
  if (argv.length !== 1 || argv[0].startsWith('-')) {
    console.error('usage: node tests/system/secrets_scan.mjs DIR');
    return 2;
  }
  let st;
  try {
    st = statSync(argv[0]);
  } catch (err) {
    console.error(`secrets_scan: ${argv[0]}: ${err.message}`);
    return 2;
  }
  if (!st.isDirectory()) {
    console.error(`secrets_scan: ${argv[0]} is not a directory`);
    return 2;
  }
  const r = scan(argv[0]);
  for (const l of r.lines) (r.ok ? console.log : console.error)(l);
  return r.ok ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
