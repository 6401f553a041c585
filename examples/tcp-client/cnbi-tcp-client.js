#!/usr/bin/env node
/**
 * A small client of cnbicloud's TCP real-time channel (see README.md next to this file).
 * Node >= 18, no dependencies: copy it, or read it as the reference for a client in another language.
 *
 *   const { CnbiTcpClient } = require("./cnbi-tcp-client");
 *   const client = await CnbiTcpClient.connect({ host: "127.0.0.1", port: 7070, token: accessToken });
 *   client.on("chat.message", (msg) => console.log(msg));
 *   const sent = await client.call("chat.send", { to, type: "text", content: "hi", clientMsgId });
 *
 * As a command line tool:
 *   node cnbi-tcp-client.js --host 127.0.0.1 --port 7070 --token <accessToken>
 * prints every pushed event as a JSON line and reads `<action> <json params>` lines from stdin.
 */
"use strict";

const { EventEmitter } = require("node:events");
const net = require("node:net");
const readline = require("node:readline");
const { StringDecoder } = require("node:string_decoder");

/** Names this class emits itself; a pushed event with one of them is only emitted as "event". */
const OWN_EVENTS = new Set(["event", "close", "error", "serverError", "newListener", "removeListener"]);

/**
 * An error answered by the server: `code` (HTTP-like status), `type` (e.g. "VALIDATION_ERROR"), `data`.
 * @param {{ name?: string, message?: string, code?: number, type?: string, data?: unknown }} e
 * @returns {Error & { code?: number, type?: string, data?: unknown }}
 */
function serverError(e) {
	const err = /** @type {Error & { code?: number, type?: string, data?: unknown }} */ (new Error((e && e.message) || "error"));
	err.name = (e && e.name) || "Error";
	err.code = e && e.code;
	err.type = e && e.type;
	err.data = e && e.data;
	return err;
}

/**
 * Events:
 *  - "event" (event: string, data): every pushed event; also emitted under its own name ("chat.message", …)
 *  - "serverError" (err: Error): an error frame without id (a protocol error; the server usually closes next)
 *  - "close" ({ error?: Error }): the connection is gone; error says why when known
 */
class CnbiTcpClient extends EventEmitter {
	/**
	 * Connects and authenticates. Resolves once the server accepted the token; rejects with the
	 * server's error (code 401, …) or the connection's error otherwise.
	 * @param {{ host: string, port: number, token: string, pingIntervalMs?: number, callTimeoutMs?: number }} options
	 * @returns {Promise<CnbiTcpClient>}
	 */
	static connect({ host, port, token, pingIntervalMs = 20000, callTimeoutMs = 10000 }) {
		return new Promise((resolve, reject) => {
			const socket = net.connect({ host, port });
			// The operating system's connect timeout can be minutes; give up sooner.
			const connectTimer = setTimeout(() => socket.destroy(new Error(`cannot connect within ${callTimeoutMs} ms`)), callTimeoutMs);
			const failEarly = (err) => {
				clearTimeout(connectTimer);
				reject(err);
			};
			socket.once("error", failEarly);
			socket.once("connect", () => {
				clearTimeout(connectTimer);
				socket.off("error", failEarly);
				const client = new CnbiTcpClient(socket, { pingIntervalMs, callTimeoutMs });
				client._request({ type: "auth", token }).then(
					(session) => {
						client.session = session;
						resolve(client);
					},
					(err) => {
						client.close();
						reject(err);
					},
				);
			});
		});
	}

	/**
	 * Use CnbiTcpClient.connect(); the constructor takes an already connected socket.
	 * @param {net.Socket} socket
	 * @param {{ pingIntervalMs: number, callTimeoutMs: number }} options
	 */
	constructor(socket, { pingIntervalMs, callTimeoutMs }) {
		super();
		this.socket = socket;
		this.callTimeoutMs = callTimeoutMs;
		/** @type {unknown} what the server answered to auth */
		this.session = undefined;
		/** @type {Map<number, { resolve: (data: unknown) => void, reject: (err: Error) => void, timer: NodeJS.Timeout }>} */
		this.pending = new Map();
		this.nextId = 1;
		this.closed = false;
		/** @type {Error | undefined} the last thing that went wrong, reported with "close" */
		this.lastError = undefined;

		// Frames are lines. StringDecoder keeps a multi-byte character split between two TCP
		// chunks together; `buffered` keeps the unterminated end of the last chunk.
		const decoder = new StringDecoder("utf8");
		let buffered = "";
		let lastReceived = Date.now();
		socket.setNoDelay(true);
		socket.on("data", (chunk) => {
			lastReceived = Date.now();
			const lines = (buffered + decoder.write(chunk)).split("\n");
			buffered = lines.pop() || "";
			for (const line of lines) if (line.trim()) this._onFrame(line);
		});
		socket.on("error", (err) => {
			this.lastError = err;
		});
		socket.on("close", () => this._onClose());

		// The ping keeps the server's idle timer from closing us, and the lack of any answer tells
		// us the connection is dead (on mobile networks a TCP connection can vanish silently).
		this.pingTimer = setInterval(() => {
			if (Date.now() - lastReceived > 2 * pingIntervalMs + callTimeoutMs) {
				this.lastError = new Error("server not responding");
				socket.destroy();
				return;
			}
			this._send({ type: "ping" });
		}, pingIntervalMs);
		this.pingTimer.unref();
	}

	/**
	 * Calls an action the server allows on this channel.
	 * @param {string} action e.g. "chat.send"
	 * @param {object} [params]
	 * @returns {Promise<unknown>} the result's data; rejects with an Error carrying code, type, data
	 */
	call(action, params = {}) {
		return this._request({ type: "call", action, params });
	}

	/** Closes the connection; pending calls reject. */
	close() {
		this.socket.end();
		// Don't wait forever for a server that doesn't close its side.
		setTimeout(() => this.socket.destroy(), 2000).unref();
	}

	/** @param {object} frame */
	_send(frame) {
		if (this.closed) return false;
		return this.socket.write(JSON.stringify(frame) + "\n");
	}

	/** Sends a frame with a fresh id; settles when the result or error with that id arrives. */
	_request(frame) {
		if (this.closed) return Promise.reject(new Error("connection closed"));
		const id = this.nextId++;
		return new Promise((resolve, reject) => {
			const timer = setTimeout(() => {
				this.pending.delete(id);
				reject(serverError({ name: "TimeoutError", message: `no answer within ${this.callTimeoutMs} ms`, code: 504, type: "CALL_TIMEOUT" }));
			}, this.callTimeoutMs);
			this.pending.set(id, { resolve, reject, timer });
			this._send({ id, ...frame });
		});
	}

	/** @param {string} line */
	_onFrame(line) {
		let frame;
		try {
			frame = JSON.parse(line);
		} catch {
			frame = undefined;
		}
		// The server only sends JSON objects; ignore anything else rather than crash on it.
		if (!frame || typeof frame !== "object") return;
		if (frame.type === "event") {
			this.emit("event", frame.event, frame.data);
			if (!OWN_EVENTS.has(frame.event)) this.emit(frame.event, frame.data);
			return;
		}
		const call = frame.id === undefined ? undefined : this.pending.get(frame.id);
		if (call) {
			this.pending.delete(frame.id);
			clearTimeout(call.timer);
			if (frame.type === "result") call.resolve(frame.data);
			else call.reject(serverError(frame.error));
		} else if (frame.type === "error") {
			// No call to answer: a protocol error (idle timeout, bad or too large frame).
			this.lastError = serverError(frame.error);
			this.emit("serverError", this.lastError);
		}
		// "pong" needs nothing: any received byte already counts as a sign of life.
	}

	_onClose() {
		if (this.closed) return;
		this.closed = true;
		clearInterval(this.pingTimer);
		for (const { reject, timer } of this.pending.values()) {
			clearTimeout(timer);
			reject(this.lastError || new Error("connection closed"));
		}
		this.pending.clear();
		this.emit("close", { error: this.lastError });
	}
}

/** The command line tool: events out as JSON lines, `<action> <json params>` lines in. */
async function main() {
	const { parseArgs } = require("node:util");
	const { values } = parseArgs({
		options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "7070" }, token: { type: "string" } },
	});
	const token = values.token || process.env.CNBI_TOKEN;
	if (!token) {
		console.error("usage: cnbi-tcp-client.js --host 127.0.0.1 --port 7070 --token <accessToken>");
		process.exit(2);
	}
	const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
	let client;
	try {
		client = await CnbiTcpClient.connect({ host: values.host, port: Number(values.port), token });
	} catch (err) {
		print({ error: { message: err.message, code: err.code, type: err.type } });
		process.exit(1);
	}
	print({ connected: true, session: client.session });
	client.on("event", (event, data) => print({ event, data }));
	client.on("serverError", (err) => print({ error: { message: err.message, code: err.code, type: err.type } }));
	client.on("close", ({ error }) => {
		print({ closed: true, error: error && error.message });
		process.exit(error ? 1 : 0);
	});

	const inFlight = new Set();
	const rl = readline.createInterface({ input: process.stdin });
	rl.on("line", (line) => {
		const m = /^\s*(\S+)\s*(.*)$/.exec(line);
		if (!m) return;
		const done = (async () => {
			try {
				const params = m[2] ? JSON.parse(m[2]) : {};
				print({ action: m[1], result: await client.call(m[1], params) });
			} catch (err) {
				print({ action: m[1], error: { message: err.message, code: err.code, type: err.type, data: err.data } });
			}
		})();
		inFlight.add(done);
		done.finally(() => inFlight.delete(done));
	});
	// End of input: let the calls still under way get their answers, then hang up.
	rl.on("close", () => Promise.allSettled([...inFlight]).then(() => client.close()));
}

if (require.main === module) main();

module.exports = { CnbiTcpClient };
