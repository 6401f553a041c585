import { SPENT_KEPT, SessionStore, matches, sessionExpiry, type RotateResult, type Session, type SessionFilter, type SessionLimits } from "./base.store";

/** How often expired sessions are swept out of memory. */
const SWEEP_MS = 60_000;

/**
 * Sessions in this process's memory: the embedded mode, or a cluster with a single `security`
 * node. Every operation is synchronous under the hood, so rotation is atomic by construction.
 */
export class MemorySessionStore extends SessionStore {
	private readonly sessions = new Map<string, Session>();
	private readonly sweeper: NodeJS.Timeout;

	constructor() {
		super();
		this.sweeper = setInterval(() => this.sweep(Date.now()), SWEEP_MS);
		this.sweeper.unref();
	}

	async create(session: Session, _limits: SessionLimits): Promise<void> {
		this.sessions.set(session.id, copy(session));
	}

	async get(id: string): Promise<Session | null> {
		const session = this.live(id, Date.now());
		return session ? copy(session) : null;
	}

	async rotate(id: string, presentedHash: string, nextHash: string, now: number, limits: SessionLimits): Promise<RotateResult> {
		const session = this.live(id, now);
		if (!session) return { outcome: "unknown" };
		if (session.refreshHash === presentedHash) {
			session.spentHashes = [presentedHash, ...session.spentHashes].slice(0, SPENT_KEPT);
			session.refreshHash = nextHash;
			session.lastSeenAt = now;
			session.expiresAt = sessionExpiry(session.createdAt, now, limits);
			return { outcome: "rotated", session: copy(session) };
		}
		if (session.spentHashes.includes(presentedHash)) return { outcome: "reused", session: copy(session) };
		return { outcome: "unknown" };
	}

	async touch(id: string, now: number): Promise<void> {
		const session = this.live(id, now);
		if (session) session.lastSeenAt = Math.max(session.lastSeenAt, now);
	}

	async list(filter: SessionFilter): Promise<Session[]> {
		const now = Date.now();
		return [...this.sessions.values()].filter(s => s.expiresAt > now && matches(s, filter)).map(copy);
	}

	async remove(ids: string[]): Promise<Session[]> {
		const removed: Session[] = [];
		const now = Date.now();
		for (const id of new Set(ids)) {
			const session = this.live(id, now);
			this.sessions.delete(id);
			if (session) removed.push(session);
		}
		return removed;
	}

	async close(): Promise<void> {
		clearInterval(this.sweeper);
		this.sessions.clear();
	}

	private live(id: string, now: number): Session | null {
		const session = this.sessions.get(id);
		if (!session) return null;
		if (session.expiresAt <= now) {
			this.sessions.delete(id);
			return null;
		}
		return session;
	}

	private sweep(now: number): void {
		for (const [id, session] of this.sessions) if (session.expiresAt <= now) this.sessions.delete(id);
	}
}

/** Callers get copies: a session changes only through the store. */
function copy(session: Session): Session {
	return { ...session, spentHashes: [...session.spentHashes] };
}
