// bench/peers/ws.js - the node `ws` peer of `make bench-peers`
// (bench/peers/README.md has the protocol every peer speaks).
//
//   node bench/peers/ws.js PORT
//
// Idiomatic `ws`: a WebSocketServer on node's http server, a Map from
// channel to a Set of sockets, one JSON string per broadcast and channel
// sent to every member.  POST /broadcast on the same port (keep-alive).
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');
const { apiHandler } = require('./http_api');

const port = Number(process.argv[2]);
const channels = new Map();	// channel -> Set of sockets
let nextId = 0;

function send(ws, obj) {
	ws.send(JSON.stringify(obj));
}

function broadcast(body) {
	const msg = JSON.parse(body);
	const chans = Array.isArray(msg.channel) ? msg.channel : [msg.channel];

	if (typeof msg.event !== 'string')
		throw new Error('no event');
	for (const ch of chans) {
		const members = channels.get(String(ch));

		if (!members)
			continue;
		const out = JSON.stringify({ event: msg.event, channel: ch,
			data: msg.data === undefined ? {} : msg.data });
		for (const ws of members)
			ws.send(out);
	}
}

const server = http.createServer(apiHandler(broadcast,
	() => wss.clients.size));
server.keepAliveTimeout = 60000;

const wss = new WebSocketServer({ server, perMessageDeflate: false,
				  maxPayload: 64 * 1024 });

wss.on('connection', (ws) => {
	const mine = new Set();

	send(ws, { event: 'connect',
		   data: { id: 'ws-' + nextId++, protocol: 1 } });
	ws.on('message', (data) => {
		let msg;

		try {
			msg = JSON.parse(data.toString());
		} catch (e) {
			send(ws, { event: 'error', data: { code: 'bad_json' } });
			return;
		}
		if (msg && msg.event === 'subscribe' && msg.data &&
		    typeof msg.data.channel === 'string') {
			const ch = msg.data.channel;
			let members = channels.get(ch);

			if (!members)
				channels.set(ch, members = new Set());
			members.add(ws);
			mine.add(ch);
			send(ws, { event: 'callback',
				   callbackId: msg.callbackId,
				   data: { success: true } });
			return;
		}
		send(ws, { event: 'error', data: { code: 'unknown_event' } });
	});
	ws.on('close', () => {
		for (const ch of mine) {
			const members = channels.get(ch);

			members.delete(ws);
			if (!members.size)
				channels.delete(ch);
		}
	});
});

server.listen(port, '127.0.0.1', () =>
	console.error('ws.js: listening on 127.0.0.1:' + port));
process.on('SIGTERM', () => process.exit(0));
