/**
 * Server-side sessions: what a refresh token is bound to, and what an access token must still
 * name to be accepted. Two stores with one contract, picked like Moleculer picks a cacher:
 * memory (one node) and Redis (shared by every node that runs `security`).
 */

export interface Session {
	id: string;
	userId: string;
	username: string;
	/** null for the platform administrator. */
	companyId: string | null;
	deptId: string | null;
	device: string;
	ip: string;
	/** Epoch milliseconds. */
	createdAt: number;
	lastSeenAt: number;
	/** When the session ends unless refreshed first (idle limit, capped by the absolute limit). */
	expiresAt: number;
	/** sha256 of the current refresh token. */
	refreshHash: string;
	/** sha256 of the last spent refresh tokens, newest first: presenting one is a theft signal. */
	spentHashes: string[];
}

/** How long sessions live. Passed on each write, so a configuration change applies at once. */
export interface SessionLimits {
	/** A session not refreshed for this long ends. */
	idleSeconds: number;
	/** A session ends this long after login, however often it is refreshed. */
	maxAgeSeconds: number;
}

/**
 * What presenting a refresh token did:
 *   - `rotated`: it was the current one; the session now holds `nextHash` (the answer carries it);
 *   - `reused`: it was already spent: someone else holds a copy, the caller must revoke the session;
 *   - `unknown`: no such session (expired, revoked) or a token it never issued.
 */
export type RotateResult =
	| { outcome: "rotated"; session: Session }
	| { outcome: "reused"; session: Session }
	| { outcome: "unknown" };

/** Spent refresh hashes a session remembers. */
export const SPENT_KEPT = 20;

export function sessionExpiry(createdAt: number, now: number, limits: SessionLimits): number {
	return Math.min(now + limits.idleSeconds * 1000, createdAt + limits.maxAgeSeconds * 1000);
}

export interface SessionFilter {
	userId?: string;
	/** A company's sessions; `null` = the platform administrator's (sessions of no company). */
	companyId?: string | null;
}

export abstract class SessionStore {
	/** Stores a new session; its `expiresAt` is already set by the caller. */
	abstract create(session: Session, limits: SessionLimits): Promise<void>;

	/** The live session, or null when it never existed, expired or was revoked. */
	abstract get(id: string): Promise<Session | null>;

	/**
	 * Compare-and-set of the refresh token: only the holder of the current token moves the
	 * session on; of two racing refreshes with the same token one rotates, the other is `reused`.
	 */
	abstract rotate(id: string, presentedHash: string, nextHash: string, now: number, limits: SessionLimits): Promise<RotateResult>;

	/** Records activity (does not extend the session: only a refresh does). */
	abstract touch(id: string, now: number): Promise<void>;

	/** Live sessions matching the filter (every live session when it is empty). */
	abstract list(filter: SessionFilter): Promise<Session[]>;

	/** Deletes the sessions; answers the ones that existed. */
	abstract remove(ids: string[]): Promise<Session[]>;

	abstract close(): Promise<void>;
}

/** Whether `session` matches `filter` (shared by the stores' list implementations). */
export function matches(session: Session, filter: SessionFilter): boolean {
	if (filter.userId !== undefined && session.userId !== filter.userId) return false;
	if (filter.companyId !== undefined && session.companyId !== filter.companyId) return false;
	return true;
}
