import { randomBytes, randomUUID } from "node:crypto";
import Redis from "ioredis";
import { Errors, type Context, type Service } from "moleculer";
import { ConfigMixin } from "../../mixins/config.mixin";
import { LoginLockout, type LockoutSettings } from "../../lib/security/lockout";
import { decoyHash, hashPassword, MAX_PASSWORD_LENGTH, passwordProblem, verifyPassword } from "../../lib/security/password";
import { createSessionStore, sessionExpiry, type Session, type SessionFilter, type SessionLimits, type SessionStore } from "../../lib/security/sessions";
import { hashRefreshToken, newRefreshToken, refreshTokenSession, signAccessToken, verifyAccessToken } from "../../lib/security/tokens";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { idParam, optionalId } from "../../lib/org/params";
import { refuseUnsharedReplica } from "../../lib/replicas";
import { AUTHENTICATED, type AuthenticatedUser, type ResolveTokenParams } from "../../types/access";
import type { LoginAttemptedEvent } from "../../types/audit";
import type { RequestMeta } from "../../types/context";
import type { EntityEvent, SessionInfo, SessionsRevokedEvent, UserCredentials } from "../../types/org";

/** Live settings (config centre namespace `security`). */
export interface SecurityConfig extends Record<string, unknown> {
	accessTokenTtlSeconds: number;
	refreshTokenTtlSeconds: number;
	sessionMaxAgeSeconds: number;
	lockout: LockoutSettings;
	passwordMinLength: number;
}

export const SECURITY_DEFAULTS: SecurityConfig = {
	accessTokenTtlSeconds: 900,
	refreshTokenTtlSeconds: 604_800,
	sessionMaxAgeSeconds: 2_592_000,
	lockout: { maxFailures: 5, windowSeconds: 600, lockSeconds: 600 },
	passwordMinLength: 8,
};

/** `lastSeenAt` is written at most this often per session: token checks must stay cheap. */
const TOUCH_EVERY_MS = 60_000;
const DEVICE_MAX = 200;

const passwordParam = { type: "string", min: 1, max: MAX_PASSWORD_LENGTH };

type Ctx<P = unknown> = Context<P, RequestMeta>;
/** Who tried to sign in, from where: a login event without its outcome. */
type Attempt = Omit<LoginAttemptedEvent, "at" | "requestId" | "result" | "reason">;
type Revocation = { sessionIds?: string[]; userId?: string; companyId?: string; exceptSessionId?: string };
type Svc = {
	name: string;
	broker: Context["broker"];
	logger: Context["broker"]["logger"];
	config: SecurityConfig;
	secret: string;
	store: SessionStore;
	lockout: LoginLockout;
	lockoutRedis: Redis | null;
	lockoutShape: string;
	effective(): SecurityConfig;
	limits(): SessionLimits;
	buildLockout(): void;
	checkLock(keys: string[], attempt: Attempt, ctx: Ctx): Promise<void>;
	issue(session: Session, refreshToken: string, user: AuthenticatedUser): object;
	principalFor(ctx: Ctx, session: Session): Promise<AuthenticatedUser>;
	revoke(ctx: Context, what: Revocation, reason: string): Promise<number>;
	attempted(ctx: Ctx, event: Omit<LoginAttemptedEvent, "at" | "requestId">): Promise<void>;
	refuseUnsharedReplica(): void;
};

const invalidCredentials = () => clientError("Wrong username or password", 401, "INVALID_CREDENTIALS");
const invalidToken = () => clientError("Invalid or expired token", 401, "INVALID_TOKEN");
const invalidRefreshToken = () => clientError("Invalid or expired refresh token: sign in again", 401, "INVALID_TOKEN");
const locked = (retryAfter: number) =>
	clientError(`Too many failed sign-ins: locked, try again in ${retryAfter} seconds`, 423, "LOCKED", { retryAfter });
const isUnauthorized = (err: unknown) => err instanceof Errors.MoleculerError && err.code === 401;

/**
 * Authentication: login, short-lived access tokens (JWT), rotating refresh tokens bound to a
 * server-side session, logout and revocation on every node, lockout, password change.
 * The gateway turns a bearer token into `ctx.meta.user` through `resolveToken`.
 *
 * Sessions and lockout counters live in Redis when the platform has one (every replica sees
 * the same), in memory otherwise; a second replica without Redis refuses to start.
 */
const SecurityService = serviceSchema({
	name: "security",
	mixins: [ConfigMixin("security", SECURITY_DEFAULTS)],
	settings: { rest: "/auth", app: "platform", permissions: {} },

	actions: {
		login: {
			rest: "POST /login",
			auth: false,
			audit: false,
			description: "Sign in with a username and password: an access token, a refresh token and the user.",
			params: {
				$$strict: true,
				username: { type: "string", min: 1, max: 64 },
				password: passwordParam,
				device: { type: "string", min: 1, max: DEVICE_MAX, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ username: string; password: string; device?: string }>) {
				const { username, password } = ctx.params;
				const ip = ctx.meta.clientIp ?? "unknown";
				const device = (ctx.params.device ?? ctx.meta.userAgent ?? "unknown").slice(0, DEVICE_MAX);
				const keys = [`user:${username.toLowerCase()}`, `ip:${ip}`];
				const attempt: Attempt = { username, userId: null, companyId: null, ip, device };
				await this.checkLock(keys, attempt, ctx);

				const creds = await ctx.call<UserCredentials | null, { username: string }>("user.credentials", { username });
				// An unknown user is checked against a decoy hash, so both failures take the same time.
				const valid = await verifyPassword(password, creds?.passwordHash ?? (await decoyHash()));
				if (!creds || !valid) {
					await this.lockout.recordFailure(keys);
					await this.attempted(ctx, { ...attempt, userId: creds?.id ?? null, companyId: creds?.companyId ?? null, result: "failure", reason: creds ? "wrong password" : "unknown user" });
					throw invalidCredentials();
				}

				const known = { ...attempt, userId: creds.id, companyId: creds.companyId };
				let user: AuthenticatedUser;
				try {
					// Only now, with the password right, may the caller learn that the account is disabled.
					user = await ctx.call<AuthenticatedUser, { userId: string }>("auth.principal", { userId: creds.id });
				} catch (err) {
					if (isUnauthorized(err)) await this.attempted(ctx, { ...known, result: "disabled", reason: (err as Errors.MoleculerError).type });
					throw err;
				}
				await this.lockout.clear(keys[0]);

				const now = Date.now();
				const id = randomUUID();
				const refresh = newRefreshToken(id);
				const session: Session = {
					id, userId: user.id, username: user.username, companyId: user.companyId, deptId: user.deptId ?? null, device, ip,
					createdAt: now, lastSeenAt: now, expiresAt: sessionExpiry(now, now, this.limits()), refreshHash: refresh.hash, spentHashes: [],
				};
				await this.store.create(session, this.limits());
				await this.attempted(ctx, { ...known, result: "ok", reason: null });
				return this.issue(session, refresh.token, user);
			},
		},

		refresh: {
			rest: "POST /refresh",
			auth: false,
			audit: false,
			description: "A new token pair for a refresh token, which is spent; a spent one presented again ends the session.",
			params: { $$strict: true, refreshToken: { type: "string", min: 1, max: 200 } },
			async handler(this: Svc, ctx: Ctx<{ refreshToken: string }>) {
				const presented = ctx.params.refreshToken;
				const sessionId = refreshTokenSession(presented);
				if (!sessionId) throw invalidRefreshToken();
				const next = newRefreshToken(sessionId);
				const result = await this.store.rotate(sessionId, hashRefreshToken(presented), next.hash, Date.now(), this.limits());
				if (result.outcome === "unknown") throw invalidRefreshToken();
				if (result.outcome === "reused") {
					// Two holders of one token: one of them stole it. Neither keeps the session.
					this.logger.warn(`Spent refresh token presented for session ${sessionId} of user ${result.session.username}: session revoked`);
					await this.revoke(ctx, { sessionIds: [sessionId] }, "refresh token reused");
					throw clientError("This refresh token was already used: the session has been ended for safety, sign in again", 401, "REFRESH_TOKEN_REUSED");
				}
				const user = await this.principalFor(ctx, result.session);
				return this.issue(result.session, next.token, user);
			},
		},

		logout: {
			rest: "POST /logout",
			permission: AUTHENTICATED,
			audit: false,
			description: "End the current session: its tokens stop working at once, on every node.",
			params: { $$strict: true },
			async handler(this: Svc, ctx: Ctx) {
				const sessionId = ctx.meta.user?.sessionId;
				if (sessionId) await this.revoke(ctx, { sessionIds: [sessionId] }, "logout");
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		me: {
			rest: "GET /me",
			permission: AUTHENTICATED,
			description: "The signed-in user with roles, permissions and data scope.",
			params: { $$strict: true },
			handler(this: Svc, ctx: Ctx) {
				return ctx.meta.user;
			},
		},

		changePassword: {
			rest: "PUT /password",
			permission: AUTHENTICATED,
			description: "Change my password (the current one is required); my other sessions end.",
			params: { $$strict: true, oldPassword: passwordParam, newPassword: passwordParam },
			async handler(this: Svc, ctx: Ctx<{ oldPassword: string; newPassword: string }>) {
				const me = ctx.meta.user!;
				const { oldPassword, newPassword } = ctx.params;
				const problem = passwordProblem(newPassword, me.username, { minLength: this.effective().passwordMinLength });
				if (problem) throw clientError(problem, 422, "WEAK_PASSWORD", { field: "newPassword" });
				if (newPassword === oldPassword) throw clientError("The new password must differ from the current one", 422, "WEAK_PASSWORD", { field: "newPassword" });

				// The current password is a secret worth guessing with a stolen token: the same lockout as login.
				const ip = ctx.meta.clientIp ?? "unknown";
				const keys = [`user:${me.username.toLowerCase()}`, `ip:${ip}`];
				const attempt: Attempt = { username: me.username, userId: me.id, companyId: me.companyId, ip, device: ctx.meta.userAgent ?? null };
				await this.checkLock(keys, attempt, ctx);
				const creds = await ctx.call<UserCredentials | null, { username: string }>("user.credentials", { username: me.username });
				if (!creds || creds.id !== me.id || !(await verifyPassword(oldPassword, creds.passwordHash))) {
					await this.lockout.recordFailure(keys);
					await this.attempted(ctx, { ...attempt, result: "failure", reason: "wrong current password" });
					throw clientError("The current password ('oldPassword') is wrong", 422, "WRONG_PASSWORD", { field: "oldPassword" });
				}

				await ctx.call("user.setPasswordHash", { id: me.id, passwordHash: await hashPassword(newPassword) });
				await this.revoke(ctx, { userId: me.id, exceptSessionId: me.sessionId }, "password changed");
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		// --- Internal: other services only.

		/** The gateway's authentication: a valid access token of a live session → the user (with `sessionId`). */
		resolveToken: {
			visibility: "public",
			params: { token: { type: "string", min: 1, max: 4096 } },
			async handler(this: Svc, ctx: Ctx<ResolveTokenParams>): Promise<AuthenticatedUser> {
				const claims = verifyAccessToken(ctx.params.token, this.secret);
				if (!claims) throw invalidToken();
				const session = await this.store.get(claims.sid);
				if (!session || session.userId !== claims.sub) throw invalidToken();
				const user = await this.principalFor(ctx, session);
				const now = Date.now();
				if (now - session.lastSeenAt >= TOUCH_EVERY_MS)
					this.store.touch(session.id, now).catch(err => this.logger.warn(`Could not record activity of session ${session.id}`, err));
				return { ...user, sessionId: session.id, tokenExpiresAt: claims.exp * 1000 };
			},
		},

		/** Ends sessions (listed, a user's, a company's) on every node; answers how many ended. */
		revokeSessions: {
			visibility: "public",
			params: {
				sessionIds: { type: "array", items: idParam, max: 1000, optional: true },
				userId: optionalId,
				companyId: optionalId,
				exceptSessionId: optionalId,
				reason: { type: "string", min: 1, max: 200 },
			},
			async handler(this: Svc, ctx: Context<Revocation & { reason: string }>) {
				const { reason, ...what } = ctx.params;
				if (!what.sessionIds?.length && !what.userId && !what.companyId)
					throw clientError("Name the sessions to revoke: 'sessionIds', 'userId' or 'companyId'", 422, "VALIDATION_ERROR");
				return { revoked: await this.revoke(ctx, what, reason) };
			},
		},

		/** Live sessions of a company (`null`: the platform administrator's), a user, or one session; all when none is named. */
		sessions: {
			visibility: "public",
			params: {
				companyId: { ...optionalId, nullable: true },
				userId: optionalId,
				sessionId: optionalId,
			},
			async handler(this: Svc, ctx: Context<SessionFilter & { sessionId?: string }>): Promise<SessionInfo[]> {
				const { sessionId, ...filter } = ctx.params;
				let sessions: Session[];
				if (sessionId) {
					const one = await this.store.get(sessionId);
					sessions = one && (filter.userId === undefined || one.userId === filter.userId) && (filter.companyId === undefined || one.companyId === filter.companyId) ? [one] : [];
				} else sessions = await this.store.list(filter);
				return sessions.sort((a, b) => a.createdAt - b.createdAt).map(toRow);
			},
		},
	},

	events: {
		/** A disabled or deleted user loses every session at once. */
		async "user.user.updated"(this: Svc, ctx: Context<EntityEvent>) {
			if (ctx.params.entity.status === "disabled") await this.revoke(ctx, { userId: String(ctx.params.entity.id) }, "user disabled");
		},
		async "user.user.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.revoke(ctx, { userId: String(ctx.params.entity.id) }, "user removed");
		},
		async "company.company.updated"(this: Svc, ctx: Context<EntityEvent>) {
			if (ctx.params.entity.status === "disabled") await this.revoke(ctx, { companyId: String(ctx.params.entity.id) }, "company disabled");
		},
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.revoke(ctx, { companyId: String(ctx.params.entity.id) }, "company removed");
		},
	},

	methods: {
		/** The configuration with nonsense values (from the config centre) replaced by the defaults. */
		effective(this: Svc): SecurityConfig {
			const c = this.config;
			const positive = (value: unknown, fallback: number) => (typeof value === "number" && Number.isFinite(value) && value > 0 ? Math.ceil(value) : fallback);
			const lockout = { ...SECURITY_DEFAULTS.lockout, ...(typeof c.lockout === "object" && c.lockout ? c.lockout : {}) };
			return {
				accessTokenTtlSeconds: positive(c.accessTokenTtlSeconds, SECURITY_DEFAULTS.accessTokenTtlSeconds),
				refreshTokenTtlSeconds: positive(c.refreshTokenTtlSeconds, SECURITY_DEFAULTS.refreshTokenTtlSeconds),
				sessionMaxAgeSeconds: positive(c.sessionMaxAgeSeconds, SECURITY_DEFAULTS.sessionMaxAgeSeconds),
				passwordMinLength: positive(c.passwordMinLength, SECURITY_DEFAULTS.passwordMinLength),
				lockout: {
					maxFailures: positive(lockout.maxFailures, SECURITY_DEFAULTS.lockout.maxFailures),
					windowSeconds: positive(lockout.windowSeconds, SECURITY_DEFAULTS.lockout.windowSeconds),
					lockSeconds: positive(lockout.lockSeconds, SECURITY_DEFAULTS.lockout.lockSeconds),
				},
			};
		},

		limits(this: Svc): SessionLimits {
			const c = this.effective();
			return { idleSeconds: c.refreshTokenTtlSeconds, maxAgeSeconds: c.sessionMaxAgeSeconds };
		},

		/** (Re)builds the lockout when its settings change; counters in Redis survive, memory ones start afresh. */
		buildLockout(this: Svc) {
			const settings = this.effective().lockout;
			const shape = JSON.stringify(settings);
			if (this.lockout && shape === this.lockoutShape) return;
			this.lockoutShape = shape;
			this.lockout = new LoginLockout(settings, this.lockoutRedis, `${this.broker.namespace || "cnbicloud"}:security:lockout`);
		},

		async checkLock(this: Svc, keys: string[], attempt: Attempt, ctx: Ctx) {
			const retryAfter = await this.lockout.lockedFor(keys);
			if (retryAfter === 0) return;
			await this.attempted(ctx, { ...attempt, result: "locked", reason: "too many failures" });
			throw locked(retryAfter);
		},

		issue(this: Svc, session: Session, refreshToken: string, user: AuthenticatedUser) {
			const ttl = this.effective().accessTokenTtlSeconds;
			return {
				accessToken: signAccessToken({ sub: session.userId, sid: session.id, cid: session.companyId }, this.secret, ttl),
				refreshToken,
				expiresIn: ttl,
				sessionId: session.id,
				user: { id: user.id, username: user.username, name: user.name, companyId: user.companyId, roles: user.roles, permissions: user.permissions, platformAdmin: Boolean(user.platformAdmin) },
			};
		},

		/** The session's user as `auth` sees it now; a user who may no longer sign in loses the session. */
		async principalFor(this: Svc, ctx: Ctx, session: Session): Promise<AuthenticatedUser> {
			try {
				return await ctx.call<AuthenticatedUser, { userId: string }>("auth.principal", { userId: session.userId });
			} catch (err) {
				if (isUnauthorized(err)) await this.revoke(ctx, { sessionIds: [session.id] }, String((err as Errors.MoleculerError).type ?? "unauthorized"));
				throw err;
			}
		},

		async revoke(this: Svc, ctx: Context, what: Revocation, reason: string): Promise<number> {
			const ids = new Set(what.sessionIds ?? []);
			if (what.userId) for (const s of await this.store.list({ userId: what.userId })) ids.add(s.id);
			if (what.companyId) for (const s of await this.store.list({ companyId: what.companyId })) ids.add(s.id);
			if (what.exceptSessionId) ids.delete(what.exceptSessionId);
			const removed = await this.store.remove([...ids]);
			if (removed.length === 0) return 0;
			this.logger.info(`${removed.length} session(s) revoked: ${reason}`);
			const event: SessionsRevokedEvent = { sessionIds: removed.map(s => s.id), userId: what.userId, companyId: what.companyId, reason };
			// Every gateway drops its cached tokens of these sessions before this answers: a logout
			// holds on the next request, whichever node it reaches. (An event would arrive a moment later.)
			const gateways = this.broker.registry
				.getServiceList({ onlyAvailable: true, skipInternal: true, withActions: false })
				.filter(s => s.name === "gateway")
				.map(s => s.nodeID);
			await Promise.all(
				gateways.map(nodeID =>
					ctx.call("gateway.forgetSessions", event, { nodeID }).catch(err => this.logger.warn(`Gateway ${nodeID} could not drop revoked sessions; its cache expires them`, err)),
				),
			);
			// Broadcast: every other holder (channels, presence) drops what it holds for these sessions.
			await ctx.broadcast("security.session.revoked", event);
			return removed.length;
		},

		async attempted(this: Svc, ctx: Ctx, event: Omit<LoginAttemptedEvent, "at" | "requestId">) {
			const payload: LoginAttemptedEvent = { at: new Date().toISOString(), requestId: ctx.requestID ?? null, ...event };
			await ctx.emit("security.login.attempted", payload);
		},

		/** Sessions in memory are this node's alone: a second replica without Redis would split them. */
		refuseUnsharedReplica(this: Svc) {
			if (this.broker.options.platform?.redisUrl) return;
			refuseUnsharedReplica(
				this as unknown as Service,
				"SESSIONS_NOT_SHARED",
				"this node keeps sessions in memory. Replicas of security share sessions through Redis: set REDIS_URL on every node that runs security.",
			);
		},

		configChanged(this: Svc) {
			this.buildLockout();
		},
	},

	async started(this: Svc) {
		const platform = this.broker.options.platform!;
		let secret = platform.security.jwtSecret;
		if (!secret) {
			if (platform.clustered)
				throw new Errors.MoleculerError("JWT_SECRET is not set: set JWT_SECRET on every node that runs security (the same value everywhere)", 500, "JWT_SECRET_REQUIRED");
			// One process, one secret: tokens end with the process, which is all the embedded mode needs.
			secret = randomBytes(32).toString("base64url");
		}
		this.refuseUnsharedReplica();
		this.secret = secret;
		const prefix = `${this.broker.namespace || "cnbicloud"}:security`;
		this.store = createSessionStore(platform.redisUrl, `${prefix}:sessions`);
		// Like the gateway's limiter: without a connection the counters fall back to memory rather than queueing.
		this.lockoutRedis = platform.redisUrl ? new Redis(platform.redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 }) : null;
		// The config mixin may have built one already, before Redis was connected: build it again.
		this.lockoutShape = "";
		this.buildLockout();
	},

	async stopped(this: Svc) {
		await this.store?.close();
		this.lockoutRedis?.disconnect();
	},
});

function toRow(s: Session): SessionInfo {
	return {
		sessionId: s.id,
		userId: s.userId,
		username: s.username,
		companyId: s.companyId,
		deptId: s.deptId,
		device: s.device,
		ip: s.ip,
		since: new Date(s.createdAt).toISOString(),
		lastSeenAt: new Date(s.lastSeenAt).toISOString(),
	};
}

export default SecurityService;
