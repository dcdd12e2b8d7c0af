// `make install DESTDIR=<tmp> PREFIX=/usr` with the binary and libraries already built (the
// build directory of BALANCEHUB_BIN; nothing is rebuilt): exactly the expected files, each with
// a sane mode; the systemd unit's ExecStart names the installed binary and the unit is hardened
// (and valid for systemd-analyze, where there is one); the installed man page renders without a
// warning and documents every serve option with its default and environment variable; the
// example config file names every option with its default and passes `balancehub config check`,
// commented out as installed and with its defaults uncommented.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { REPO_ROOT, binPath, makeTempDir, removeTempDir } from '../interop/harness.mjs';

const PREFIX = '/usr';
const VERSION = '0.1.0';

// Every option of `balancehub serve` (the issue 7 contract): default as the man page states it.
const OPTIONS = [
  ['config', 'none'],
  ['listen', '127.0.0.1:5000'],
  ['threads', 'number of CPUs'],
  ['admin-listen', '127.0.0.1:5001'],
  ['admin-token-file', 'none'],
  ['tls-cert', 'none'],
  ['tls-key', 'none'],
  ['data', './data'],
  ['store', 'sqlite:DIR/balancehub.db'],
  ['demo', 'false'],
  ['hub-path', '/ExecutionLiveServer/v1'],
  ['keepalive-ms', '15000'],
  ['client-timeout-ms', '30000'],
  ['handshake-timeout-ms', '15000'],
  ['max-message', '32768'],
  ['max-body', '1048576'],
  ['cors-origins', 'none'],
  ['lp-poll-timeout-ms', '90000'],
  ['reconnect-window-ms', '30000'],
  ['replay-buffer', '1048576'],
  ['max-connections', '100000'],
  ['max-connections-per-key', '32'],
  ['rate-limit', '50'],
  ['rate-burst', '100'],
  ['max-output', '1048576'],
  ['max-head', '16384'],
  ['request-timeout-ms', '10000'],
  ['idle-timeout-ms', '60000'],
  ['auth-fail-rate', '1'],
  ['auth-fail-burst', '20'],
  ['log-level', 'info'],
  ['log-format', 'logfmt'],
];
const envName = (name) => 'BALANCEHUB_' + name.toUpperCase().replaceAll('-', '_');

let dest; // DESTDIR
const root = (p) => path.join(dest, p);

function run(file, args, opts = {}) {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 60_000, ...opts });
  if (r.error) throw r.error;
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

// Every path under dir, relative, with a trailing / for directories.
function tree(dir, rel = '') {
  const out = [];
  for (const name of readdirSync(path.join(dir, rel)).sort()) {
    const r = path.join(rel, name);
    const st = lstatSync(path.join(dir, r));
    if (st.isDirectory()) out.push(r + '/', ...tree(dir, r));
    else out.push(r);
  }
  return out;
}

const mode = (p) => lstatSync(p).mode & 0o7777;

before(() => {
  const bin = path.resolve(binPath()); // make runs in the repository
  const build = path.dirname(bin);
  const libs = ['libbalancehub.a', 'libbalancehub.so', `libbalancehub.so.${VERSION}`].map((f) => path.join(build, f));
  for (const f of libs) assert.ok(existsSync(f), `${f} is missing: run \`make BUILD=${build} lib\` first`);
  dest = makeTempDir('balancehub-install-');
  // BUILD names the build directory; -o keeps make from rebuilding what is there (a sanitizer
  // build stays as it is), so this installs exactly what the other tests ran.
  const env = { ...process.env };
  for (const k of ['MAKEFLAGS', 'MFLAGS', 'MAKELEVEL']) delete env[k];
  const r = run(
    'make',
    ['-C', REPO_ROOT, '--no-print-directory', 'install', `DESTDIR=${dest}`, `PREFIX=${PREFIX}`, `BUILD=${build}`, ...[bin, ...libs].flatMap((f) => ['-o', f])],
    { env },
  );
  assert.equal(r.code, 0, `make install failed:\n${r.stdout}\n${r.stderr}`);
  assert.equal(readFileSync(root('usr/bin/balancehub')).compare(readFileSync(bin)), 0, 'the installed binary is the tested one');
});

after(() => removeTempDir(dest));

test('make install puts exactly the expected files in place, with sane modes', () => {
  assert.deepEqual(tree(dest), [
    'usr/',
    'usr/bin/',
    'usr/bin/balancehub',
    'usr/include/',
    'usr/include/balancehub/',
    'usr/include/balancehub/client.h',
    'usr/lib/',
    'usr/lib/libbalancehub.a',
    'usr/lib/libbalancehub.so',
    'usr/lib/libbalancehub.so.0',
    `usr/lib/libbalancehub.so.${VERSION}`,
    'usr/lib/pkgconfig/',
    'usr/lib/pkgconfig/balancehub.pc',
    'usr/lib/systemd/',
    'usr/lib/systemd/system/',
    'usr/lib/systemd/system/balancehub.service',
    'usr/share/',
    'usr/share/doc/',
    'usr/share/doc/balancehub/',
    'usr/share/doc/balancehub/balancehub.conf',
    'usr/share/man/',
    'usr/share/man/man1/',
    'usr/share/man/man1/balancehub.1',
  ]);
  const modes = {
    'usr/bin/balancehub': 0o755,
    [`usr/lib/libbalancehub.so.${VERSION}`]: 0o755,
    'usr/lib/libbalancehub.a': 0o644,
    'usr/include/balancehub/client.h': 0o644,
    'usr/lib/pkgconfig/balancehub.pc': 0o644,
    'usr/lib/systemd/system/balancehub.service': 0o644,
    'usr/share/doc/balancehub/balancehub.conf': 0o644,
    'usr/share/man/man1/balancehub.1': 0o644,
  };
  for (const [p, m] of Object.entries(modes)) {
    assert.equal(mode(root(p)).toString(8), m.toString(8), `mode of ${p}`);
  }
  for (const d of tree(dest).filter((p) => p.endsWith('/'))) {
    assert.equal(mode(root(d)) & 0o022, 0, `${d} is not group or world writable`);
    assert.equal(mode(root(d)) & 0o555, 0o555, `${d} is readable and searchable by all`);
  }
  assert.equal(readlinkSync(root('usr/lib/libbalancehub.so')), 'libbalancehub.so.0');
  assert.equal(readlinkSync(root('usr/lib/libbalancehub.so.0')), `libbalancehub.so.${VERSION}`);
  // Copied unchanged: the man page, the example config, the header.
  for (const [installed, source] of [
    ['usr/share/man/man1/balancehub.1', 'man/balancehub.1'],
    ['usr/share/doc/balancehub/balancehub.conf', 'dist/balancehub.conf'],
    ['usr/include/balancehub/client.h', 'include/balancehub/client.h'],
  ]) {
    assert.equal(readFileSync(root(installed), 'utf8'), readFileSync(path.join(REPO_ROOT, source), 'utf8'), installed);
  }
  assert.match(readFileSync(root('usr/lib/pkgconfig/balancehub.pc'), 'utf8'), /^prefix=\/usr$/m);
  const help = run(root('usr/bin/balancehub'), ['--help']);
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /^usage: balancehub /);
});

// The unit's settings: {key: [values...]} (a key may repeat), comments and sections skipped.
function unitSettings(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) (out[m[1]] ??= []).push(m[2]);
  }
  return out;
}

test('the systemd unit runs the installed binary with the config file, hardened', (t) => {
  const unitFile = root('usr/lib/systemd/system/balancehub.service');
  const text = readFileSync(unitFile, 'utf8');
  assert.doesNotMatch(text, /@[A-Z]+@/, 'every placeholder substituted');
  const u = unitSettings(text);
  const one = (k) => {
    assert.equal(u[k]?.length, 1, `${k}= set exactly once (got ${JSON.stringify(u[k])})`);
    return u[k][0];
  };
  assert.equal(one('ExecStart'), `${PREFIX}/bin/balancehub serve --config /etc/balancehub/balancehub.conf`);
  const exe = one('ExecStart').split(' ')[0];
  assert.ok(existsSync(root(exe)) && (mode(root(exe)) & 0o111) === 0o111, `ExecStart's ${exe} is the installed executable`);
  assert.equal(one('Type'), 'simple');
  assert.equal(one('ExecReload'), '/bin/kill -HUP $MAINPID');
  assert.equal(one('KillSignal'), 'SIGTERM');
  assert.match(one('TimeoutStopSec'), /^\d+$/);
  assert.ok(one('DynamicUser') === 'yes' || /^balancehub$/.test(u.User?.[0] ?? ''), 'a dynamic or dedicated user');
  assert.equal(one('StateDirectory'), 'balancehub');
  assert.ok(Number(one('LimitNOFILE')) >= 100_000 + 1024, 'LimitNOFILE leaves room for 100,000 connections');
  for (const [k, v] of [
    ['NoNewPrivileges', 'yes'],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['PrivateDevices', 'yes'],
    ['RestrictAddressFamilies', 'AF_INET AF_INET6 AF_UNIX'],
    ['CapabilityBoundingSet', ''],
    ['WantedBy', 'multi-user.target'],
  ]) {
    assert.equal(one(k), v, `${k}=`);
  }
  assert.equal(u.User, undefined, 'never root: no User= beside DynamicUser=');

  // systemd's own checks, where systemd-analyze exists: the unit verifies (its ExecStart pointed
  // at the binary inside DESTDIR) and its sandbox rates "OK".
  if (run('sh', ['-c', 'command -v systemd-analyze']).code !== 0) {
    t.diagnostic('systemd-analyze not found: unit verification skipped');
    return;
  }
  const check = makeTempDir('balancehub-unit-');
  try {
    const copy = path.join(check, 'balancehub.service');
    writeFileSync(copy, text.replace(`ExecStart=${exe} `, `ExecStart=${root(exe)} `));
    const v = run('systemd-analyze', ['verify', '--man=no', copy]);
    assert.equal(v.code, 0, `systemd-analyze verify:\n${v.stdout}${v.stderr}`);
    assert.equal(v.stderr, '', 'systemd-analyze verify says nothing');
    const s = run('systemd-analyze', ['security', '--offline=yes', '--no-pager', copy]);
    assert.equal(s.code, 0, s.stderr);
    const level = /Overall exposure level for balancehub\.service: ([\d.]+) (\S+)/.exec(s.stdout);
    assert.ok(level, `systemd-analyze security output:\n${s.stdout}`);
    assert.ok(Number(level[1]) < 2, `exposure level ${level[1]} ${level[2]} (want below 2)`);
  } finally {
    removeTempDir(check);
  }
});

// The man page as plain text (no overstriking, no SGR), with its groff warnings.
function renderMan(file) {
  const r = run('groff', ['-man', '-Tutf8', '-ww', '-P-cbou', file]);
  return { ...r, text: r.stdout };
}

test('the installed man page renders without warnings and documents every option, default and variable', () => {
  const page = root('usr/share/man/man1/balancehub.1');
  const z = run('groff', ['-man', '-Tutf8', '-ww', '-z', page]);
  assert.deepEqual({ code: z.code, stderr: z.stderr }, { code: 0, stderr: '' }, 'groff -man -Tutf8 -ww -z');
  const { text, stderr } = renderMan(page);
  assert.equal(stderr, '');
  const sections = text.split('\n').filter((l) => /^[A-Z][A-Z ]+$/.test(l));
  for (const s of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'COMMANDS', 'SERVE OPTIONS', 'CONFIGURATION FILE', 'ENVIRONMENT', 'SIGNALS', 'ENDPOINTS', 'FILES', 'EXIT STATUS', 'EXAMPLES', 'SEE ALSO']) {
    assert.ok(sections.includes(s), `section ${s} (have ${sections.join(', ')})`);
  }
  // SERVE OPTIONS: one entry per option, "--name ..." at the tag indent, then its text.
  const body = text.slice(text.indexOf('\nSERVE OPTIONS\n'), text.indexOf('\nCONFIGURATION FILE\n'));
  const entries = new Map();
  let cur = null;
  for (const line of body.split('\n')) {
    const m = /^ {7}--([a-z-]+)/.exec(line);
    if (m) entries.set(m[1], (cur = []));
    if (cur) cur.push(line.trim());
  }
  for (const [name, def] of OPTIONS) {
    const e = entries.get(name)?.join(' ').replace(/\s+/g, ' ');
    assert.ok(e, `SERVE OPTIONS documents --${name}`);
    const want = def === 'none' ? /Default: none\b/ : new RegExp(`Default: ${def.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[.;\\s]`);
    assert.match(e, want, `--${name}: its default`);
    assert.ok(e.includes(`Environment: ${envName(name)}.`), `--${name}: its variable ${envName(name)} in: ${e}`);
  }
  for (const sig of ['SIGTERM', 'SIGHUP']) assert.match(text, new RegExp(`\\n {7}${sig}\\b`), `SIGNALS: ${sig}`);
  for (const ep of ['/healthz', '/readyz', '/metrics', '/admin/']) assert.match(text, new RegExp(`\\n {7}${ep.replace('/', '\\/')}`), `ENDPOINTS: ${ep}`);
  for (const code of ['0', '1', '2']) assert.match(text, new RegExp(`\\n {7}${code} {6}`), `EXIT STATUS: ${code}`);
});

test('the man page lists every option `balancehub serve --help` lists', () => {
  const help = run(binPath(), ['serve', '--help']);
  assert.equal(help.code, 0, help.stderr);
  const listed = [...new Set([...help.stdout.matchAll(/^\s*(?:-h, )?--([a-z][a-z-]*)/gm)].map((m) => m[1]))];
  assert.ok(listed.length >= OPTIONS.length, `serve --help lists the options: ${listed.join(' ')}`);
  const man = readFileSync(root('usr/share/man/man1/balancehub.1'), 'utf8').replaceAll('\\-', '-');
  for (const name of listed) assert.ok(man.includes(`--${name}`), `the man page documents --${name} (from serve --help)`);
  for (const [name] of OPTIONS) assert.ok(listed.includes(name), `serve --help lists --${name}`);
});

test('the example config names every option with its default and passes `balancehub config check`', () => {
  const conf = root('usr/share/doc/balancehub/balancehub.conf');
  const text = readFileSync(conf, 'utf8');
  const lines = text.split('\n');
  const settings = new Map();
  for (const l of lines) {
    assert.ok(l === '' || l.startsWith('#'), `every line is a comment or blank as installed: ${JSON.stringify(l)}`);
    const m = /^# ([a-z][a-z-]*) = (.*)$/.exec(l);
    if (m) {
      assert.ok(!settings.has(m[1]), `${m[1]} appears once`);
      settings.set(m[1], m[2]);
    }
  }
  for (const [name, def] of OPTIONS) {
    if (name === 'config') continue;
    assert.ok(settings.has(name), `the example names ${name}`);
    if (def !== 'none' && name !== 'store' && name !== 'threads') assert.equal(settings.get(name), def, `${name}: its default`);
  }
  assert.deepEqual([...settings.keys()].filter((k) => !OPTIONS.some(([n]) => n === k)), [], 'no unknown option');

  const check = (file) => run(binPath(), ['config', 'check', file]);
  let r = check(conf);
  assert.deepEqual({ code: r.code, stdout: r.stdout, stderr: r.stderr }, { code: 0, stdout: `${conf}: ok\n`, stderr: '' }, 'config check of the example as installed');

  // The defaults, uncommented, are valid values too (the options naming files or origins stay
  // commented: their examples name files that need not exist here).
  const dir = makeTempDir('balancehub-conf-');
  try {
    const active = path.join(dir, 'defaults.conf');
    const skip = new Set(['admin-token-file', 'tls-cert', 'tls-key', 'cors-origins']);
    writeFileSync(active, lines.map((l) => {
      const m = /^# ([a-z][a-z-]*) = /.exec(l);
      return m && !skip.has(m[1]) ? l.slice(2) : l;
    }).join('\n'));
    r = check(active);
    assert.deepEqual({ code: r.code, stdout: r.stdout, stderr: r.stderr }, { code: 0, stdout: `${active}: ok\n`, stderr: '' }, 'config check with the defaults uncommented');
    // And the check is not a rubber stamp: a misspelt option fails, naming file and line.
    const bad = path.join(dir, 'bad.conf');
    copyFileSync(active, bad);
    writeFileSync(bad, readFileSync(bad, 'utf8') + '\nlisten-port = 5000\n');
    r = check(bad);
    assert.equal(r.code, 2, `config check of a misspelt option: ${r.stdout}${r.stderr}`);
    assert.ok((r.stdout + r.stderr).includes(`${bad}:${readFileSync(bad, 'utf8').split('\n').length - 1}: listen-port`), r.stdout + r.stderr);
  } finally {
    removeTempDir(dir);
  }
});
