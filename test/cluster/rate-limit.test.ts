/**
 * Rate limits shared through Redis: two gateway processes behind a (trusted) proxy count one
 * client's requests together, per client IP and per user.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { ClusterNode, request, SECURITY_STUB } from "../support/cluster";
import { bearer } from "../support/security.stub";
import { freePort, startNats, startRedis, testPostgres, type PostgresServer, type ServerProcess } from "../support/servers";

const PER_IP = 10;
const PER_USER = 6;

describe("rate limits across two gateway nodes with REDIS_URL", () => {
	let nats: ServerProcess & { url: string };
	let redis: ServerProcess & { url: string };
	let pg: PostgresServer & { owned: boolean };
	const nodes: ClusterNode[] = [];
	const urls: string[] = [];

	before(async () => {
		[nats, redis, pg] = await Promise.all([startNats(), startRedis(), testPostgres()]);
		const env = {
			TRANSPORTER: nats.url,
			REDIS_URL: redis.url,
			DATABASE_URL: await pg.createDatabase("cluster_rate_limit"),
			NAMESPACE: `rl-${randomUUID().slice(0, 8)}`,
			TRUSTED_PROXIES: "loopback",
			RATE_LIMIT_PER_IP: String(PER_IP),
			RATE_LIMIT_PER_USER: String(PER_USER),
			RATE_LIMIT_WINDOW: "600",
		};
		for (const name of ["gateway-1", "gateway-2"]) {
			const port = await freePort();
			urls.push(`http://127.0.0.1:${port}`);
			// Each gateway node also runs the platform group (config on PostgreSQL), so both can serve a user's request.
			nodes.push(new ClusterNode(name, { groups: ["gateway", "platform", SECURITY_STUB], env: { ...env, PORT: String(port), HOST: "127.0.0.1" } }));
		}
		nodes.forEach(n => n.start());
		await Promise.all(nodes.map((n, i) => n.started(async () => (await request(`${urls[i]}/api/ready`)).status === 200, "ready")));
	});

	after(async () => {
		await Promise.all(nodes.map(n => n.stop()));
		await Promise.all([nats?.stop(), redis?.stop()]);
		if (pg?.owned) await pg.stop();
	});

	it("counts one client IP's requests on both nodes together", async () => {
		const from = { "X-Forwarded-For": "203.0.113.7" };
		const statuses: number[] = [];
		for (let i = 0; i < PER_IP + 2; i++) statuses.push((await request(`${urls[i % 2]}/api/health`, from)).status);
		assert.deepEqual(statuses, [...Array(PER_IP).fill(200), 429, 429]);

		const refused = await request(`${urls[0]}/api/health`, from);
		assert.equal(refused.status, 429);
		assert.equal((refused.body as { type: string }).type, "RATE_LIMITED");
		assert.ok(Number(refused.headers.get("retry-after")) > 0, "Retry-After says when to come back");
		assert.equal((await request(`${urls[1]}/api/health`, { "X-Forwarded-For": "203.0.113.8" })).status, 200, "another client is not limited");
	});

	it("counts one user's requests on both nodes together, whichever address they come from", async () => {
		const statuses: number[] = [];
		for (let i = 0; i < PER_USER + 2; i++) {
			// A new address each time: only the per-user limit can stop these.
			const headers = { ...bearer("reader-token"), "X-Forwarded-For": `198.51.100.${i + 1}` };
			statuses.push((await request(`${urls[i % 2]}/api/config/limits`, headers)).status);
		}
		assert.deepEqual(statuses, [...Array(PER_USER).fill(200), 429, 429]);
		const other = await request(`${urls[0]}/api/config/limits`, { ...bearer("other-reader-token"), "X-Forwarded-For": "198.51.100.99" });
		assert.equal(other.status, 200, "another user is not limited");
	});
});
