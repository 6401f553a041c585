import type { Context, Service } from "moleculer";
import { createPresenceStore, type Channel, type Connection, type PresenceStore } from "../../lib/presence";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { idParam } from "../../lib/org/params";
import { refuseUnsharedReplica } from "../../lib/replicas";
import { push, room } from "../../lib/realtime/push";
import type { AuthenticatedUser } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { SessionInfo, SessionsRevokedEvent, User } from "../../types/org";

/** A session counts as online when it has a live connection or was used this recently. */
const ONLINE_WINDOW_MS = 5 * 60_000;


type Ctx<P = unknown> = Context<P, RequestMeta>;
type Svc = {
	broker: Context["broker"];
	logger: Context["broker"]["logger"];
	presence: PresenceStore;
	caller(ctx: Ctx): AuthenticatedUser;
	companyFilter(caller: AuthenticatedUser, requested?: string): { companyId?: string };
	visible(caller: AuthenticatedUser, row: { userId: string; deptId: string | null }): boolean;
	withChannels(rows: SessionInfo[]): Promise<OnlineSession[]>;
	announce(ctx: Ctx, userId: string, companyId: string | null): Promise<void>;
	visibleSession(ctx: Ctx, sessionId: string): Promise<SessionInfo>;
};

export interface OnlineSession {
	sessionId: string;
	userId: string;
	username: string;
	device: string;
	ip: string;
	since: string;
	lastSeenAt: string;
	channels: { connectionId: string; channel: Channel; nodeID: string; since: string }[];
}

const sessionNotFound = (id: string) => clientError(`Session '${id}' not found`, 404, "NOT_FOUND", { id });

/**
 * Presence: who is signed in (the sessions `security` keeps), on which devices, with which live
 * real-time connections (announced by the websocket and TCP channels), and force logout.
 * Connections live in Redis when the platform has one, so every node answers alike.
 */
const OnlineService = serviceSchema({
	name: "online",
	settings: {
		rest: "/online",
		app: "org",
		permissions: {
			"online:read": { description: "See who is online in my company (within my data scope)" },
			"online:kick": { description: "End another user's session (force logout)" },
		},
	},

	actions: {
		list: {
			rest: "GET /",
			permission: "online:read",
			idempotent: true,
			description: "Live sessions of my company within my data scope, with their real-time connections (platform administrator: every company, or `companyId`).",
			params: { $$strict: true, companyId: { ...idParam, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ companyId?: string }>) {
				const caller = this.caller(ctx);
				const rows = await ctx.call<SessionInfo[], object>("security.sessions", this.companyFilter(caller, ctx.params.companyId));
				return this.withChannels(rows.filter(row => this.visible(caller, row)));
			},
		},

		user: {
			rest: "GET /users/:userId",
			permission: "online:read",
			idempotent: true,
			description: "Whether a user of my company is online, when last seen, and the user's sessions.",
			params: { $$strict: true, userId: idParam },
			async handler(this: Svc, ctx: Ctx<{ userId: string }>) {
				const caller = this.caller(ctx);
				const { userId } = ctx.params;
				const user = await ctx.call<User | null, object>("user.byId", { id: userId });
				if (!user || (!caller.platformAdmin && user.companyId !== caller.companyId) || !this.visible(caller, { userId, deptId: user.deptId }))
					throw clientError(`User '${userId}' not found`, 404, "NOT_FOUND", { id: userId });
				const rows = await ctx.call<SessionInfo[], object>("security.sessions", { userId });
				const sessions = await this.withChannels(rows);
				const recorded = (await this.presence.lastSeen([userId])).get(userId) ?? 0;
				const lastSeen = Math.max(recorded, ...sessions.map(s => Date.parse(s.lastSeenAt)));
				const now = Date.now();
				const online = sessions.some(s => s.channels.length > 0 || now - Date.parse(s.lastSeenAt) < ONLINE_WINDOW_MS);
				return { userId, online, lastSeenAt: lastSeen > 0 ? new Date(lastSeen).toISOString() : null, sessions };
			},
		},

		kick: {
			rest: "DELETE /:sessionId",
			permission: "online:kick",
			description: "Force logout: the session's tokens stop working on every node and its connections close.",
			params: { $$strict: true, sessionId: idParam },
			async handler(this: Svc, ctx: Ctx<{ sessionId: string }>) {
				const { sessionId } = ctx.params;
				await this.visibleSession(ctx, sessionId);
				await ctx.call("security.revokeSessions", { sessionIds: [sessionId], reason: `force logout by ${this.caller(ctx).username}` });
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		// --- Internal: the real-time channels announce their connections.

		connected: {
			visibility: "public",
			params: {
				sessionId: idParam,
				connectionId: { type: "string", min: 1, max: 128 },
				channel: { type: "enum", values: ["websocket", "tcp"] },
				nodeID: { type: "string", min: 1, max: 128 },
			},
			async handler(this: Svc, ctx: Ctx<Omit<Connection, "since" | "userId">>) {
				const [session] = await ctx.call<SessionInfo[], object>("security.sessions", { sessionId: ctx.params.sessionId });
				// A connection of an ended session must not show as online: the channel closes it on this answer.
				if (!session) throw sessionNotFound(ctx.params.sessionId);
				const now = Date.now();
				await this.presence.connect({ ...ctx.params, userId: session.userId, since: now });
				await this.presence.markSeen(session.userId, now);
				await this.announce(ctx, session.userId, session.companyId);
				return true;
			},
		},

		disconnected: {
			visibility: "public",
			params: { connectionId: { type: "string", min: 1, max: 128 } },
			async handler(this: Svc, ctx: Ctx<{ connectionId: string }>) {
				const gone = await this.presence.disconnect(ctx.params.connectionId);
				if (!gone) return false;
				await this.presence.markSeen(gone.userId, Date.now());
				// The session may be gone already (a logout closes its connections): the company comes from the user.
				const user = await ctx.call<User | null, object>("user.byId", { id: gone.userId });
				await this.announce(ctx, gone.userId, user?.companyId ?? null);
				return true;
			},
		},
	},

	events: {
		/** Revoked sessions have no presence left (the channels close their sockets on the same event). */
		async "security.session.revoked"(this: Svc, ctx: Context<SessionsRevokedEvent>) {
			if (ctx.params.sessionIds?.length) await this.presence.dropSessions(ctx.params.sessionIds);
		},
		/** A node that left holds no connections any more. */
		async "$node.disconnected"(this: Svc, ctx: Context<{ node: { id: string } }>) {
			const dropped = await this.presence.dropNode(ctx.params.node.id);
			if (dropped) this.logger.info(`${dropped} connection(s) of node '${ctx.params.node.id}' dropped`);
		},
	},

	methods: {
		/** `presence` to the user's company: how many live connections (devices) the user has now. */
		async announce(this: Svc, ctx: Ctx, userId: string, companyId: string | null) {
			if (!companyId) return;
			const sessions = await ctx.call<SessionInfo[], object>("security.sessions", { userId });
			const connections = [...(await this.presence.connections(sessions.map(s => s.sessionId))).values()].reduce((n, list) => n + list.length, 0);
			await push(ctx, { rooms: [room.company(companyId)], event: "presence", data: { userId, online: connections > 0, connections, at: new Date().toISOString() } });
		},

		caller(ctx: Ctx): AuthenticatedUser {
			const user = ctx.meta.user;
			if (!user) throw clientError("Authentication required", 401, "UNAUTHORIZED");
			return user;
		},

		/** The caller's company; the platform administrator sees every company, or the one named. */
		companyFilter(caller: AuthenticatedUser, requested?: string): { companyId?: string } {
			if (caller.platformAdmin) return requested ? { companyId: requested } : {};
			if (requested && requested !== caller.companyId) throw clientError("Only the platform administrator may choose the company", 403, "FORBIDDEN", { field: "companyId" });
			if (!caller.companyId) throw clientError("This account belongs to no company", 403, "FORBIDDEN");
			return { companyId: caller.companyId };
		},

		/** The caller's data scope: everyone, the listed departments' users, and/or the caller. No scope: only the caller. */
		visible(caller: AuthenticatedUser, row: { userId: string; deptId: string | null }): boolean {
			if (caller.platformAdmin) return true;
			const scope = caller.dataScope ?? { all: false, deptIds: [], self: true };
			if (scope.all) return true;
			if (scope.self && row.userId === caller.id) return true;
			return row.deptId !== null && scope.deptIds.includes(row.deptId);
		},

		async withChannels(this: Svc, rows: SessionInfo[]): Promise<OnlineSession[]> {
			const connections = await this.presence.connections(rows.map(r => r.sessionId));
			return rows.map(r => ({
				sessionId: r.sessionId,
				userId: r.userId,
				username: r.username,
				device: r.device,
				ip: r.ip,
				since: r.since,
				lastSeenAt: r.lastSeenAt,
				channels: (connections.get(r.sessionId) ?? []).map(c => ({ connectionId: c.connectionId, channel: c.channel, nodeID: c.nodeID, since: new Date(c.since).toISOString() })),
			}));
		},

		/** The session, when it belongs to the caller's company and data scope; else 404 (no difference shows). */
		async visibleSession(this: Svc, ctx: Ctx, sessionId: string): Promise<SessionInfo> {
			const caller = this.caller(ctx);
			const [row] = await ctx.call<SessionInfo[], object>("security.sessions", { sessionId, ...this.companyFilter(caller) });
			if (!row || !this.visible(caller, row)) throw sessionNotFound(sessionId);
			return row;
		},
	},

	created(this: Svc) {
		const platform = this.broker.options.platform;
		this.presence = createPresenceStore(platform?.redisUrl ?? null, `${this.broker.namespace || "cnbicloud"}:presence`);
	},

	/** Presence in memory is this node's alone: a second replica needs Redis. */
	started(this: Svc) {
		if (this.broker.options.platform?.redisUrl) return;
		refuseUnsharedReplica(
			this as unknown as Service,
			"PRESENCE_NOT_SHARED",
			"this node keeps presence in memory. Replicas of online share presence through Redis: set REDIS_URL on every node that runs online.",
		);
	},

	async stopped(this: Svc) {
		await this.presence.close();
	},
});

export default OnlineService;
