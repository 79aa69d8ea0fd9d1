// bench/peers/http_api.js - the HTTP side the node peers (ws.js,
// socketio.js) share: GET /health with their connection count, POST
// /broadcast (keep-alive) answered 202, or 400 when broadcast() throws.
'use strict';

function apiHandler(broadcast, connections) {
	return (req, res) => {
		if (req.method === 'GET' && req.url === '/health') {
			res.writeHead(200, { 'Content-Type': 'application/json' });
			res.end(JSON.stringify({ connections: connections() }));
			return;
		}
		if (req.method !== 'POST' || req.url !== '/broadcast') {
			res.writeHead(404);
			res.end();
			return;
		}
		const parts = [];
		req.on('data', (c) => parts.push(c));
		req.on('end', () => {
			try {
				broadcast(Buffer.concat(parts).toString());
			} catch (e) {
				res.writeHead(400, { 'Content-Type':
					'application/json' });
				res.end('{"success":false}');
				return;
			}
			res.writeHead(202, { 'Content-Type': 'application/json' });
			res.end('{"success":true}');
		});
	};
}

module.exports = { apiHandler };
