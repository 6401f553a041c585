import { CONNECTION_TTL_SECONDS, PresenceStore, type Connection } from "./base.store";

/** Presence in this process's memory: the embedded mode. */
export class MemoryPresenceStore extends PresenceStore {
	private readonly byId = new Map<string, Connection & { expiresAt: number }>();
	private readonly seen = new Map<string, number>();

	async connect(connection: Connection): Promise<void> {
		this.byId.set(connection.connectionId, { ...connection, expiresAt: Date.now() + CONNECTION_TTL_SECONDS * 1000 });
	}

	async disconnect(connectionId: string): Promise<Connection | null> {
		const found = this.live(connectionId);
		this.byId.delete(connectionId);
		return found ? strip(found) : null;
	}

	async connections(sessionIds: string[]): Promise<Map<string, Connection[]>> {
		const wanted = new Set(sessionIds);
		const out = new Map<string, Connection[]>();
		for (const id of [...this.byId.keys()]) {
			const c = this.live(id);
			if (!c || !wanted.has(c.sessionId)) continue;
			out.set(c.sessionId, [...(out.get(c.sessionId) ?? []), strip(c)]);
		}
		return out;
	}

	async dropSessions(sessionIds: string[]): Promise<number> {
		const ids = new Set(sessionIds);
		return this.dropWhere(c => ids.has(c.sessionId));
	}

	async dropNode(nodeID: string): Promise<number> {
		return this.dropWhere(c => c.nodeID === nodeID);
	}

	async markSeen(userId: string, at: number): Promise<void> {
		this.seen.set(userId, Math.max(this.seen.get(userId) ?? 0, at));
	}

	async lastSeen(userIds: string[]): Promise<Map<string, number>> {
		return new Map(userIds.filter(id => this.seen.has(id)).map(id => [id, this.seen.get(id)!]));
	}

	async close(): Promise<void> {
		this.byId.clear();
		this.seen.clear();
	}

	private dropWhere(test: (c: Connection) => boolean): number {
		let dropped = 0;
		for (const [id, c] of this.byId) {
			if (!test(c)) continue;
			this.byId.delete(id);
			dropped++;
		}
		return dropped;
	}

	private live(connectionId: string) {
		const c = this.byId.get(connectionId);
		if (c && c.expiresAt <= Date.now()) {
			this.byId.delete(connectionId);
			return null;
		}
		return c ?? null;
	}
}

function strip(c: Connection & { expiresAt?: number }): Connection {
	return { connectionId: c.connectionId, sessionId: c.sessionId, userId: c.userId, channel: c.channel, nodeID: c.nodeID, since: c.since };
}
