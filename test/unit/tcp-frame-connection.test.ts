/**
 * The TCP real-time channel's transport (lib/realtime/tcp/frame-connection) over real sockets:
 * line framing (byte-by-byte, split UTF-8, several frames per chunk), the limits that protect the
 * server (frame size, bad frames, idleness, slow readers), how connections end, and the example
 * client (examples/tcp-client) against it.
 */
import assert from "node:assert/strict";
import type { EventEmitter } from "node:events";
import { createRequire } from "node:module";
import net from "node:net";
import { StringDecoder } from "node:string_decoder";
import { describe, it, type TestContext } from "node:test";
import { FrameConnection, type ClientFrame, type CloseInfo, type FrameConnectionOptions } from "../../lib/realtime/tcp/frame-connection";

const KiB = 1024;
const MiB = 1024 * KiB;

/** The example client is plain JavaScript without declarations: its documented API, typed here. */
interface TcpClient extends EventEmitter {
	session: unknown;
	call(action: string, params?: object): Promise<any>;
	close(): void;
}
const { CnbiTcpClient } = createRequire(__filename)("../../examples/tcp-client/cnbi-tcp-client.js") as {
	CnbiTcpClient: { connect(o: { host: string; port: number; token: string; pingIntervalMs?: number; callTimeoutMs?: number }): Promise<TcpClient> };
};

async function waitFor(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (!condition()) {
		if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 2));
	}
}

/** The server side of one connection, with what the test wants to look at. */
interface Accepted {
	conn: FrameConnection;
	socket: net.Socket;
	closes: CloseInfo[];
	frames: ClientFrame[];
	chunks: Buffer[];
}

type OnFrame = (frame: ClientFrame, conn: FrameConnection) => void;
const echo: OnFrame = (frame, conn) => conn.sendResult(frame.id, frame);

/** A net.Server on 127.0.0.1 wrapping each socket in a FrameConnection; stopped when the test ends. */
async function startServer(t: TestContext, options: FrameConnectionOptions = {}, onFrame: OnFrame = echo) {
	const accepted: Accepted[] = [];
	const server = net.createServer((socket) => {
		const a: Accepted = { conn: new FrameConnection(socket, options), socket, closes: [], frames: [], chunks: [] };
		socket.on("data", (chunk: Buffer) => a.chunks.push(chunk));
		a.conn.on("close", (info) => a.closes.push(info));
		a.conn.on("frame", (frame) => {
			a.frames.push(frame);
			onFrame(frame, a.conn);
		});
		accepted.push(a);
	});
	await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
	t.after(async () => {
		for (const a of accepted) a.socket.destroy();
		await new Promise((resolve) => server.close(resolve));
	});
	const port = (server.address() as net.AddressInfo).port;
	return {
		port,
		accepted,
		/** The server side of the n-th connection (0-based), once accepted. */
		async nth(n: number): Promise<Accepted> {
			await waitFor(() => accepted.length > n, `connection ${n}`);
			return accepted[n];
		},
	};
}

/** A bare socket speaking the protocol by hand, collecting the frames it receives. */
class RawClient {
	readonly frames: any[] = [];
	private read = 0;
	ended = false;
	closed = false;

	private constructor(readonly socket: net.Socket) {
		const decoder = new StringDecoder("utf8");
		let rest = "";
		socket.on("data", (chunk) => {
			const lines = (rest + decoder.write(chunk)).split("\n");
			rest = lines.pop() ?? "";
			for (const line of lines) this.frames.push(JSON.parse(line));
		});
		socket.on("error", () => {}); // resets are expected in the abuse tests; `closed` tells the end
		socket.on("end", () => (this.ended = true));
		socket.on("close", () => (this.closed = true));
	}

	static async connect(t: TestContext, port: number, options: Partial<net.NetConnectOpts> = {}): Promise<RawClient> {
		const socket = net.connect({ host: "127.0.0.1", port, ...options } as net.NetConnectOpts);
		socket.setNoDelay(true);
		await new Promise((resolve) => socket.once("connect", resolve));
		t.after(() => socket.destroy());
		return new RawClient(socket);
	}

	send(frame: object | string): void {
		this.socket.write(typeof frame === "string" ? frame : JSON.stringify(frame) + "\n");
	}

	/** The next frame not yet returned. */
	async next(): Promise<any> {
		await waitFor(() => this.frames.length > this.read, "a frame from the server");
		return this.frames[this.read++];
	}

	async whenClosed(): Promise<void> {
		await waitFor(() => this.closed, "the connection to close");
	}
}

describe("FrameConnection", () => {
	it("answers ping with pong and emits auth and call frames, params defaulting to {}", async (t) => {
		const srv = await startServer(t);
		const c = await RawClient.connect(t, srv.port);
		c.send({ type: "ping" });
		assert.deepEqual(await c.next(), { type: "pong" });
		c.send({ id: "a", type: "auth", token: "tok" });
		assert.deepEqual(await c.next(), { id: "a", type: "result", data: { id: "a", type: "auth", token: "tok" } });
		c.send({ id: 2, type: "call", action: "chat.send" });
		assert.deepEqual(await c.next(), { id: 2, type: "result", data: { id: 2, type: "call", action: "chat.send", params: {} } });
		const a = await srv.nth(0);
		assert.equal(a.frames.length, 2, "pings are answered by the connection, not emitted");
		assert.match(a.conn.id, /^[0-9a-f-]{36}$/);
		assert.equal(a.conn.remoteAddress, "127.0.0.1");
	});

	it("keeps defaults for undefined options; sendError sends only the public fields of an error", async (t) => {
		const srv = await startServer(t, { idleTimeoutMs: undefined, maxFrameBytes: undefined }, (frame, conn) => {
			const err = Object.assign(new Error("boom"), { code: "ECONNRESET", type: "X", data: { a: 1 }, secret: "s" });
			conn.sendError(frame.id, err);
		});
		const c = await RawClient.connect(t, srv.port);
		c.send({ id: 9, type: "call", action: "x" });
		assert.deepEqual(await c.next(), { id: 9, type: "error", error: { name: "Error", message: "boom", code: 500, type: "X", data: { a: 1 } } });
		const a = await srv.nth(0);
		assert.deepEqual((a.conn as any).opts, { maxFrameBytes: 64 * KiB, maxBufferedBytes: MiB, idleTimeoutMs: 60_000, maxBadFrames: 5, closeGraceMs: 2000 });
	});

	it("reassembles a frame written one byte at a time, multi-byte UTF-8 characters included", async (t) => {
		const srv = await startServer(t);
		const c = await RawClient.connect(t, srv.port);
		const a = await srv.nth(0);
		const text = "héllo 世界 😀 ✓";
		const bytes = Buffer.from(JSON.stringify({ id: "u", type: "call", action: "x", params: { text } }) + "\r\n");
		for (let i = 0; i < bytes.length; i++) {
			c.socket.write(bytes.subarray(i, i + 1));
			// Wait until the server read this byte, so each arrives in a chunk of its own.
			await waitFor(() => a.socket.bytesRead === i + 1, `byte ${i}`);
		}
		assert.equal(a.chunks.length, bytes.length, "every byte arrived in its own chunk");
		const reply = await c.next();
		assert.equal(reply.id, "u");
		assert.equal(reply.data.params.text, text);
	});

	it("decodes a character split between two chunks and handles several frames in one chunk", async (t) => {
		const srv = await startServer(t);
		const c = await RawClient.connect(t, srv.port);
		const a = await srv.nth(0);
		const line = Buffer.from(JSON.stringify({ id: 1, type: "call", action: "x", params: { s: "😀" } }) + "\n");
		const cut = line.indexOf(Buffer.from("😀")) + 2; // in the middle of the emoji's four bytes
		c.socket.write(line.subarray(0, cut));
		await waitFor(() => a.socket.bytesRead === cut, "the first half");
		c.socket.write(line.subarray(cut));
		assert.equal((await c.next()).data.params.s, "😀");

		const many = [
			JSON.stringify({ id: 2, type: "call", action: "a" }),
			"",
			JSON.stringify({ type: "ping" }) + "\r",
			JSON.stringify({ id: 3, type: "auth", token: "t" }),
		].join("\n") + "\n";
		const before = a.chunks.length;
		c.send(many);
		assert.equal((await c.next()).id, 2);
		assert.deepEqual(await c.next(), { type: "pong" });
		assert.equal((await c.next()).id, 3);
		assert.ok(a.chunks.slice(before).some((chunk) => chunk.toString().split("\n").length > 3), "several frames came in one chunk");
		assert.equal(a.closes.length, 0, "a blank line is no bad frame");
	});

	it("accepts a frame of exactly maxFrameBytes and refuses one byte more", async (t) => {
		const srv = await startServer(t, { maxFrameBytes: 100 });
		const frameOf = (size: number) => {
			const base = JSON.stringify({ id: 1, type: "call", action: "x", params: { p: "" } });
			return JSON.stringify({ id: 1, type: "call", action: "x", params: { p: "a".repeat(size - base.length) } });
		};
		assert.equal(Buffer.byteLength(frameOf(100)), 100);
		const ok = await RawClient.connect(t, srv.port);
		ok.send(frameOf(100) + "\n");
		assert.equal((await ok.next()).type, "result");
		const tooLong = await RawClient.connect(t, srv.port);
		tooLong.send(frameOf(101) + "\n");
		assert.equal((await tooLong.next()).error.type, "FRAME_TOO_LARGE");
		await tooLong.whenClosed();
	});

	it("closes a connection streaming 10 MB without newline after the first 64 KiB, holding none of it", async (t) => {
		const srv = await startServer(t);
		const c = await RawClient.connect(t, srv.port);
		const a = await srv.nth(0);
		let bytesReadAtClose = -1;
		a.conn.on("close", () => (bytesReadAtClose = a.socket.bytesRead));
		c.socket.write(Buffer.alloc(10 * MiB, "a"));
		const err = await c.next();
		assert.deepEqual({ type: err.type, code: err.error.code, errType: err.error.type }, { type: "error", code: 413, errType: "FRAME_TOO_LARGE" });
		await c.whenClosed();
		assert.deepEqual(a.closes, [{ reason: "frame-too-large" }]);
		// It stopped at the limit: at most the 64 KiB line plus the chunk that overflowed it were read.
		assert.ok(bytesReadAtClose > 0 && bytesReadAtClose <= 64 * KiB + 128 * KiB, `read ${bytesReadAtClose} bytes before closing`);
		await waitFor(() => a.socket.destroyed, "the server socket to be released");
	});

	it("answers malformed frames with BAD_FRAME errors, with the id when there is a valid one", async (t) => {
		const srv = await startServer(t, { maxBadFrames: 100 });
		const c = await RawClient.connect(t, srv.port);
		const cases: [string, string | number | undefined, RegExp][] = [
			["not json\n", undefined, /JSON/],
			["[1,2]\n", undefined, /object/],
			['"ping"\n', undefined, /object/],
			['{"id":"a1"}\n', "a1", /missing type/],
			['{"id":7,"type":"nope"}\n', 7, /unknown type "nope"/],
			['{"id":{"x":1},"type":"ping"}\n', undefined, /id must be/],
			[`{"id":"${"x".repeat(129)}","type":"ping"}\n`, undefined, /id must be/],
			['{"type":"call","action":"x"}\n', undefined, /needs an id/],
			['{"id":"c","type":"call"}\n', "c", /action/],
			['{"id":"d","type":"call","action":"x","params":[1]}\n', "d", /params/],
			['{"id":"e","type":"auth"}\n', "e", /token/],
			[Buffer.from([0x7b, 0xff, 0x7d, 0x0a]).toString("latin1"), undefined, /UTF-8/],
		];
		for (const [line, id, message] of cases) {
			c.socket.write(Buffer.from(line, "latin1"));
			const reply = await c.next();
			assert.equal(reply.type, "error", line);
			assert.equal(reply.id, id, `id of the answer to ${line}`);
			assert.equal(reply.error.code, 400);
			assert.equal(reply.error.type, "BAD_FRAME");
			assert.match(reply.error.message, message);
		}
		assert.equal((await srv.nth(0)).frames.length, 0);
	});

	it("closes the connection with reason abuse at the maxBadFrames-th bad frame", async (t) => {
		const srv = await startServer(t, { maxBadFrames: 5 });
		const c = await RawClient.connect(t, srv.port);
		const a = await srv.nth(0);
		for (let i = 0; i < 4; i++) {
			c.send("nope\n");
			assert.equal((await c.next()).error.type, "BAD_FRAME");
		}
		c.send({ type: "ping" });
		assert.deepEqual(await c.next(), { type: "pong" }, "still open after 4 bad frames");
		c.send('{"id":"last"}\n');
		assert.equal((await c.next()).id, "last", "the last bad frame is answered too");
		await c.whenClosed();
		assert.deepEqual(a.closes, [{ reason: "abuse" }]);
	});

	it("closes a connection that sends no frame for idleTimeoutMs; pings keep it open, blank lines don't", async (t) => {
		const idleTimeoutMs = 300;
		const srv = await startServer(t, { idleTimeoutMs });
		const c = await RawClient.connect(t, srv.port);
		const a = await srv.nth(0);
		const opened = Date.now();
		let lastPing = opened;
		while (Date.now() - opened < 2 * idleTimeoutMs) {
			await new Promise((r) => setTimeout(r, idleTimeoutMs / 4)); // the client's own ping rhythm
			lastPing = Date.now();
			c.send({ type: "ping" });
			assert.deepEqual(await c.next(), { type: "pong" });
		}
		assert.equal(a.closes.length, 0, "pings kept it open past the idle timeout");
		const blanks = setInterval(() => c.send("\r\n"), idleTimeoutMs / 4);
		t.after(() => clearInterval(blanks));
		const err = await c.next();
		const idleFor = Date.now() - lastPing;
		clearInterval(blanks);
		assert.deepEqual({ code: err.error.code, type: err.error.type }, { code: 408, type: "IDLE_TIMEOUT" });
		assert.ok(idleFor >= idleTimeoutMs - 20, `closed after ${idleFor} ms without frames`);
		await c.whenClosed();
		assert.deepEqual(a.closes, [{ reason: "idle" }]);
	});

	it("drops a client that doesn't read once the server would buffer more than maxBufferedBytes", async (t) => {
		const maxBufferedBytes = 64 * KiB;
		const srv = await startServer(t, { maxBufferedBytes });
		const c = await RawClient.connect(t, srv.port);
		c.socket.pause(); // never reads: the kernel buffers fill, then the server's own queue grows
		const a = await srv.nth(0);
		let maxQueued = 0;
		const write = a.socket.write.bind(a.socket) as (...args: any[]) => boolean;
		(a.socket as any).write = (...args: any[]) => {
			const ok = write(...args);
			maxQueued = Math.max(maxQueued, a.socket.writableLength);
			return ok;
		};
		const payload = { text: "x".repeat(KiB) };
		const frameBytes = Buffer.byteLength(JSON.stringify({ type: "event", event: "chat.message", data: payload })) + 1;
		let sent = 0;
		// Push in batches, giving the event loop a turn between them as a real push stream would.
		while (!a.conn.isClosed) {
			assert.ok(sent < 256 * MiB, "the slow reader is never dropped");
			for (let i = 0; i < 64 && a.conn.sendEvent("chat.message", payload); i++) sent += frameBytes;
			await new Promise((r) => setImmediate(r));
		}
		assert.deepEqual(a.closes, [{ reason: "slow-consumer" }]);
		assert.ok(sent > maxBufferedBytes, "the kernel took a share before the server queued anything");
		assert.ok(maxQueued > maxBufferedBytes, "dropped because the queue passed the limit");
		assert.ok(maxQueued <= maxBufferedBytes + frameBytes, `queued at most one frame past the limit, was ${maxQueued}`);
		assert.equal(a.socket.destroyed, true, "destroyed at once, not ended gracefully");
		assert.equal(a.conn.sendEvent("chat.message", payload), false, "sending on a closed connection is a no-op");
	});

	it("emits close exactly once, with the first reason, and sends the final frame", async (t) => {
		const srv = await startServer(t);
		const c = await RawClient.connect(t, srv.port);
		const a = await srv.nth(0);
		a.conn.close("kicked", { type: "event", event: "session.revoked", data: { why: "test" } });
		a.conn.close("again");
		assert.equal(a.conn.sendResult(1, {}), false);
		assert.deepEqual(await c.next(), { type: "event", event: "session.revoked", data: { why: "test" } });
		await c.whenClosed();
		await waitFor(() => a.socket.destroyed, "the server socket to close");
		assert.deepEqual(a.closes, [{ reason: "kicked" }]);
		assert.equal(c.frames.length, 1, "nothing after the final frame");
	});

	it("reports peer-closed when the client hangs up and socket-error when it resets", async (t) => {
		const srv = await startServer(t);
		const polite = await RawClient.connect(t, srv.port);
		polite.socket.end();
		const a = await srv.nth(0);
		await waitFor(() => a.closes.length > 0, "close after hang-up");
		assert.deepEqual(a.closes, [{ reason: "peer-closed" }]);

		const rude = await RawClient.connect(t, srv.port);
		const b = await srv.nth(1);
		rude.socket.resetAndDestroy();
		await waitFor(() => b.closes.length > 0, "close after reset");
		assert.equal(b.closes.length, 1);
		assert.equal(b.closes[0].reason, "socket-error");
		assert.ok(b.closes[0].error instanceof Error);
	});

	it("destroys the socket after closeGraceMs when the peer doesn't close its side", async (t) => {
		const srv = await startServer(t, { closeGraceMs: 100 });
		const c = await RawClient.connect(t, srv.port, { allowHalfOpen: true }); // won't answer our FIN
		const a = await srv.nth(0);
		const start = Date.now();
		a.conn.close("bye");
		await waitFor(() => a.socket.destroyed, "the server socket to be destroyed");
		assert.ok(Date.now() - start >= 90, `waited for the grace, ${Date.now() - start} ms`);
		assert.equal(c.ended, true, "the client got our FIN and kept its side open");
		assert.deepEqual(a.closes, [{ reason: "bye" }]);
	});
});

describe("CnbiTcpClient (examples/tcp-client)", () => {
	/** A stand-in for the socket service: token "good" authenticates; a few test actions. */
	async function fakeService(t: TestContext, options: FrameConnectionOptions = {}) {
		let held: ClientFrame | undefined;
		return startServer(t, options, (frame, conn) => {
			if (frame.type === "auth") {
				if (frame.token === "good") conn.sendResult(frame.id, { userId: "u1" });
				else conn.sendError(frame.id, { name: "MoleculerClientError", message: "invalid token", code: 401, type: "INVALID_TOKEN" });
				return;
			}
			switch (frame.action) {
				case "echo":
					return void conn.sendResult(frame.id, frame.params);
				case "fail":
					return void conn.sendError(frame.id, Object.assign(new Error("nope"), { name: "MoleculerClientError", code: 422, type: "VALIDATION_ERROR", data: { field: "to" } }));
				case "push":
					conn.sendEvent("chat.message", frame.params);
					return void conn.sendResult(frame.id, true);
				case "hold": // answered only after the next "release", to answer out of order
					held = frame;
					return;
				case "release":
					conn.sendResult(frame.id, "released");
					if (held) conn.sendResult(held.id, "held");
					return;
				case "never":
					return;
			}
		});
	}

	const connect = (port: number, token = "good", more: { pingIntervalMs?: number; callTimeoutMs?: number } = {}) =>
		CnbiTcpClient.connect({ host: "127.0.0.1", port, token, ...more });

	it("authenticates, then correlates answers arriving out of order by id", async (t) => {
		const srv = await fakeService(t);
		const client = await connect(srv.port);
		t.after(() => client.close());
		assert.deepEqual(client.session, { userId: "u1" });
		const held = client.call("hold", {});
		const released = client.call("release", {});
		const echoed = client.call("echo", { n: 3, s: "世界" });
		assert.deepEqual(await Promise.all([held, released, echoed]), ["held", "released", { n: 3, s: "世界" }]);
	});

	it("rejects connect with the server's error when the token is refused", async (t) => {
		const srv = await fakeService(t);
		await assert.rejects(connect(srv.port, "bad"), { message: "invalid token", code: 401, type: "INVALID_TOKEN" });
	});

	it("rejects a failed call with the server's name, code, type and data, and a silent one with CALL_TIMEOUT", async (t) => {
		const srv = await fakeService(t);
		const client = await connect(srv.port, "good", { callTimeoutMs: 150 });
		t.after(() => client.close());
		await assert.rejects(client.call("fail", {}), { name: "MoleculerClientError", message: "nope", code: 422, type: "VALIDATION_ERROR", data: { field: "to" } });
		await assert.rejects(client.call("never", {}), { code: 504, type: "CALL_TIMEOUT" });
		assert.equal(await client.call("echo", { ok: 1 }).then((d) => d.ok), 1, "still usable after a timeout");
	});

	it("emits pushed events as 'event' and under their own name", async (t) => {
		const srv = await fakeService(t);
		const client = await connect(srv.port);
		t.after(() => client.close());
		const generic: unknown[] = [];
		const named: unknown[] = [];
		client.on("event", (event, data) => generic.push([event, data]));
		client.on("chat.message", (data) => named.push(data));
		await client.call("push", { text: "hi" });
		await waitFor(() => named.length === 1, "the pushed event");
		assert.deepEqual(generic, [["chat.message", { text: "hi" }]]);
		assert.deepEqual(named, [{ text: "hi" }]);
	});

	it("pings often enough to outlive the server's idle timeout", async (t) => {
		const srv = await fakeService(t, { idleTimeoutMs: 150 });
		const client = await connect(srv.port, "good", { pingIntervalMs: 40 });
		t.after(() => client.close());
		const a = await srv.nth(0);
		const opened = Date.now();
		const pings = () => a.chunks.map(String).join("").split('"type":"ping"').length - 1;
		await waitFor(() => pings() >= 8, "eight pings");
		assert.ok(Date.now() - opened > 150, "longer than the idle timeout");
		assert.equal(a.closes.length, 0);
		assert.deepEqual(await client.call("echo", { still: "here" }), { still: "here" });
	});

	it("emits close with the server's reason and rejects pending calls when the server closes", async (t) => {
		const srv = await fakeService(t, { idleTimeoutMs: 100 });
		const client = await connect(srv.port, "good", { pingIntervalMs: 60_000 });
		const closes: { error?: any }[] = [];
		client.on("close", (info) => closes.push(info));
		const pending = client.call("never", {});
		await assert.rejects(pending, { code: 408, type: "IDLE_TIMEOUT" });
		await waitFor(() => closes.length === 1, "the client's close event");
		assert.equal(closes[0].error?.type, "IDLE_TIMEOUT");
		assert.deepEqual((await srv.nth(0)).closes, [{ reason: "idle" }]);
		await assert.rejects(client.call("echo", {}), /closed/);
	});

	it("close() ends the connection: the server sees peer-closed", async (t) => {
		const srv = await fakeService(t);
		const client = await connect(srv.port);
		let closed = 0;
		client.on("close", () => closed++);
		client.close();
		const a = await srv.nth(0);
		await waitFor(() => closed === 1 && a.closes.length === 1, "both sides closed");
		assert.deepEqual(a.closes, [{ reason: "peer-closed" }]);
	});
});
