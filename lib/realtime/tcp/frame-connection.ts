/**
 * One TCP connection of the real-time channel for native clients, at the transport level:
 * newline-delimited JSON frames in both directions (API.md, Messaging). It validates what the
 * client sends, answers pings, and protects the server from a client that sends too much, too
 * badly, too slowly or reads too slowly. What a frame means (authentication, action calls,
 * pushes) is the `socket` service's business; it gets valid `auth`/`call` frames as "frame" events.
 */
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type net from "node:net";

export type FrameId = string | number;
export interface AuthFrame { id: FrameId; type: "auth"; token: string }
export interface CallFrame { id: FrameId; type: "call"; action: string; params: Record<string, unknown> }
export type ClientFrame = AuthFrame | CallFrame;

/** Why a connection ended; "close" carries the first one that happened. The service may close with its own reasons. */
export type CloseReason = "peer-closed" | "socket-error" | "frame-too-large" | "abuse" | "idle" | "slow-consumer" | (string & Record<never, never>);
export interface CloseInfo { reason: CloseReason; error?: Error }

export interface FrameConnectionOptions {
	/** Longest line accepted, in bytes, without its "\n". */
	maxFrameBytes?: number;
	/** Outbound bytes the socket may queue (socket.writableLength) before the client counts as too slow. */
	maxBufferedBytes?: number;
	/** A client that sends no frame (pings included) for this long is disconnected. */
	idleTimeoutMs?: number;
	/** Malformed frames tolerated; the last one closes the connection. */
	maxBadFrames?: number;
	/** How long a closing connection waits for the peer to take its last bytes before it is destroyed. */
	closeGraceMs?: number;
}

type Events = { frame: [ClientFrame]; close: [CloseInfo] };

const MAX_ID_LENGTH = 128;
const MAX_ACTION_LENGTH = 256;
// fatal: bytes that are not UTF-8 make a bad frame instead of turning silently into U+FFFD.
const utf8 = new TextDecoder("utf-8", { fatal: true });

const protocolError = (code: number, type: string, message: string) => ({ name: "ProtocolError", message, code, type });
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const validId = (id: unknown): id is FrameId =>
	(typeof id === "string" && id.length > 0 && id.length <= MAX_ID_LENGTH) || (typeof id === "number" && Number.isFinite(id));

export class FrameConnection extends EventEmitter<Events> {
	readonly id = randomUUID();
	/** Captured at once: net.Socket forgets it when destroyed, and logs of the close still want it. */
	readonly remoteAddress: string;
	private readonly opts: Required<FrameConnectionOptions>;
	// The unterminated line so far, as copies: a subarray would keep the whole (up to 64 KiB) read buffer alive.
	private pending: Buffer[] = [];
	private pendingBytes = 0;
	private badFrames = 0;
	private closed = false;
	private readonly idleTimer: NodeJS.Timeout;
	private graceTimer?: NodeJS.Timeout;

	constructor(private readonly socket: net.Socket, options: FrameConnectionOptions = {}) {
		super();
		// Undefined options (an unset setting passed through) keep their defaults instead of erasing them.
		const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
		this.opts = { maxFrameBytes: 64 * 1024, maxBufferedBytes: 1024 * 1024, idleTimeoutMs: 60_000, maxBadFrames: 5, closeGraceMs: 2000, ...given };
		this.remoteAddress = socket.remoteAddress ?? "";
		socket.setNoDelay(true); // frames are small and latency matters more than packet count
		socket.on("data", (chunk: Buffer) => this.onData(chunk));
		socket.on("end", () => this.close("peer-closed"));
		socket.on("error", (error) => this.finish("socket-error", error));
		socket.on("close", () => {
			clearTimeout(this.graceTimer);
			this.finish("peer-closed");
		});
		this.idleTimer = setTimeout(() => this.close("idle", { type: "error", error: protocolError(408, "IDLE_TIMEOUT", `no frame for ${this.opts.idleTimeoutMs} ms`) }), this.opts.idleTimeoutMs);
		this.idleTimer.unref();
		if (socket.destroyed) queueMicrotask(() => this.finish("peer-closed"));
	}

	get isClosed(): boolean {
		return this.closed;
	}

	/** Writes one frame; false when the connection is (or just got) closed. */
	send(frame: object): boolean {
		if (this.closed) return false;
		// A Buffer, not a string: for strings writableLength counts UTF-16 units, not bytes.
		this.socket.write(Buffer.from(JSON.stringify(frame) + "\n"));
		if (this.socket.writableLength > this.opts.maxBufferedBytes) {
			// The client reads slower than we push: drop it rather than let its backlog grow in our memory.
			this.finish("slow-consumer");
			this.socket.destroy();
			return false;
		}
		return true;
	}

	sendEvent(event: string, data: unknown): boolean {
		return this.send({ type: "event", event, data });
	}

	sendResult(id: FrameId, data: unknown): boolean {
		return this.send({ id, type: "result", data });
	}

	/**
	 * Only name, message, code, type and data go out: never a stack or other internals of the error.
	 * A code that is not a number (Node's "ECONNRESET", …) becomes 500.
	 */
	sendError(id: FrameId | undefined, error: { name?: string; message: string; code?: unknown; type?: string; data?: unknown }): boolean {
		const { name = "Error", message, type, data } = error;
		const code = typeof error.code === "number" ? error.code : 500;
		return this.send({ ...(id === undefined ? {} : { id }), type: "error", error: { name, message, code, type, data } });
	}

	/** Sends finalFrame if given, then ends the socket; destroys it if the peer has not let go after the grace. */
	close(reason: CloseReason, finalFrame?: object): void {
		if (this.closed) return;
		this.finish(reason);
		// Written directly: the last words must not trip the slow-consumer check and change the reason.
		if (finalFrame && this.socket.writable) this.socket.write(Buffer.from(JSON.stringify(finalFrame) + "\n"));
		this.socket.end();
		this.graceTimer = setTimeout(() => this.socket.destroy(), this.opts.closeGraceMs);
		this.graceTimer.unref();
	}

	/** Marks the connection closed and emits "close", once, with the first reason. */
	private finish(reason: CloseReason, error?: Error): void {
		if (this.closed) return;
		this.closed = true;
		clearTimeout(this.idleTimer);
		this.pending = [];
		this.emit("close", error ? { reason, error } : { reason });
	}

	private onData(chunk: Buffer): void {
		// After close, input is read and dropped: unread bytes would make the kernel answer our FIN
		// with a reset that can destroy the final error frame before the client reads it.
		let start = 0;
		while (!this.closed) {
			const nl = chunk.indexOf(0x0a, start);
			const end = nl === -1 ? chunk.length : nl;
			if (this.pendingBytes + end - start > this.opts.maxFrameBytes) {
				const message = `frame longer than ${this.opts.maxFrameBytes} bytes`;
				return this.close("frame-too-large", { type: "error", error: protocolError(413, "FRAME_TOO_LARGE", message) });
			}
			if (nl === -1) {
				if (end > start) {
					this.pending.push(Buffer.from(chunk.subarray(start)));
					this.pendingBytes += end - start;
				}
				return;
			}
			// Splitting on the byte 0x0a is safe for UTF-8 (it never occurs inside a multi-byte
			// character), and decoding whole lines handles characters split between TCP chunks.
			const line = this.pending.length ? Buffer.concat([...this.pending, chunk.subarray(start, nl)]) : chunk.subarray(start, nl);
			this.pending = [];
			this.pendingBytes = 0;
			start = nl + 1;
			this.onLine(line);
		}
	}

	private onLine(bytes: Buffer): void {
		let text: string | undefined;
		try {
			text = utf8.decode(bytes);
		} catch {
			text = undefined;
		}
		if (text?.trim() === "") return; // blank lines (and "\r\n" alone) are no frames, nor keep-alives
		this.idleTimer.refresh();
		if (text === undefined) return this.badFrame(undefined, "frame is not valid UTF-8");
		let frame: unknown;
		try {
			frame = JSON.parse(text); // JSON allows the trailing "\r" as whitespace
		} catch {
			return this.badFrame(undefined, "frame is not valid JSON");
		}
		if (!isObject(frame)) return this.badFrame(undefined, "frame must be a JSON object");
		const id = validId(frame.id) ? frame.id : undefined;
		if (frame.id !== undefined && id === undefined) return this.badFrame(undefined, `id must be a string of 1-${MAX_ID_LENGTH} characters or a number`);
		const problem = this.check(frame);
		if (problem) return this.badFrame(id, problem);
		if (frame.type === "ping") {
			this.send({ type: "pong" });
			return;
		}
		if (frame.type === "call" && frame.params === undefined) frame.params = {};
		this.emit("frame", frame as unknown as ClientFrame);
	}

	/** What is wrong with a frame, or undefined when it is a valid ping, auth or call. */
	private check(frame: Record<string, unknown>): string | undefined {
		const { type } = frame;
		if (type === undefined) return "missing type";
		if (type === "ping") return undefined;
		if (type !== "auth" && type !== "call") return `unknown type ${JSON.stringify(type).slice(0, 40)}: expected auth, call or ping`;
		if (frame.id === undefined) return `a ${type} frame needs an id to answer to`;
		if (type === "auth") return typeof frame.token === "string" && frame.token ? undefined : "auth needs a token string";
		if (typeof frame.action !== "string" || !frame.action || frame.action.length > MAX_ACTION_LENGTH) return "call needs an action name";
		if (frame.params !== undefined && !isObject(frame.params)) return "params must be a JSON object";
		return undefined;
	}

	private badFrame(id: FrameId | undefined, message: string): void {
		this.send({ ...(id === undefined ? {} : { id }), type: "error", error: protocolError(400, "BAD_FRAME", message) });
		if (++this.badFrames >= this.opts.maxBadFrames) this.close("abuse");
	}
}
