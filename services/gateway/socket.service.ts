import net from "node:net";
import { Errors, type Service } from "moleculer";
import { RealtimeChannelMixin, type ChannelConnection, type ChannelMethods } from "../../mixins/realtime-channel.mixin";
import { publicError } from "../../lib/errors";
import { room, type Push, type RoomChange } from "../../lib/realtime/push";
import { FrameConnection, type ClientFrame } from "../../lib/realtime/tcp/frame-connection";
import { serviceSchema } from "../../lib/service";
import type { SocketSettings } from "../../types/platform";

/** A client must authenticate this soon after connecting. */
const AUTH_TIMEOUT_MS = 10_000;
/** Connections this node accepts in all. */
const MAX_CONNECTIONS = 20_000;
/** Connections from one address that have not authenticated yet. */
const MAX_PENDING_PER_IP = 50;

interface TcpClient {
	frames: FrameConnection;
	conn?: ChannelConnection;
	/** An `auth` frame is being handled: another one waits its turn. */
	authenticating: boolean;
	rooms: Set<string>;
	authTimer?: NodeJS.Timeout;
}

type Svc = Service &
	ChannelMethods & {
		server: net.Server;
		port: number;
		clients: Map<string, TcpClient>;
		/** Address → connections from it not authenticated yet. */
		pending: Map<string, number>;
		/** room → ids of this node's connections in it. */
		members: Map<string, Set<string>>;
		accept(socket: net.Socket): void;
		onFrame(client: TcpClient, frame: ClientFrame): Promise<void>;
		join(client: TcpClient, rooms: string[]): void;
		leave(client: TcpClient, rooms: string[]): void;
		forget(client: TcpClient): void;
		settle(client: TcpClient): void;
	};

/**
 * The TCP real-time channel for native clients (`SOCKET_PORT`, default 7070): newline-delimited
 * JSON frames (API.md). The first frame is `auth` with an access token; then `call` frames run
 * whitelisted actions and the server writes pushes as `event` frames. Framing, heartbeat, size
 * limits, abuse and slow readers are FrameConnection's; authentication, access, presence and
 * rooms are the channel mixin's. Rooms are this node's: every node gets every push (lib/realtime/push).
 * A client to copy: examples/tcp-client.
 */
const SocketService = serviceSchema({
	name: "socket",
	mixins: [RealtimeChannelMixin("tcp")],

	actions: {
		/** Where this node listens (tests and operators; not published). */
		info: {
			visibility: "public",
			handler(this: Svc) {
				return { port: this.port, connections: this.clients.size };
			},
		},
	},

	methods: {
		accept(this: Svc, socket: net.Socket) {
			const frames = new FrameConnection(socket);
			const ip = frames.remoteAddress;
			if ((this.pending.get(ip) ?? 0) >= MAX_PENDING_PER_IP)
				return frames.close("too-many-pending", { type: "error", error: { name: "ProtocolError", message: `At most ${MAX_PENDING_PER_IP} connections from one address may wait to authenticate`, code: 429, type: "TOO_MANY_CONNECTIONS" } });
			this.pending.set(ip, (this.pending.get(ip) ?? 0) + 1);
			const client: TcpClient = { frames, rooms: new Set(), authenticating: false };
			this.clients.set(frames.id, client);
			client.authTimer = setTimeout(() => {
				if (!client.conn) frames.close("auth-timeout", { type: "error", error: { name: "ProtocolError", message: `Authenticate within ${AUTH_TIMEOUT_MS} ms`, code: 401, type: "UNAUTHORIZED" } });
			}, AUTH_TIMEOUT_MS);
			client.authTimer.unref();
			frames.on("frame", frame => void this.onFrame(client, frame));
			frames.on("close", ({ reason }) => {
				this.logger.debug(`TCP connection ${frames.id} from ${frames.remoteAddress} closed: ${reason}`);
				this.forget(client);
			});
		},

		async onFrame(this: Svc, client: TcpClient, frame: ClientFrame) {
			const { frames } = client;
			if (frame.type === "auth") {
				if (client.authenticating)
					return void frames.sendError(frame.id, { name: "ProtocolError", message: "An authentication is already in progress on this connection", code: 409, type: "AUTH_IN_PROGRESS" });
				client.authenticating = true;
				try {
					if (client.conn) {
						const user = await this.reauthenticate(client.conn, frame.token);
						frames.sendResult(frame.id, { userId: user.id, tokenExpiresAt: user.tokenExpiresAt ?? null });
						return;
					}
					const user = await this.authenticate(frame.token, frames.remoteAddress);
					const { conn, rooms } = await this.openConnection({ id: frames.id, token: frame.token, user, clientIp: frames.remoteAddress });
					if (frames.isClosed) return void this.closeConnection(conn);
					clearTimeout(client.authTimer);
					this.settle(client);
					client.conn = conn;
					this.join(client, rooms);
					frames.sendResult(frame.id, { userId: user.id, connectionId: conn.id, tokenExpiresAt: user.tokenExpiresAt ?? null });
					void this.confirmGroups(conn, rooms).catch(err => this.logger.warn("Group rooms not confirmed", err.message));
				} catch (err) {
					const error = publicError(err as Errors.MoleculerError);
					// A connection that failed its first authentication has nothing more to do here.
					if (client.conn) frames.sendError(frame.id, error);
					else frames.close("unauthorized", { id: frame.id, type: "error", error });
				} finally {
					client.authenticating = false;
				}
				return;
			}
			if (!client.conn) return void frames.sendError(frame.id, { name: "ProtocolError", message: "Authenticate first: { id, type: 'auth', token }", code: 401, type: "UNAUTHORIZED" });
			const { result, error } = await this.dispatch(client.conn, frame.action, frame.params);
			if (error) frames.sendError(frame.id, error);
			else frames.sendResult(frame.id, result ?? null);
		},

		/** The connection no longer counts as waiting to authenticate (it did, or it closed). */
		settle(this: Svc, client: TcpClient) {
			if (client.conn) return;
			const ip = client.frames.remoteAddress;
			const left = (this.pending.get(ip) ?? 1) - 1;
			if (left > 0) this.pending.set(ip, left);
			else this.pending.delete(ip);
		},

		join(this: Svc, client: TcpClient, rooms: string[]) {
			for (const name of rooms) {
				client.rooms.add(name);
				let set = this.members.get(name);
				if (!set) this.members.set(name, (set = new Set()));
				set.add(client.frames.id);
			}
		},

		leave(this: Svc, client: TcpClient, rooms: string[]) {
			for (const name of rooms) {
				client.rooms.delete(name);
				const set = this.members.get(name);
				set?.delete(client.frames.id);
				if (set?.size === 0) this.members.delete(name);
			}
		},

		forget(this: Svc, client: TcpClient) {
			clearTimeout(client.authTimer);
			this.settle(client);
			this.leave(client, [...client.rooms]);
			this.clients.delete(client.frames.id);
			if (client.conn) void this.closeConnection(client.conn);
		},

		// --- The transport side of the channel mixin.

		sendEvent(this: Svc, conn: ChannelConnection, event: string, data: unknown) {
			this.clients.get(conn.id)?.frames.sendEvent(event, data);
		},

		endConnection(this: Svc, conn: ChannelConnection, event: string, data: unknown) {
			const client = this.clients.get(conn.id);
			if (!client) return void this.closeConnection(conn);
			client.frames.close(event, { type: "event", event, data });
		},

		/** Each connection in any of the rooms gets the event once. */
		deliver(this: Svc, message: Push) {
			const targets = new Set<string>();
			for (const name of message.rooms) for (const id of this.members.get(name) ?? []) targets.add(id);
			if (targets.size === 0) return;
			for (const id of targets) this.clients.get(id)?.frames.sendEvent(message.event, message.data);
		},

		changeRooms(this: Svc, change: RoomChange) {
			for (const userId of change.userIds)
				for (const id of [...(this.members.get(room.user(userId)) ?? [])]) {
					const client = this.clients.get(id);
					if (!client) continue;
					if (change.join?.length) this.join(client, change.join);
					if (change.leave?.length) this.leave(client, change.leave);
				}
		},
	},

	created(this: Svc) {
		this.clients = new Map();
		this.members = new Map();
		this.pending = new Map();
		this.server = net.createServer(socket => this.accept(socket));
		this.server.maxConnections = MAX_CONNECTIONS;
	},

	async started(this: Svc) {
		const { port, host } = this.broker.options.platform!.socket as SocketSettings;
		await new Promise<void>((resolve, reject) => {
			this.server.once("error", reject);
			this.server.listen(port, host, () => {
				this.server.off("error", reject);
				resolve();
			});
		});
		this.port = (this.server.address() as net.AddressInfo).port;
		this.logger.info(`TCP channel listening on ${host}:${this.port}`);
	},

	async stopped(this: Svc) {
		for (const client of this.clients.values()) client.frames.close("server-stopping");
		await new Promise<void>(resolve => this.server.close(() => resolve()));
	},
});

export default SocketService;
