/**
 * Baseline: a bare `node:http` server answering the echo action's JSON at the gateway's path.
 * It runs in a child process of its own (PORT from the environment, loopback only), like the
 * gateway, so it does not share the load generator's event loop. Self-contained, like
 * echo.service.ts: the bench transpiles it and runs it with plain `node`.
 */
import http from "node:http";

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) throw new Error("PORT must be set");

const server = http.createServer((req, res) => {
	if (req.method === "GET" && req.url === "/api/bench/ping") {
		const body = JSON.stringify({ pong: true, at: Date.now() });
		res.writeHead(200, { "Content-Type": "application/json; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
		res.end(body);
	} else {
		res.writeHead(404);
		res.end();
	}
});

server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => {
	server.closeAllConnections();
	server.close(() => process.exit(0));
});
