import type { IncomingMessage, Server as HttpServer } from "node:http";
import Redis from "ioredis";
import proxyAddr from "proxy-addr";
import SocketIOMixin from "moleculer-io";
import { createAdapter } from "@socket.io/redis-adapter";
import type { Server as IOServer, Socket } from "socket.io";
import { Errors, type Service, type ServiceSchema } from "moleculer";
import { RealtimeChannelMixin, type ChannelConnection, type ChannelMethods } from "../../mixins/realtime-channel.mixin";
import { publicError } from "../../lib/errors";
import { room, type Push, type RoomChange } from "../../lib/realtime/push";
import { refuseUnsharedReplica } from "../../lib/replicas";
import { serviceSchema } from "../../lib/service";
import type { PlatformSettings } from "../../types/platform";

type Ack = (err: unknown, result?: unknown) => void;
type ChannelSocket = Socket & { data: { conn?: ChannelConnection } };
type Svc = Service &
	ChannelMethods & {
		io: IOServer;
		platform: PlatformSettings;
		trust: (addr: string, i: number) => boolean;
		redis: Redis[];
		onCall(socket: ChannelSocket, action: unknown, params: unknown, ack: unknown): Promise<void>;
		onAuth(socket: ChannelSocket, token: unknown, ack: unknown): Promise<void>;
		handshake(socket: ChannelSocket, next: (err?: Error) => void): Promise<void>;
		onConnection(socket: ChannelSocket): void;
	};

/**
 * The browser real-time channel: Socket.IO (moleculer-io) at the gateway's `/socket.io` path,
 * on the gateway's own HTTP server. The handshake carries `auth: { token }`; then the client calls
 * whitelisted actions with `socket.emit("call", action, params, ack)` and receives pushes.
 * Authentication, access, presence and rooms are the channel mixin's; this file is the transport.
 * With Redis, socket.io's Redis adapter reaches the sockets of every gateway node.
 */
const WebsocketService = serviceSchema({
	name: "websocket",
	mixins: [SocketIOMixin as unknown as ServiceSchema, RealtimeChannelMixin("websocket")],

	settings: {
		// Attached to the gateway's server in started(), not a port of its own.
		server: false,
		logClientConnection: "debug",
		io: {
			options: { path: "/socket.io", serveClient: false, maxHttpBufferSize: 1024 * 1024, pingInterval: 20_000, pingTimeout: 20_000 },
			namespaces: {
				"/": {
					events: {
						// Plain functions: moleculer-io calls them with the socket as `this`.
						call(this: ChannelSocket, action: unknown, params: unknown, ack: unknown) {
							return (this as unknown as { $service: Svc }).$service.onCall(this, action, params, ack);
						},
						auth(this: ChannelSocket, token: unknown, ack: unknown) {
							return (this as unknown as { $service: Svc }).$service.onAuth(this, token, ack);
						},
					},
				},
			},
		},
	},

	actions: {
		// moleculer-io's own actions reach any action or socket: nothing outside this file uses them.
		call: false,
		broadcast: false,
		getClients: false,
	},

	methods: {
		/** socket.io middleware: no connection without a valid token of a live session. */
		async handshake(this: Svc, socket: ChannelSocket, next: (err?: Error) => void) {
			try {
				const req = socket.request as IncomingMessage;
				const clientIp = proxyAddr(req, this.trust);
				const token = (socket.handshake.auth as { token?: unknown } | undefined)?.token;
				const user = await this.authenticate(token, clientIp);
				const agent = req.headers["user-agent"];
				const { conn, rooms } = await this.openConnection({ id: socket.id, token: token as string, user, clientIp, userAgent: agent?.slice(0, 200) });
				// socket.io emits no "connection" (so no "disconnect") for a client that left during the handshake.
				socket.conn.once("close", () => void this.closeConnection(conn));
				if (socket.conn.readyState !== "open") return void this.closeConnection(conn);
				socket.data.conn = conn;
				socket.join(rooms);
				next();
				void this.confirmGroups(conn, rooms).catch(err => this.logger.warn("Group rooms not confirmed", err.message));
			} catch (err) {
				const body = publicError(err as Errors.MoleculerError);
				next(Object.assign(new Error(body.message), { data: body }));
			}
		},

		onConnection(this: Svc, socket: ChannelSocket) {
			// Also on the transport's close (see handshake); closing twice is harmless.
			socket.on("disconnect", () => {
				if (socket.data.conn) void this.closeConnection(socket.data.conn);
			});
		},

		async onCall(this: Svc, socket: ChannelSocket, action: unknown, params: unknown, ack: unknown) {
			const conn = socket.data.conn;
			if (typeof ack !== "function" || !conn) return; // nowhere to answer
			const { result, error } = await this.dispatch(conn, action, params);
			if (socket.connected) (ack as Ack)(error ?? null, error ? undefined : result);
		},

		/** A fresh access token of the same session keeps the connection open past the old token's expiry. */
		async onAuth(this: Svc, socket: ChannelSocket, token: unknown, ack: unknown) {
			const conn = socket.data.conn;
			if (typeof ack !== "function" || !conn) return;
			try {
				const user = await this.reauthenticate(conn, token);
				(ack as Ack)(null, { tokenExpiresAt: user.tokenExpiresAt ?? null });
			} catch (err) {
				(ack as Ack)(publicError(err as Errors.MoleculerError));
			}
		},

		// --- The transport side of the channel mixin.

		sendEvent(this: Svc, conn: ChannelConnection, event: string, data: unknown) {
			this.io.of("/").sockets.get(conn.id)?.emit(event, data);
		},

		endConnection(this: Svc, conn: ChannelConnection, event: string, data: unknown) {
			const socket = this.io.of("/").sockets.get(conn.id);
			if (!socket) return void this.closeConnection(conn);
			socket.emit(event, data);
			// Let the event leave before the transport closes.
			setImmediate(() => socket.disconnect(true));
		},

		/** One emit to all the rooms: a socket in several of them gets the event once; the adapter reaches the other nodes. */
		deliver(this: Svc, message: Push) {
			this.io.to(message.rooms).emit(message.event, message.data);
		},

		changeRooms(this: Svc, change: RoomChange) {
			const sockets = this.io.in(change.userIds.map(room.user));
			if (change.join?.length) sockets.socketsJoin(change.join);
			if (change.leave?.length) sockets.socketsLeave(change.leave);
		},
	},

	created(this: Svc) {
		this.platform = this.broker.options.platform!;
		this.trust = proxyAddr.compile(this.platform.http.trustedProxies);
		this.redis = [];
		const origins = this.platform.http.corsOrigins;
		if (origins.length) this.settings.io.options.cors = { origin: origins.includes("*") ? "*" : origins, credentials: false };
	},

	/** moleculer-io's started() has built the socket.io server; it is wired up here. */
	async started(this: Svc) {
		const gateway = this.broker.getLocalService("gateway") as (Service & { server?: HttpServer }) | undefined;
		if (!gateway?.server)
			throw new Errors.MoleculerError("The websocket service runs beside the gateway (node group 'gateway'): it serves /socket.io on the gateway's port", 500, "NO_GATEWAY");
		if (this.platform.redisUrl) {
			const pub = new Redis(this.platform.redisUrl, { maxRetriesPerRequest: 2 });
			const sub = pub.duplicate();
			this.redis.push(pub, sub);
			this.io.adapter(createAdapter(pub, sub, { key: `${this.broker.namespace || "cnbicloud"}:socket.io` }));
		} else {
			// Rooms in memory are this node's alone: pushes would miss the other nodes' sockets.
			refuseUnsharedReplica(this, "SOCKET_ROOMS_NOT_SHARED", "this node keeps socket.io rooms in memory. Gateways share rooms through socket.io's Redis adapter: set REDIS_URL on every gateway node.");
		}
		const nsp = this.io.of("/");
		nsp.use((socket, next) => void this.handshake(socket as ChannelSocket, next));
		nsp.on("connection", socket => this.onConnection(socket as ChannelSocket));
		this.io.attach(gateway.server);
	},

	/**
	 * Runs before moleculer-io's stopped(): io.close() there would also close the gateway's HTTP
	 * server, and the adapter must let go of Redis before its clients disconnect.
	 */
	async stopped(this: Svc) {
		if (this.io) {
			this.io.local.disconnectSockets(true);
			this.io.engine?.close();
			await this.io.of("/").adapter.close();
			(this as { io?: IOServer }).io = undefined;
		}
		for (const client of this.redis) client.disconnect();
	},
});

export default WebsocketService;
