/**
 * The session stores' contract, run against the memory store and a real redis-server: the same
 * suite for both, so that the embedded mode and a cluster behave alike.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { MemorySessionStore, RedisSessionStore, sessionExpiry, SPENT_KEPT, type Session, type SessionLimits, type SessionStore } from "../../lib/security/sessions";
import { hashRefreshToken, newRefreshToken, refreshTokenSession } from "../../lib/security/tokens";
import { startRedis, type ServerProcess } from "../support/servers";

const LIMITS: SessionLimits = { idleSeconds: 3600, maxAgeSeconds: 7200 };

function newSession(over: Partial<Session> = {}): { session: Session; token: string } {
	const id = randomUUID();
	const { token, hash } = newRefreshToken(id);
	const now = Date.now();
	const session: Session = {
		id, userId: "u1", username: "alice", companyId: "c1", deptId: "d1", device: "test", ip: "10.0.0.1",
		createdAt: now, lastSeenAt: now, expiresAt: sessionExpiry(now, now, LIMITS), refreshHash: hash, spentHashes: [],
		...over,
	};
	return { session, token };
}

function contract(name: string, open: () => Promise<SessionStore>) {
	describe(`${name} session store`, () => {
		let store: SessionStore;
		before(async () => {
			store = await open();
		});
		after(() => store.close());

		it("stores a session and reads it back, with null company and department kept as null", async () => {
			const { session } = newSession({ companyId: null, deptId: null, userId: `admin-${randomUUID()}` });
			await store.create(session, LIMITS);
			assert.deepEqual(await store.get(session.id), session);
			assert.equal(await store.get(randomUUID()), null);
		});

		it("rotates with the current token only; a spent one is reuse, a foreign one unknown", async () => {
			const { session, token } = newSession();
			await store.create(session, LIMITS);
			const next = newRefreshToken(session.id);
			const rotated = await store.rotate(session.id, hashRefreshToken(token), next.hash, Date.now() + 1000, LIMITS);
			assert.equal(rotated.outcome, "rotated");
			assert.equal(rotated.outcome === "rotated" && rotated.session.refreshHash, next.hash);
			assert.deepEqual(rotated.outcome === "rotated" && rotated.session.spentHashes, [hashRefreshToken(token)]);

			const again = await store.rotate(session.id, hashRefreshToken(token), newRefreshToken(session.id).hash, Date.now(), LIMITS);
			assert.equal(again.outcome, "reused");
			assert.equal((await store.get(session.id))?.refreshHash, next.hash, "a reuse changes nothing by itself");

			const foreign = await store.rotate(session.id, newRefreshToken(session.id).hash, newRefreshToken(session.id).hash, Date.now(), LIMITS);
			assert.equal(foreign.outcome, "unknown");
			const missing = await store.rotate(randomUUID(), next.hash, newRefreshToken(session.id).hash, Date.now(), LIMITS);
			assert.equal(missing.outcome, "unknown");
		});

		it("lets exactly one of many racing refreshes with the same token win", async () => {
			const { session, token } = newSession();
			await store.create(session, LIMITS);
			const presented = hashRefreshToken(token);
			const results = await Promise.all(
				Array.from({ length: 10 }, () => store.rotate(session.id, presented, newRefreshToken(session.id).hash, Date.now(), LIMITS)),
			);
			assert.equal(results.filter(r => r.outcome === "rotated").length, 1);
			assert.equal(results.filter(r => r.outcome === "reused").length, 9);
		});

		it("remembers only the last spent tokens", async () => {
			const { session, token } = newSession();
			await store.create(session, LIMITS);
			const tokens = [token];
			for (let i = 0; i < SPENT_KEPT + 3; i++) {
				const next = newRefreshToken(session.id);
				const r = await store.rotate(session.id, hashRefreshToken(tokens.at(-1)!), next.hash, Date.now(), LIMITS);
				assert.equal(r.outcome, "rotated");
				tokens.push(next.token);
			}
			const stored = (await store.get(session.id))!;
			assert.equal(stored.spentHashes.length, SPENT_KEPT);
			assert.equal(stored.spentHashes[0], hashRefreshToken(tokens.at(-2)!), "newest first");
			const oldestKept = tokens[tokens.length - 1 - SPENT_KEPT];
			const forgotten = tokens[tokens.length - 2 - SPENT_KEPT];
			assert.equal((await store.rotate(session.id, hashRefreshToken(oldestKept), "x", Date.now(), LIMITS)).outcome, "reused");
			assert.equal((await store.rotate(session.id, hashRefreshToken(forgotten), "x", Date.now(), LIMITS)).outcome, "unknown");
		});

		it("extends a session on refresh up to its absolute limit, and forgets it once expired", async () => {
			const createdAt = Date.now() - 7000 * 1000;
			const { session, token } = newSession({ createdAt, expiresAt: Date.now() + 60_000 });
			await store.create(session, LIMITS);
			const now = Date.now();
			const r = await store.rotate(session.id, hashRefreshToken(token), "next", now, LIMITS);
			assert.equal(r.outcome === "rotated" && r.session.expiresAt, createdAt + LIMITS.maxAgeSeconds * 1000);

			const { session: old } = newSession({ expiresAt: Date.now() + 300 });
			await store.create(old, LIMITS);
			assert.ok(await store.get(old.id));
			await new Promise(resolve => setTimeout(resolve, 600));
			assert.equal(await store.get(old.id), null);
			assert.equal((await store.list({ userId: old.userId })).some(s => s.id === old.id), false);
		});

		it("records activity without moving it back", async () => {
			const { session } = newSession();
			await store.create(session, LIMITS);
			await store.touch(session.id, session.lastSeenAt + 5000);
			await store.touch(session.id, session.lastSeenAt + 1000);
			assert.equal((await store.get(session.id))?.lastSeenAt, session.lastSeenAt + 5000);
			await store.touch(randomUUID(), Date.now());
			assert.equal(await store.get(randomUUID()), null, "touching a missing session creates nothing");
		});

		it("lists by user, by company (null = the platform administrator's) and overall, and removes", async () => {
			const userId = `u-${randomUUID()}`;
			const companyId = `c-${randomUUID()}`;
			const a = newSession({ userId, companyId }).session;
			const b = newSession({ userId, companyId }).session;
			const c = newSession({ userId: `other-${randomUUID()}`, companyId }).session;
			const admin = newSession({ userId: `admin-${randomUUID()}`, companyId: null }).session;
			for (const s of [a, b, c, admin]) await store.create(s, LIMITS);

			const ids = (list: Session[]) => list.map(s => s.id).sort();
			assert.deepEqual(ids(await store.list({ userId })), [a.id, b.id].sort());
			assert.deepEqual(ids(await store.list({ companyId })), [a.id, b.id, c.id].sort());
			assert.deepEqual(ids(await store.list({ companyId, userId: c.userId })), [c.id]);
			assert.ok((await store.list({ companyId: null })).some(s => s.id === admin.id));
			assert.equal((await store.list({ companyId: null })).some(s => s.companyId !== null), false);
			const all = ids(await store.list({}));
			for (const s of [a, b, c, admin]) assert.ok(all.includes(s.id));

			const removed = await store.remove([a.id, admin.id, randomUUID()]);
			assert.deepEqual(ids(removed), [a.id, admin.id].sort());
			assert.equal(await store.get(a.id), null);
			assert.deepEqual(ids(await store.list({ userId })), [b.id]);
			assert.equal((await store.rotate(a.id, a.refreshHash, "x", Date.now(), LIMITS)).outcome, "unknown");
			assert.deepEqual(await store.remove([]), []);
		});
	});
}

contract("memory", async () => new MemorySessionStore());

describe("redis-backed sessions", () => {
	let redis: ServerProcess & { url: string };
	before(async () => {
		redis = await startRedis();
	});
	after(() => redis.stop());

	contract("redis", async () => new RedisSessionStore(redis.url, `test-${randomUUID()}`));

	it("shares sessions between two store instances (two nodes)", async () => {
		const prefix = `shared-${randomUUID()}`;
		const one = new RedisSessionStore(redis.url, prefix);
		const two = new RedisSessionStore(redis.url, prefix);
		try {
			const { session, token } = newSession();
			await one.create(session, LIMITS);
			assert.equal((await two.rotate(session.id, hashRefreshToken(token), "next", Date.now(), LIMITS)).outcome, "rotated");
			assert.equal((await one.rotate(session.id, hashRefreshToken(token), "other", Date.now(), LIMITS)).outcome, "reused");
			await two.remove([session.id]);
			assert.equal(await one.get(session.id), null);
		} finally {
			await Promise.all([one.close(), two.close()]);
		}
	});
});

describe("refresh tokens", () => {
	it("name their session and are otherwise opaque", () => {
		const id = randomUUID();
		const { token, hash } = newRefreshToken(id);
		assert.equal(refreshTokenSession(token), id);
		assert.equal(hashRefreshToken(token), hash);
		assert.notEqual(newRefreshToken(id).token, token);
		for (const bad of ["", "abc", `${id}.short`, `${id}.${"a".repeat(43)}x`, `../x.${"a".repeat(43)}`]) assert.equal(refreshTokenSession(bad), null, bad);
	});
});
