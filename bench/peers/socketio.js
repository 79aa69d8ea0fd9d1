// bench/peers/socketio.js - the Socket.IO peer of `make bench-peers`
// (bench/peers/README.md has the protocol every peer speaks).
//
//   node bench/peers/socketio.js PORT
//
// Idiomatic Socket.IO 4: a client emits "subscribe" with the channel and
// an acknowledgement, the server joins it to the room of that name and
// acks {success: true}; POST /broadcast (on the same http server, keep-
// alive) does io.to(channel).emit(event, data), which encodes the packet
// once per broadcast.  Clients connect straight with the WebSocket
// transport (/socket.io/?EIO=4&transport=websocket); long polling is
// left on, as by default, but the bench never uses it.
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const { apiHandler } = require('./http_api');

const port = Number(process.argv[2]);

function broadcast(body) {
	const msg = JSON.parse(body);
	const chans = Array.isArray(msg.channel) ? msg.channel : [msg.channel];

	if (typeof msg.event !== 'string')
		throw new Error('no event');
	io.to(chans.map(String)).emit(msg.event,
		msg.data === undefined ? {} : msg.data);
}

const api = apiHandler(broadcast, () => io.engine.clientsCount);
const server = http.createServer((req, res) => {
	if (req.url.startsWith('/socket.io/'))
		return;		// engine.io answers these
	api(req, res);
});
server.keepAliveTimeout = 60000;

const io = new Server(server, { serveClient: false,
				 perMessageDeflate: false });

io.on('connection', (socket) => {
	socket.on('subscribe', (channel, ack) => {
		if (typeof channel !== 'string') {
			if (typeof ack === 'function')
				ack({ success: false });
			return;
		}
		socket.join(channel);
		if (typeof ack === 'function')
			ack({ success: true });
	});
});

server.listen(port, '127.0.0.1', () =>
	console.error('socketio.js: listening on 127.0.0.1:' + port));
process.on('SIGTERM', () => process.exit(0));
