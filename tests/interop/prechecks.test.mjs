// GetBalances argument validation: every bad clientId is reported as one preChecksError
// envelope on executionEvents, and the invocation still completes without an error.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EventQueue, assertDemoSnapshot, explained, startConnection, startServer, withTimeout } from './harness.mjs';

let server;
let conn;
let events;
const ex = (fn) => explained(() => server, fn);

before(async () => {
  server = await startServer();
  conn = server.connect();
  events = new EventQueue(conn);
  await startConnection(conn);
});

after(async () => {
  if (server) await server.stop();
});

const REQUIRED = 'clientId is required';
const NOT_STRING = 'clientId must be a string';
const EMPTY = 'clientId must not be empty';
const TOO_LONG = 'clientId must be at most 36 characters';
const EXTRA = 'GetBalances takes exactly one argument: clientId';

function preChecksError(clientId, message) {
  return {
    channel: 'executionEvents',
    topic: 'account.balances',
    subject: 'preChecksError',
    type: 'error',
    clientId,
    data: { message },
  };
}

// Invokes GetBalances with `args`; the invocation must resolve, and exactly one event must have
// arrived by then (events come before their Completion; a stray extra event would show up in the
// next call's count).
async function invokeOne(args) {
  assert.equal(events.pending, 0, `unexpected earlier events: ${JSON.stringify(events.drain())}`);
  const result = await withTimeout(conn.invoke('GetBalances', ...args), 5_000, `invoke GetBalances(${JSON.stringify(args)})`);
  assert.ok(result === null || result === undefined, `invoke result: ${JSON.stringify(result)}`);
  const seen = events.drain();
  assert.equal(seen.length, 1, `events for GetBalances(${JSON.stringify(args)}): ${JSON.stringify(seen)}`);
  return seen[0];
}

const cases = [
  ['missing argument', [], preChecksError(null, REQUIRED)],
  ['null', [null], preChecksError(null, REQUIRED)],
  ['number 42', [42], preChecksError(null, NOT_STRING)],
  ['number 0', [0], preChecksError(null, NOT_STRING)],
  ['boolean true', [true], preChecksError(null, NOT_STRING)],
  ['object {}', [{}], preChecksError(null, NOT_STRING)],
  ['object with fields', [{ clientId: 'abc' }], preChecksError(null, NOT_STRING)],
  ['array []', [[]], preChecksError(null, NOT_STRING)],
  ['array ["abc"]', [['abc']], preChecksError(null, NOT_STRING)],
  ['empty string', [''], preChecksError('', EMPTY)],
  ['37 ASCII characters', ['x'.repeat(37)], preChecksError('x'.repeat(37), TOO_LONG)],
  ['37 emoji (code points, not UTF-16 units or bytes)', ['😀'.repeat(37)], preChecksError('😀'.repeat(37), TOO_LONG)],
  ['two arguments', ['a', 'b'], preChecksError('a', EXTRA)],
  ['three arguments', ['a', null, 3], preChecksError('a', EXTRA)],
];

for (const [name, args, expected] of cases) {
  test(`GetBalances with ${name} -> preChecksError "${expected.data.message}"`, { timeout: 10_000 }, ex(async () => {
    const env = await invokeOne(args);
    assert.equal(typeof env?.data?.message, 'string', `data.message is a string in ${JSON.stringify(env)}`);
    assert.match(env.data.message, expected.data.message === EXTRA ? /argument/ : /clientId/);
    assert.deepEqual(env, expected);
  }));
}

const good = [
  ['1 character', 'x'],
  ['36 ASCII characters', 'x'.repeat(36)],
  ['36 emoji (72 UTF-16 units, 144 UTF-8 bytes)', '😀'.repeat(36)],
  ['36 two-byte characters', 'é'.repeat(36)],
  ['JSON-special characters', 'a"b\\c/d\u0001\n\t</script>'],
  ['a UUID', '123e4567-e89b-12d3-a456-426614174000'],
];

for (const [name, clientId] of good) {
  test(`GetBalances with ${name} succeeds and echoes the clientId exactly`, { timeout: 10_000 }, ex(async () => {
    const env = await invokeOne([clientId]);
    assertDemoSnapshot(env, clientId);
  }));
}

test('the connection is still healthy after all the bad calls', { timeout: 10_000 }, ex(async () => {
  const env = await invokeOne(['after-prechecks']);
  assertDemoSnapshot(env, 'after-prechecks');
  assert.equal(conn.state, 'Connected');
}));
