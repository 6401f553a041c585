import Redis from "ioredis";
import { CONNECTION_TTL_SECONDS, LAST_SEEN_TTL_SECONDS, PresenceStore, type Connection } from "./base.store";

/**
 * Presence in Redis, shared by every node:
 *   <prefix>:session:<sessionId>  hash connectionId → connection (JSON), expiring;
 *   <prefix>:conn:<connectionId>  the connection's session, so a disconnect needs only its id;
 *   <prefix>:node:<nodeID>        set of the node's connection ids, to drop them when it leaves;
 *   <prefix>:seen:<userId>        last-seen time.
 */
export class RedisPresenceStore extends PresenceStore {
	private readonly redis: Redis;

	constructor(url: string, private readonly prefix: string) {
		super();
		this.redis = new Redis(url, { maxRetriesPerRequest: 2 });
	}

	async connect(c: Connection): Promise<void> {
		const json = JSON.stringify(c);
		await this.redis.multi()
			.hset(this.sessionKey(c.sessionId), c.connectionId, json).expire(this.sessionKey(c.sessionId), CONNECTION_TTL_SECONDS)
			.set(this.connKey(c.connectionId), c.sessionId, "EX", CONNECTION_TTL_SECONDS)
			.sadd(this.nodeKey(c.nodeID), c.connectionId).expire(this.nodeKey(c.nodeID), CONNECTION_TTL_SECONDS)
			.exec().then(checkExec);
	}

	async disconnect(connectionId: string): Promise<Connection | null> {
		const sessionId = await this.redis.get(this.connKey(connectionId));
		if (!sessionId) return null;
		const json = await this.redis.hget(this.sessionKey(sessionId), connectionId);
		const c = json ? (JSON.parse(json) as Connection) : null;
		const tx = this.redis.multi().del(this.connKey(connectionId)).hdel(this.sessionKey(sessionId), connectionId);
		if (c) tx.srem(this.nodeKey(c.nodeID), connectionId);
		await tx.exec().then(checkExec);
		return c;
	}

	async connections(sessionIds: string[]): Promise<Map<string, Connection[]>> {
		const out = new Map<string, Connection[]>();
		if (sessionIds.length === 0) return out;
		const pipeline = this.redis.pipeline();
		for (const id of sessionIds) pipeline.hvals(this.sessionKey(id));
		const results = (await pipeline.exec()) ?? [];
		results.forEach(([err, values], i) => {
			if (err) throw err;
			const list = (values as string[]).map(v => JSON.parse(v) as Connection);
			if (list.length) out.set(sessionIds[i], list);
		});
		return out;
	}

	async dropSessions(sessionIds: string[]): Promise<number> {
		const all = [...(await this.connections(sessionIds)).values()].flat();
		await this.forget(all, sessionIds);
		return all.length;
	}

	async dropNode(nodeID: string): Promise<number> {
		const ids = await this.redis.smembers(this.nodeKey(nodeID));
		const found: Connection[] = [];
		if (ids.length) {
			const sessions = await this.redis.mget(...ids.map(id => this.connKey(id)));
			const pipeline = this.redis.pipeline();
			ids.forEach((id, i) => pipeline.hget(this.sessionKey(sessions[i] ?? "-"), id));
			for (const [err, json] of (await pipeline.exec()) ?? []) {
				if (err) throw err;
				if (json) found.push(JSON.parse(json as string) as Connection);
			}
		}
		await this.forget(found, []);
		await this.redis.del(this.nodeKey(nodeID));
		return found.length;
	}

	async markSeen(userId: string, at: number): Promise<void> {
		// Only ever forward: two nodes reporting out of order must not move it back.
		const key = this.seenKey(userId);
		const current = Number((await this.redis.get(key)) ?? 0);
		if (at > current) await this.redis.set(key, String(at), "EX", LAST_SEEN_TTL_SECONDS);
	}

	async lastSeen(userIds: string[]): Promise<Map<string, number>> {
		if (userIds.length === 0) return new Map();
		const values = await this.redis.mget(...userIds.map(id => this.seenKey(id)));
		return new Map(userIds.flatMap((id, i) => (values[i] ? [[id, Number(values[i])] as [string, number]] : [])));
	}

	async close(): Promise<void> {
		await this.redis.quit().catch(() => this.redis.disconnect());
	}

	private async forget(connections: Connection[], sessionIds: string[]): Promise<void> {
		if (connections.length === 0 && sessionIds.length === 0) return;
		const tx = this.redis.multi();
		for (const c of connections) tx.del(this.connKey(c.connectionId)).hdel(this.sessionKey(c.sessionId), c.connectionId).srem(this.nodeKey(c.nodeID), c.connectionId);
		if (sessionIds.length) tx.del(...sessionIds.map(id => this.sessionKey(id)));
		await tx.exec().then(checkExec);
	}

	private sessionKey = (id: string) => `${this.prefix}:session:${id}`;
	private connKey = (id: string) => `${this.prefix}:conn:${id}`;
	private nodeKey = (id: string) => `${this.prefix}:node:${id}`;
	private seenKey = (id: string) => `${this.prefix}:seen:${id}`;
}

function checkExec(results: [Error | null, unknown][] | null): void {
	if (!results) throw new Error("Redis transaction aborted");
	for (const [err] of results) if (err) throw err;
}
