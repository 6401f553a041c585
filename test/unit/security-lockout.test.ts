/** Login lockout, in memory and on a real redis-server shared by two limiters (two nodes). */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import Redis from "ioredis";
import { LoginLockout, type LockoutSettings } from "../../lib/security/lockout";
import { startRedis, type ServerProcess } from "../support/servers";

const SETTINGS: LockoutSettings = { maxFailures: 3, windowSeconds: 60, lockSeconds: 2 };

function contract(name: string, make: () => { a: LoginLockout; b: LoginLockout }) {
	describe(`${name} lockout`, () => {
		it("locks a key at the maximum of failures, for the lock time, and then lets it go", async () => {
			const { a, b } = make();
			const key = `user:${randomUUID()}`;
			assert.equal(await a.recordFailure([key]), 0);
			assert.equal(await b.recordFailure([key]), 0);
			assert.equal(await a.lockedFor([key]), 0);
			const locked = await b.recordFailure([key]);
			assert.ok(locked >= 1 && locked <= SETTINGS.lockSeconds, `locked for ${locked}`);
			assert.ok((await a.lockedFor([key])) >= 1, "every limiter sees the lock");
			assert.ok((await a.lockedFor(["ip:elsewhere", key])) >= 1, "any locked key locks the attempt");
			await new Promise(resolve => setTimeout(resolve, SETTINGS.lockSeconds * 1000 + 200));
			assert.equal(await a.lockedFor([key]), 0);
		});

		it("counts per key, and forgets a key's failures when cleared", async () => {
			const { a } = make();
			const user = `user:${randomUUID()}`;
			const other = `user:${randomUUID()}`;
			await a.recordFailure([user]);
			await a.recordFailure([user]);
			await a.clear(user);
			await a.recordFailure([user]);
			await a.recordFailure([other]);
			assert.equal(await a.lockedFor([user, other]), 0);
			assert.ok((await a.recordFailure([user])) === 0);
			assert.ok((await a.recordFailure([user])) > 0);
			assert.equal(await a.lockedFor([other]), 0);
		});
	});
}

const memory = new LoginLockout(SETTINGS, null, "memory");
contract("memory", () => ({ a: memory, b: memory }));

describe("redis-backed lockout", () => {
	let server: ServerProcess & { url: string };
	const clients: Redis[] = [];
	const prefix = `lockout-${randomUUID()}`;
	before(async () => {
		server = await startRedis();
		clients.push(new Redis(server.url), new Redis(server.url));
		await Promise.all(clients.map(c => c.ping()));
	});
	after(async () => {
		clients.forEach(c => c.disconnect());
		await server.stop();
	});

	contract("redis", () => ({ a: new LoginLockout(SETTINGS, clients[0], prefix), b: new LoginLockout(SETTINGS, clients[1], prefix) }));
});
