// The Node ceiling peer: a plain `ws` WebSocket server speaking just enough SignalR JSON for the
// GetBalances benchmark, so that `balancehub bench` drives it exactly as it drives balancehub.
// It answers negotiate (v1, WebSockets only), the handshake with {}, every GetBalances invocation
// with the event record balancehub sent for the demo user (captured by capture.mjs, replayed byte
// for byte) followed by a Completion for its invocationId, and ignores pings. No authentication.
//   node ws_server.mjs --event-file FILE [--listen 127.0.0.1:0]
// Prints "listening on http://HOST:PORT" once ready; SIGTERM/SIGINT stop it.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { WebSocketServer } from 'ws';

const RS = '\x1e';
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const eventFile = opt('--event-file');
if (!eventFile) {
  console.error('usage: node ws_server.mjs --event-file FILE [--listen HOST:PORT]');
  process.exit(2);
}
const [host, port] = opt('--listen', '127.0.0.1:0').split(':');
// The file holds capture.mjs's JSON (its "event" field) or the bare record.
const raw = readFileSync(eventFile, 'utf8');
const eventText = raw.startsWith('{"request_payload"') ? JSON.parse(raw).event : raw;
const EVENT = Buffer.from(eventText.endsWith(RS) ? eventText : eventText + RS);

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url.includes('/negotiate')) {
    const id = randomUUID();
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({
      negotiateVersion: 1, connectionId: id, connectionToken: id,
      availableTransports: [{ transport: 'WebSockets', transferFormats: ['Text', 'Binary'] }],
    }));
    return;
  }
  res.writeHead(404).end();
});
const wss = new WebSocketServer({ server, maxPayload: 1 << 20 });

wss.on('connection', (ws) => {
  let handshaken = false;
  let pending = ''; // a record split across messages (SignalR allows it)
  ws.on('message', (data) => {
    const text = pending + data.toString('utf8');
    const records = text.split(RS);
    pending = records.pop();
    for (const rec of records) {
      if (!handshaken) {
        handshaken = true;
        ws.send('{}' + RS);
        continue;
      }
      const msg = JSON.parse(rec);
      if (msg.type === 1 && msg.target === 'GetBalances') {
        ws.send(EVENT, { binary: false });
        if (msg.invocationId !== undefined) {
          ws.send(`{"type":3,"invocationId":${JSON.stringify(msg.invocationId)},"result":null}${RS}`);
        }
      } else if (msg.type === 7) {
        ws.close();
      }
    }
  });
  ws.on('error', () => {});
});

server.listen(Number(port), host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
const stop = () => {
  for (const c of wss.clients) c.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
