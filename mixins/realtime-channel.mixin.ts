import { randomUUID } from "node:crypto";
import { Errors, type Context, type Service, type ServiceSchema } from "moleculer";
import { assertAccess } from "../lib/access";
import { isMutatingRest } from "../lib/audit/operation";
import { publicError, type PublicError } from "../lib/errors";
import { ROOMS_EVENT, PUSH_EVENT, room, type Push, type RoomChange } from "../lib/realtime/push";
import { whitelisted } from "../lib/realtime/whitelist";
import { serviceSchema } from "../lib/service";
import { changesAccess } from "../lib/principal-cache";
import { GatewayRateLimiter } from "../lib/rate-limit";
import type { ActionAccess, AuthenticatedUser } from "../types/access";
import type { RequestMeta } from "../types/context";
import type { SessionsRevokedEvent } from "../types/org";

/** One client connection of a real-time channel, whatever its transport. */
export interface ChannelConnection {
	id: string;
	token: string;
	user: AuthenticatedUser;
	clientIp: string;
	userAgent?: string;
	/** The access generation `user` was resolved in, and when: an older one is resolved again before the next call. */
	generation: number;
	resolvedAt: number;
	/** Calls in flight. */
	inFlight: number;
	expiryTimer?: NodeJS.Timeout;
}

/** What a transport (socket.io, TCP) implements for the mixin. */
export interface ChannelTransport {
	/** Sends a pushed event to one connection. */
	sendEvent(conn: ChannelConnection, event: string, data: unknown): void;
	/** Ends a connection after telling it why (`session.revoked`, `session.expired`). */
	endConnection(conn: ChannelConnection, event: string, data: unknown): void;
	/** Delivers a push to the connections in its rooms. */
	deliver(message: Push): void | Promise<void>;
	/** The connections of `userIds` join / leave rooms. */
	changeRooms(change: RoomChange): void | Promise<void>;
}

/** What the mixin gives a channel service. */
export interface ChannelMethods {
	connections: Map<string, ChannelConnection>;
	/** The user of an access token, or a 401/503 error. */
	authenticate(token: unknown, clientIp: string): Promise<AuthenticatedUser>;
	/** Registers an authenticated connection (presence, expiry) and answers the rooms it joins. */
	openConnection(conn: NewConnection): Promise<{ conn: ChannelConnection; rooms: string[] }>;
	/** After the transport joined the rooms: leaves the groups the user left meanwhile. */
	confirmGroups(conn: ChannelConnection, rooms: string[]): Promise<void>;
	/** Forgets a connection (it closed, for whatever reason). */
	closeConnection(conn: ChannelConnection): Promise<void>;
	/** Replaces the connection's token with a fresh one of the same session (a client that refreshed). */
	reauthenticate(conn: ChannelConnection, token: unknown): Promise<AuthenticatedUser>;
	/** Calls a whitelisted action for the connection's user; errors come back in their public form. */
	dispatch(conn: ChannelConnection, action: unknown, params: unknown): Promise<{ result?: unknown; error?: PublicError }>;
}

type NewConnection = Pick<ChannelConnection, "token" | "user" | "clientIp" | "userAgent"> & { id?: string };
type Svc = Service &
	ChannelMethods &
	ChannelTransport & {
		limiter: GatewayRateLimiter;
		/** Bumped by every change that can alter what a user may do. */
		accessGeneration: number;
		expire(conn: ChannelConnection): void;
		groupIdsOf(userId: string): Promise<string[]>;
		freshUser(conn: ChannelConnection): Promise<void>;
	};

const unauthorized = (message: string, type = "INVALID_TOKEN") => new Errors.MoleculerClientError(message, 401, type);
const TOKEN = /^[A-Za-z0-9._~+/=-]{1,4096}$/;
/** A timer cannot wait longer than about 24.8 days. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A connection's user is resolved again at least this often, in case a revocation or access event was missed. */
const PRINCIPAL_MAX_AGE_MS = 60_000;
/** Connections one user may hold on one node (devices, tabs). */
export const MAX_CONNECTIONS_PER_USER = 20;
/** Calls one connection may have in flight; more are refused until some finish. */
export const MAX_IN_FLIGHT = 32;

/**
 * What both real-time channels (socket.io `websocket`, TCP `socket`) share, so that they differ
 * in transport only:
 *   - the handshake: an access token resolved by `security` (a refused or expired token is a 401);
 *   - calls: whitelisted and published actions only, the action's declared permission checked
 *     as the gateway does, the user's request budget shared with HTTP, errors in public form;
 *     the callee sees the channel as caller, so mutating calls are audited;
 *   - presence: every connection is announced to `online` and withdrawn when it closes;
 *   - rooms: the user's, the company's and the user's groups'; pushes and room changes from the
 *     services (lib/realtime/push) reach the transport;
 *   - ends: a revoked session closes its connections (`session.revoked`) on every node, and a
 *     connection lives no longer than its access token (`session.expired`), unless the client
 *     hands in a fresh token of the same session first.
 */
export function RealtimeChannelMixin(channel: "websocket" | "tcp"): Partial<ServiceSchema> {
	return serviceSchema({
		events: {
			[PUSH_EVENT](this: Svc, ctx: Context<Push>) {
				return this.deliver(ctx.params);
			},

			[ROOMS_EVENT](this: Svc, ctx: Context<RoomChange>) {
				return this.changeRooms(ctx.params);
			},

			"security.session.revoked"(this: Svc, ctx: Context<SessionsRevokedEvent>) {
				const ended = new Set(ctx.params.sessionIds ?? []);
				for (const conn of this.connections.values())
					if (conn.user.sessionId && ended.has(conn.user.sessionId)) this.endConnection(conn, "session.revoked", { reason: ctx.params.reason });
			},

			"cache.clean.*"(this: Svc, ctx: Context) {
				if (changesAccess(String(ctx.eventName))) this.accessGeneration++;
			},
		},

		methods: {
			async authenticate(this: Svc, token: unknown, clientIp: string) {
				if (typeof token !== "string" || !TOKEN.test(token)) throw unauthorized("An access token is required", "UNAUTHORIZED");
				const limited = await this.limiter.consumeIp(clientIp);
				if (limited && !limited.allowed) throw new Errors.MoleculerClientError("Too many requests, slow down", 429, "RATE_LIMITED", { retryAfter: limited.resetSeconds });
				try {
					return await this.broker.call<AuthenticatedUser, { token: string }>("security.resolveToken", { token });
				} catch (err) {
					if (err instanceof Errors.ServiceNotFoundError || err instanceof Errors.ServiceNotAvailableError)
						throw new Errors.MoleculerError("Authentication is unavailable, try again shortly", 503, "SERVICE_NOT_AVAILABLE");
					throw err;
				}
			},

			async openConnection(this: Svc, given: NewConnection) {
				const conn: ChannelConnection = { ...given, id: given.id ?? randomUUID(), generation: this.accessGeneration, resolvedAt: Date.now(), inFlight: 0 };
				const { user } = conn;
				if (!user.sessionId) throw unauthorized("The token has no session");
				if (this.connections.has(conn.id)) throw new Errors.MoleculerClientError("This connection is already signed in", 409, "ALREADY_AUTHENTICATED");
				let mine = 0;
				for (const other of this.connections.values()) if (other.user.id === user.id) mine++;
				if (mine >= MAX_CONNECTIONS_PER_USER)
					throw new Errors.MoleculerClientError(`At most ${MAX_CONNECTIONS_PER_USER} connections per user on one node`, 429, "TOO_MANY_CONNECTIONS");
				this.connections.set(conn.id, conn);
				try {
					// `online` answers 404 for a session that ended meanwhile: the connection is refused.
					await this.broker.call("online.connected", { sessionId: user.sessionId, connectionId: conn.id, channel, nodeID: this.broker.nodeID });
				} catch (err) {
					this.connections.delete(conn.id);
					if ((err as Errors.MoleculerError).code === 404) throw unauthorized("The session has ended", "SESSION_REVOKED");
					throw err;
				}
				this.expire(conn);
				const rooms = [room.user(user.id), ...(user.companyId ? [room.company(user.companyId)] : []), ...(await this.groupIdsOf(user.id)).map(room.group)];
				return { conn, rooms };
			},

			/**
			 * A removal announced between reading the groups and joining their rooms was applied
			 * before the join: read them again and leave what is no longer the user's.
			 */
			async confirmGroups(this: Svc, conn: ChannelConnection, rooms: string[]) {
				const joined = rooms.filter(r => r.startsWith(room.group("")));
				if (joined.length === 0) return;
				const now = new Set((await this.groupIdsOf(conn.user.id)).map(room.group));
				const left = joined.filter(r => !now.has(r));
				if (left.length) await this.changeRooms({ userIds: [conn.user.id], leave: left });
			},

			async groupIdsOf(this: Svc, userId: string) {
				if (!(this.broker.registry as unknown as { hasService(name: string): boolean }).hasService("groupmember")) return [];
				return this.broker.call<string[], object>("groupmember.groupIdsOf", { userId }).catch(err => {
					this.logger.warn(`Groups of user '${userId}' unavailable; the connection joins them on its next membership change`, err.message);
					return [] as string[];
				});
			},

			async closeConnection(this: Svc, conn: ChannelConnection) {
				if (!this.connections.delete(conn.id)) return;
				clearTimeout(conn.expiryTimer);
				await this.broker.call("online.disconnected", { connectionId: conn.id }).catch(err => this.logger.warn(`Presence of connection '${conn.id}' not withdrawn`, err.message));
			},

			async reauthenticate(this: Svc, conn: ChannelConnection, token: unknown) {
				const user = await this.authenticate(token, conn.clientIp);
				if (user.id !== conn.user.id || user.sessionId !== conn.user.sessionId)
					throw new Errors.MoleculerClientError("A connection keeps its session: reconnect to sign in as someone else", 409, "SESSION_MISMATCH");
				Object.assign(conn, { token: token as string, user, generation: this.accessGeneration, resolvedAt: Date.now() });
				this.expire(conn);
				return user;
			},

			/** Ends the connection when its token expires. */
			expire(this: Svc, conn: ChannelConnection) {
				clearTimeout(conn.expiryTimer);
				if (!conn.user.tokenExpiresAt) return;
				const left = Math.min(MAX_TIMER_MS, Math.max(0, conn.user.tokenExpiresAt - Date.now()));
				conn.expiryTimer = setTimeout(() => this.endConnection(conn, "session.expired", { reason: "The access token expired: reconnect with a fresh one" }), left);
				conn.expiryTimer.unref();
			},

			/** Resolves the user again when access changed since, or when it was resolved a while ago. */
			async freshUser(this: Svc, conn: ChannelConnection) {
				if (conn.generation === this.accessGeneration && Date.now() - conn.resolvedAt < PRINCIPAL_MAX_AGE_MS) return;
				// Taken before the call: a change announced while it runs makes the next call resolve again.
				const generation = this.accessGeneration;
				conn.user = await this.authenticate(conn.token, conn.clientIp);
				conn.generation = generation;
				conn.resolvedAt = Date.now();
			},

			async dispatch(this: Svc, conn: ChannelConnection, action: unknown, params: unknown) {
				if (conn.inFlight >= MAX_IN_FLIGHT)
					return { error: publicError(new Errors.MoleculerClientError(`At most ${MAX_IN_FLIGHT} calls in flight per connection`, 429, "TOO_MANY_IN_FLIGHT")) };
				conn.inFlight++;
				try {
					if (typeof action !== "string" || action.length > 200) throw new Errors.MoleculerClientError("'action' must be an action name", 400, "BAD_REQUEST");
					const endpoint = whitelisted(action) ? this.broker.findNextActionEndpoint(action) : null;
					const definition = endpoint && !(endpoint instanceof Error) ? (endpoint.action as ActionAccess & { visibility?: string; rest?: unknown }) : undefined;
					// Not whitelisted, not published, not a route of the API and unknown all look the same: no such action.
					if (!definition || !definition.rest || (definition.visibility != null && definition.visibility !== "published"))
						throw new Errors.MoleculerClientError(`Action '${action}' is not available on this channel`, 404, "NOT_FOUND", { action });
					if (params != null && (typeof params !== "object" || Array.isArray(params)))
						throw new Errors.MoleculerClientError("'params' must be an object", 400, "BAD_REQUEST");
					await this.freshUser(conn);
					assertAccess(conn.user, definition, action, { mutating: isMutatingRest(definition.rest) });
					const limited = await this.limiter.consumeUser(conn.user.id);
					if (limited && !limited.allowed) throw new Errors.MoleculerClientError("Too many requests, slow down", 429, "RATE_LIMITED", { retryAfter: limited.resetSeconds });
					const meta: RequestMeta & { connectionId: string } = { user: conn.user, clientIp: conn.clientIp, userAgent: conn.userAgent, connectionId: conn.id };
					const result = await this.broker.call(action, params ?? {}, { meta, caller: this.name, requestID: randomUUID() });
					return { result };
				} catch (err) {
					const code = (err as Errors.MoleculerError).code;
					if (typeof code !== "number" || code >= 500) this.logger.error(`${channel} call failed`, err);
					return { error: publicError(err as Errors.MoleculerError) };
				} finally {
					conn.inFlight--;
				}
			},
		},

		created(this: Svc) {
			this.connections = new Map();
			this.accessGeneration = 0;
			const platform = this.broker.options.platform!;
			// The same budgets as HTTP (shared through Redis across nodes): a socket is no way around them.
			this.limiter = new GatewayRateLimiter(platform.http.rateLimit, platform.redisUrl, `${this.broker.namespace || "cnbicloud"}:ratelimit`);
		},

		async stopped(this: Svc) {
			await Promise.all([...this.connections.values()].map(conn => this.closeConnection(conn)));
			await this.limiter.close();
		},
	});
}
