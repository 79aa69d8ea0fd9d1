// bench/peers/uws.js - the uWebSockets.js peer of `make bench-peers`
// (bench/peers/README.md has the protocol every peer speaks).
//
//   node bench/peers/uws.js PORT
//
// Idiomatic uWS.js: one App, its built-in pub/sub (ws.subscribe,
// app.publish: one topic per channel), POST /broadcast on the same port.
// The native addon is required directly: the npm package that ships it
// (@trufflesuite/uws-js-unofficial, a rebuild of uWS.js v20.30.0) falls
// back to a JavaScript emulation on `ws` when the addon does not load, and
// that fallback must never be measured as uWS.
'use strict';

const path = require('path');

const pkg = path.dirname(require.resolve(
	'@trufflesuite/uws-js-unofficial/package.json'));
const uWS = require(path.join(pkg, 'binaries', 'uws_' + process.platform +
	'_' + process.arch + '_' + process.versions.modules + '.node'));

const port = Number(process.argv[2]);
// Bagou's [limits] max_queued_bytes: what a slow subscriber may hold back.
const MAX_BACKPRESSURE = 1 << 20;
let nextId = 0;
let connections = 0;

function send(ws, obj) {
	ws.send(JSON.stringify(obj), false);
}

function onMessage(ws, message) {
	let msg;

	try {
		msg = JSON.parse(Buffer.from(message).toString());
	} catch (e) {
		send(ws, { event: 'error', data: { code: 'bad_json' } });
		return;
	}
	if (msg && msg.event === 'subscribe' && msg.data &&
	    typeof msg.data.channel === 'string') {
		ws.subscribe(msg.data.channel);
		send(ws, { event: 'callback', callbackId: msg.callbackId,
			   data: { success: true } });
		return;
	}
	send(ws, { event: 'error', data: { code: 'unknown_event' } });
}

function broadcast(body) {
	const msg = JSON.parse(body);
	const chans = Array.isArray(msg.channel) ? msg.channel : [msg.channel];

	if (typeof msg.event !== 'string')
		throw new Error('no event');
	for (const ch of chans)
		app.publish(String(ch), JSON.stringify({ event: msg.event,
			channel: ch, data: msg.data === undefined ? {} :
			msg.data }), false);
}

const app = uWS.App().ws('/*', {
	compression: uWS.DISABLED,
	maxPayloadLength: 64 * 1024,
	maxBackpressure: MAX_BACKPRESSURE,
	idleTimeout: 120,
	open: (ws) => {
		connections++;
		send(ws, { event: 'connect',
			   data: { id: 'uws-' + nextId++, protocol: 1 } });
	},
	message: onMessage,
	close: () => { connections--; },
}).post('/broadcast', (res) => {
	const parts = [];
	let aborted = false;

	res.onAborted(() => { aborted = true; });
	res.onData((chunk, last) => {
		parts.push(Buffer.from(chunk));	// chunk is only lent
		if (!last || aborted)
			return;
		try {
			broadcast(Buffer.concat(parts).toString());
		} catch (e) {
			res.cork(() => res.writeStatus('400 Bad Request')
				.end('{"success":false}'));
			return;
		}
		res.cork(() => res.writeStatus('202 Accepted')
			.writeHeader('Content-Type', 'application/json')
			.end('{"success":true}'));
	});
}).get('/health', (res) => {
	res.writeHeader('Content-Type', 'application/json')
		.end(JSON.stringify({ connections }));
}).listen('127.0.0.1', port, (token) => {
	if (!token) {
		console.error('uws.js: cannot listen on 127.0.0.1:' + port);
		process.exit(1);
	}
	console.error('uws.js: listening on 127.0.0.1:' + port);
});

process.on('SIGTERM', () => process.exit(0));
