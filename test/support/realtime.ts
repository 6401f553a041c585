/**
 * Real-time devices for tests: a socket.io client (what a browser runs) and the shipped TCP
 * client (examples/tcp-client), both recording every pushed event.
 */
import type { ServiceBroker } from "moleculer";
import { io, type Socket } from "socket.io-client";
import { waitFor } from "./servers";
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { CnbiTcpClient } = require("../../examples/tcp-client/cnbi-tcp-client.js");

export interface Pushed {
	event: string;
	data: any;
}

export interface Device {
	kind: "socket.io" | "tcp";
	name: string;
	events: Pushed[];
	call(action: string, params?: object): Promise<any>;
	/** Events named `event` received so far. */
	received(event: string): any[];
	/** Waits until `count` events named `event` arrived (or the condition holds). */
	waitFor(event: string, count: number, timeoutMs?: number): Promise<any[]>;
	close(): Promise<void>;
	closed(): boolean;
}

const PUSHED = ["chat.message", "chat.receipt", "chat.recall", "group.message", "group.receipt", "group.recall", "group.member", "app.message", "presence", "session.revoked", "session.expired"];

function withEvents(kind: Device["kind"], name: string, partial: Pick<Device, "call" | "close" | "closed">, events: Pushed[]): Device {
	const received = (event: string) => events.filter(e => e.event === event).map(e => e.data);
	return {
		kind,
		name,
		events,
		...partial,
		received,
		async waitFor(event, count, timeoutMs = 10_000) {
			await waitFor(async () => received(event).length >= count, `${name}: ${count} × ${event} (got ${received(event).length})`, timeoutMs);
			return received(event);
		},
	};
}

/** A socket.io device signed in with `token`; rejects with the server's error when the handshake is refused. */
export async function socketIoDevice(url: string, token: string | null, name = "socket.io"): Promise<Device> {
	const socket: Socket = io(url, { path: "/socket.io", auth: token ? { token } : {}, transports: ["websocket"], reconnection: false, forceNew: true });
	const events: Pushed[] = [];
	socket.onAny((event, data) => {
		if (PUSHED.includes(event)) events.push({ event, data });
	});
	await new Promise<void>((resolve, reject) => {
		socket.once("connect", () => resolve());
		socket.once("connect_error", err => {
			socket.close();
			reject(Object.assign(new Error(err.message), { data: (err as any).data }));
		});
	});
	let closed = false;
	socket.on("disconnect", () => (closed = true));
	return withEvents("socket.io", name, {
		call: (action, params = {}) =>
			new Promise((resolve, reject) =>
				socket.timeout(15_000).emit("call", action, params, (timeout: Error | null, err: any, result: any) => {
					if (timeout) return reject(timeout);
					if (err) return reject(Object.assign(new Error(err.message), err));
					resolve(result);
				}),
			),
		close: async () => void socket.close(),
		closed: () => closed,
	}, events);
}

/** A TCP device (the shipped client) signed in with `token`. */
export async function tcpDevice(port: number, token: string, name = "tcp"): Promise<Device> {
	const client = await CnbiTcpClient.connect({ host: "127.0.0.1", port, token, callTimeoutMs: 15_000 });
	const events: Pushed[] = [];
	let closed = false;
	client.on("event", (event: string, data: unknown) => events.push({ event, data }));
	client.on("close", () => (closed = true));
	return withEvents("tcp", name, {
		call: (action, params = {}) => client.call(action, params),
		close: async () => client.close(),
		closed: () => closed,
	}, events);
}

/** The TCP channel's port on a node of the platform. */
export async function tcpPortOf(broker: ServiceBroker, nodeID = broker.nodeID): Promise<number> {
	const info = await broker.call<{ port: number }, object>("socket.info", {}, { nodeID });
	return info.port;
}
