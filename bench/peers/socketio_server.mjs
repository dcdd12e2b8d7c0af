// The Socket.IO peer: what most Node teams would write instead of a SignalR hub. Event
// "GetBalances" (clientId, ack): emits "executionEvents" with the same envelope balancehub sends
// (built and serialized per request, the idiomatic way), then acknowledges, as balancehub sends the
// event then the Completion. The ack carries null (like the Completion's result), or with
// --ack-data the balances `data` object too. The envelope comes from capture.mjs's output.
//   node socketio_server.mjs --event-file FILE [--listen 127.0.0.1:0] [--ack-data]
// Prints "listening on http://HOST:PORT" once ready; SIGTERM/SIGINT stop it.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { Server } from 'socket.io';

const RS = '\x1e';
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const eventFile = opt('--event-file');
if (!eventFile) {
  console.error('usage: node socketio_server.mjs --event-file FILE [--listen HOST:PORT] [--ack-data]');
  process.exit(2);
}
const ackData = args.includes('--ack-data');
const [host, port] = opt('--listen', '127.0.0.1:0').split(':');
const raw = readFileSync(eventFile, 'utf8');
const eventText = raw.startsWith('{"request_payload"') ? JSON.parse(raw).event : raw;
const envelope = JSON.parse(eventText.replace(RS, '')).arguments[0];

const server = http.createServer();
const io = new Server(server, { serveClient: false, maxHttpBufferSize: 1 << 20 });

io.on('connection', (socket) => {
  socket.on('GetBalances', (clientId, ack) => {
    socket.emit('executionEvents', { ...envelope, clientId });
    if (typeof ack === 'function') ack(ackData ? envelope.data : null);
  });
});

server.listen(Number(port), host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}`);
});
const stop = () => {
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
