import Redis from "ioredis";
import { SPENT_KEPT, SessionStore, matches, type RotateResult, type Session, type SessionFilter, type SessionLimits } from "./base.store";

/**
 * Rotation as one Lua script, so that it is a compare-and-set inside Redis: of two nodes
 * presenting the same refresh token at once, exactly one sees it current.
 * KEYS[1] session; ARGV presented hash, next hash, now, idle ms, max age ms, spent kept.
 * Answers { outcome, field, value, … } (the session's hash after the operation).
 */
const ROTATE = `
local s = redis.call('HMGET', KEYS[1], 'refreshHash', 'spent', 'createdAt')
if not s[1] then return {'unknown'} end
if s[1] == ARGV[1] then
	local spent = ARGV[1]
	local kept = 1
	if s[2] and s[2] ~= '' then
		for h in string.gmatch(s[2], '[^,]+') do
			if kept >= tonumber(ARGV[6]) then break end
			spent = spent .. ',' .. h
			kept = kept + 1
		end
	end
	local now = tonumber(ARGV[3])
	local expiresAt = string.format('%d', math.min(now + tonumber(ARGV[4]), tonumber(s[3]) + tonumber(ARGV[5])))
	redis.call('HSET', KEYS[1], 'refreshHash', ARGV[2], 'spent', spent, 'lastSeenAt', ARGV[3], 'expiresAt', expiresAt)
	redis.call('PEXPIREAT', KEYS[1], expiresAt)
	local out = {'rotated'}
	for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, v) end
	return out
end
if s[2] then
	for h in string.gmatch(s[2], '[^,]+') do
		if h == ARGV[1] then
			local out = {'reused'}
			for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(out, v) end
			return out
		end
	end
end
return {'unknown'}
`;

/** Records activity only on a session that still exists (a plain HSET would revive an expired one without a TTL). */
const TOUCH = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seen = tonumber(redis.call('HGET', KEYS[1], 'lastSeenAt') or '0')
if tonumber(ARGV[1]) > seen then redis.call('HSET', KEYS[1], 'lastSeenAt', ARGV[1]) end
return 1
`;

type SessionRedis = Redis & {
	rotateSession(key: string, ...args: (string | number)[]): Promise<string[]>;
	touchSession(key: string, now: number): Promise<number>;
};

/**
 * Sessions in Redis, shared by every node that runs `security`: a revocation on one node is
 * seen by the next token check on any node. A session is a hash that expires on its own
 * (PEXPIREAT); sets index it by user, by company and overall, and lose the ids of expired
 * sessions lazily, when listed.
 */
export class RedisSessionStore extends SessionStore {
	private readonly redis: SessionRedis;

	constructor(url: string, private readonly prefix: string) {
		super();
		this.redis = new Redis(url, { maxRetriesPerRequest: 2 }) as SessionRedis;
		this.redis.defineCommand("rotateSession", { numberOfKeys: 1, lua: ROTATE });
		this.redis.defineCommand("touchSession", { numberOfKeys: 1, lua: TOUCH });
	}

	async create(session: Session, limits: SessionLimits): Promise<void> {
		const key = this.sessionKey(session.id);
		const tx = this.redis.multi().hset(key, encode(session)).pexpireat(key, session.expiresAt);
		// No session in an index can outlive the newest one's absolute limit, which starts now.
		const indexTtl = limits.maxAgeSeconds + 60;
		for (const index of this.indexesOf(session)) tx.sadd(index, session.id).expire(index, indexTtl);
		await tx.exec().then(checkExec);
	}

	async get(id: string): Promise<Session | null> {
		return decode(await this.redis.hgetall(this.sessionKey(id)));
	}

	async rotate(id: string, presentedHash: string, nextHash: string, now: number, limits: SessionLimits): Promise<RotateResult> {
		const [outcome, ...flat] = await this.redis.rotateSession(
			this.sessionKey(id), presentedHash, nextHash, now, limits.idleSeconds * 1000, limits.maxAgeSeconds * 1000, SPENT_KEPT,
		);
		const session = decode(pairs(flat));
		if ((outcome === "rotated" || outcome === "reused") && session) return { outcome, session };
		return { outcome: "unknown" };
	}

	async touch(id: string, now: number): Promise<void> {
		await this.redis.touchSession(this.sessionKey(id), now);
	}

	async list(filter: SessionFilter): Promise<Session[]> {
		const index =
			filter.userId !== undefined ? this.userKey(filter.userId)
				: filter.companyId !== undefined ? this.companyKey(filter.companyId)
					: this.allKey();
		const ids = await this.redis.smembers(index);
		const found = await this.readAll(ids);
		const gone = ids.filter((_, i) => !found[i]);
		if (gone.length) await this.redis.srem(index, ...gone);
		return found.filter((s): s is Session => s !== null && matches(s, filter));
	}

	async remove(ids: string[]): Promise<Session[]> {
		const unique = [...new Set(ids)];
		if (unique.length === 0) return [];
		const found = (await this.readAll(unique)).filter((s): s is Session => s !== null);
		const tx = this.redis.multi().del(...unique.map(id => this.sessionKey(id)));
		for (const session of found) for (const index of this.indexesOf(session)) tx.srem(index, session.id);
		await tx.exec().then(checkExec);
		return found;
	}

	async close(): Promise<void> {
		await this.redis.quit().catch(() => this.redis.disconnect());
	}

	private async readAll(ids: string[]): Promise<(Session | null)[]> {
		if (ids.length === 0) return [];
		const pipeline = this.redis.pipeline();
		for (const id of ids) pipeline.hgetall(this.sessionKey(id));
		const results = (await pipeline.exec()) ?? [];
		return results.map(([err, value]) => {
			if (err) throw err;
			return decode(value as Record<string, string>);
		});
	}

	private indexesOf(session: Session): string[] {
		return [this.allKey(), this.userKey(session.userId), this.companyKey(session.companyId)];
	}

	private sessionKey = (id: string) => `${this.prefix}:session:${id}`;
	private userKey = (userId: string) => `${this.prefix}:user:${userId}`;
	/** The platform administrator's sessions (no company) have their own index. */
	private companyKey = (companyId: string | null) => `${this.prefix}:company:${companyId ?? "-"}`;
	private allKey = () => `${this.prefix}:all`;
}

function checkExec(results: [Error | null, unknown][] | null): void {
	if (!results) throw new Error("Redis transaction aborted");
	for (const [err] of results) if (err) throw err;
}

function pairs(flat: string[]): Record<string, string> {
	const out: Record<string, string> = {};
	for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]] = flat[i + 1];
	return out;
}

function encode(s: Session): Record<string, string> {
	return {
		id: s.id,
		userId: s.userId,
		username: s.username,
		companyId: s.companyId ?? "",
		deptId: s.deptId ?? "",
		device: s.device,
		ip: s.ip,
		createdAt: String(s.createdAt),
		lastSeenAt: String(s.lastSeenAt),
		expiresAt: String(s.expiresAt),
		refreshHash: s.refreshHash,
		// base64url hashes never contain a comma.
		spent: s.spentHashes.join(","),
	};
}

function decode(h: Record<string, string> | null | undefined): Session | null {
	if (!h || !h.id || !h.refreshHash) return null;
	return {
		id: h.id,
		userId: h.userId,
		username: h.username,
		companyId: h.companyId || null,
		deptId: h.deptId || null,
		device: h.device,
		ip: h.ip,
		createdAt: Number(h.createdAt),
		lastSeenAt: Number(h.lastSeenAt),
		expiresAt: Number(h.expiresAt),
		refreshHash: h.refreshHash,
		spentHashes: h.spent ? h.spent.split(",") : [],
	};
}
