import { createHash } from "node:crypto";
import NodeCache from "node-cache";
import type { AuthenticatedUser } from "../types/access";

/** Changes to these services' records can change what a signed-in user may do. */
const ACCESS_SERVICES = ["user", "role", "auth", "dept", "company", "license"];

/** True for the `cache.clean.<service>` events after which a resolved principal may be out of date. */
export function changesAccess(eventName: string): boolean {
	return eventName.startsWith("cache.clean.") && ACCESS_SERVICES.includes(eventName.slice("cache.clean.".length));
}

/**
 * The gateway's per-node cache of resolved tokens: a request with a known token is authorised
 * without a call to `security`. Entries live `ttlSeconds` at most and go at once when the
 * events say so (a revoked session, a changed user, role, grant, department, company or
 * licence), on every gateway node: those events are broadcast.
 */
export class PrincipalCache {
	private readonly cache: NodeCache;

	constructor(private readonly ttlSeconds: number, maxEntries = 100_000) {
		this.cache = new NodeCache({ stdTTL: ttlSeconds, checkperiod: Math.max(1, Math.ceil(ttlSeconds / 2)), useClones: false, maxKeys: maxEntries });
	}

	/** Tokens are keyed by their hash: the cache never holds a usable token. */
	private key(token: string) {
		return createHash("sha256").update(token).digest("base64url");
	}

	get(token: string): AuthenticatedUser | undefined {
		return this.cache.get<AuthenticatedUser>(this.key(token));
	}

	/** Keeps the entry no longer than the token is valid. */
	set(token: string, user: AuthenticatedUser): void {
		const left = user.tokenExpiresAt ? Math.floor((user.tokenExpiresAt - Date.now()) / 1000) : this.ttlSeconds;
		if (left <= 0) return;
		try {
			this.cache.set(this.key(token), user, Math.min(left, this.ttlSeconds));
		} catch {
			// Full (maxKeys): this request goes uncached.
		}
	}

	/** Drops the entries of these sessions. */
	forgetSessions(sessionIds: string[]): void {
		if (sessionIds.length === 0) return;
		const ids = new Set(sessionIds);
		for (const key of this.cache.keys()) {
			const user = this.cache.get<AuthenticatedUser>(key);
			if (user?.sessionId && ids.has(user.sessionId)) this.cache.del(key);
		}
	}

	/** Drops the entries of a user, or of a company's users. */
	forgetWhere(match: (user: AuthenticatedUser) => boolean): void {
		for (const key of this.cache.keys()) {
			const user = this.cache.get<AuthenticatedUser>(key);
			if (user && match(user)) this.cache.del(key);
		}
	}

	flush(): void {
		this.cache.flushAll();
	}

	close(): void {
		this.cache.close();
	}
}
