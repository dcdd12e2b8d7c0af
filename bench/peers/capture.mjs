// Records one real GetBalances exchange with a running balancehub over a raw WebSocket: the
// handshake, one invocation, the executionEvents frame and the Completion frame. Prints one JSON
// object with their sizes (payloads and on-the-wire frames) and the event record itself, which the
// peers replay byte for byte. Usage: node capture.mjs URL API_KEY_FILE CLIENT_ID [INVOCATION_ID]
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const [url, keyFile, clientId, invocationId = '1'] = process.argv.slice(2);
if (!url || !keyFile || !clientId) {
  console.error('usage: node capture.mjs URL API_KEY_FILE CLIENT_ID [INVOCATION_ID]');
  process.exit(2);
}
const key = readFileSync(keyFile, 'utf8').trim();
const RS = '\x1e';

// RFC 6455 frame header size: 2 bytes, +2 or +8 for the extended length, +4 for a client mask.
const frameBytes = (n, masked) => n + 2 + (n >= 65536 ? 8 : n >= 126 ? 2 : 0) + (masked ? 4 : 0);

const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/ExecutionLiveServer/v1?access_token=${encodeURIComponent(key)}`);
const timer = setTimeout(() => {
  console.error('capture: no complete exchange within 5 s');
  process.exit(1);
}, 5000);
const request = JSON.stringify({ type: 1, invocationId, target: 'GetBalances', arguments: [clientId] }) + RS;
let event = null;
ws.on('open', () => ws.send('{"protocol":"json","version":1}' + RS));
ws.on('error', (e) => {
  console.error(`capture: ${e.message}`);
  process.exit(1);
});
let responseFrames = 0; // frames carrying the answer (the server may put both records in one)
ws.on('message', (data) => {
  const text = data.toString('utf8');
  if (text === '{}' + RS) {
    ws.send(request);
    return;
  }
  responseFrames += frameBytes(data.length, false);
  for (const rec of text.split(RS).filter(Boolean)) {
    const msg = JSON.parse(rec);
    if (msg.type === 1 && msg.target === 'executionEvents') {
      event = rec + RS;
    } else if (msg.type === 3 && msg.invocationId === invocationId) {
      if (!event) throw new Error('Completion before the event');
      clearTimeout(timer);
      const req = Buffer.byteLength(request);
      console.log(JSON.stringify({
        request_payload: req,
        request_frame: frameBytes(req, true),
        event_payload: Buffer.byteLength(event),
        completion_payload: Buffer.byteLength(rec + RS),
        response_frames: responseFrames,
        data_json: Buffer.byteLength(JSON.stringify(JSON.parse(event.slice(0, -1)).arguments[0].data)),
        event,
      }));
      ws.close();
    }
  }
});
