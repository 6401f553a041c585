/** The presence stores' contract, on memory and on a real redis-server (two instances = two nodes). */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { MemoryPresenceStore, RedisPresenceStore, type Connection, type PresenceStore } from "../../lib/presence";
import { startRedis, type ServerProcess } from "../support/servers";

const conn = (over: Partial<Connection> = {}): Connection => ({
	connectionId: randomUUID(), sessionId: randomUUID(), userId: "u1", channel: "websocket", nodeID: "node-1", since: Date.now(), ...over,
});

function contract(name: string, open: () => { a: PresenceStore; b: PresenceStore }) {
	describe(`${name} presence store`, () => {
		let a: PresenceStore;
		let b: PresenceStore;
		before(() => ({ a, b } = open()));
		after(async () => {
			await a.close();
			if (b !== a) await b.close();
		});

		it("keeps connections per session, seen from every instance, and forgets one on disconnect", async () => {
			const ws = conn();
			const tcp = conn({ sessionId: ws.sessionId, channel: "tcp", nodeID: "node-2" });
			const lone = conn();
			for (const c of [ws, tcp, lone]) await a.connect(c);
			const found = await b.connections([ws.sessionId, lone.sessionId, randomUUID()]);
			assert.equal(found.size, 2);
			assert.deepEqual(found.get(ws.sessionId)!.map(c => c.connectionId).sort(), [ws.connectionId, tcp.connectionId].sort());
			assert.deepEqual(found.get(lone.sessionId), [lone]);

			assert.deepEqual(await b.disconnect(ws.connectionId), ws);
			assert.equal(await a.disconnect(ws.connectionId), null);
			assert.deepEqual((await a.connections([ws.sessionId])).get(ws.sessionId), [tcp]);
		});

		it("drops the connections of revoked sessions and of a node that left", async () => {
			const s1 = conn({ nodeID: "n-x" });
			const s1b = conn({ sessionId: s1.sessionId, nodeID: "n-y" });
			const s2 = conn({ nodeID: "n-x" });
			const s3 = conn({ nodeID: "n-y" });
			for (const c of [s1, s1b, s2, s3]) await a.connect(c);
			assert.equal(await b.dropSessions([s1.sessionId]), 2);
			assert.equal((await a.connections([s1.sessionId])).size, 0);
			assert.equal(await b.dropNode("n-x"), 1, "s1 was already gone; s2 goes");
			const left = await a.connections([s2.sessionId, s3.sessionId]);
			assert.deepEqual([...left.keys()], [s3.sessionId]);
			assert.equal(await a.disconnect(s2.connectionId), null);
			assert.equal(await b.dropNode("n-none"), 0);
		});

		it("keeps the latest last-seen time per user", async () => {
			const user = randomUUID();
			await a.markSeen(user, 2000);
			await b.markSeen(user, 1000);
			assert.deepEqual(await b.lastSeen([user, randomUUID()]), new Map([[user, 2000]]));
			assert.deepEqual(await a.lastSeen([]), new Map());
		});
	});
}

const memory = new MemoryPresenceStore();
contract("memory", () => ({ a: memory, b: memory }));

describe("redis-backed presence", () => {
	let redis: ServerProcess & { url: string };
	before(async () => {
		redis = await startRedis();
	});
	after(() => redis.stop());
	const prefix = `presence-${randomUUID()}`;
	contract("redis", () => ({ a: new RedisPresenceStore(redis.url, prefix), b: new RedisPresenceStore(redis.url, prefix) }));
});
