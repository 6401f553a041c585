/**
 * Rate limits shared through Redis: two gateway processes behind a (trusted) proxy count one
 * client's requests together, per client IP and per user.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { ClusterNode, request } from "../support/cluster";
import { ADMIN_PASSWORD } from "../support/org";
import { startS3 } from "../support/s3";
import { freePort, startNats, startRedis, testPostgres, type PostgresServer, type ServerProcess } from "../support/servers";

const PER_IP = 10;
const PER_USER = 6;

describe("rate limits across two gateway nodes with REDIS_URL", () => {
	let nats: ServerProcess & { url: string };
	let redis: ServerProcess & { url: string };
	let pg: PostgresServer & { owned: boolean };
	let s3: Awaited<ReturnType<typeof startS3>>;
	const nodes: ClusterNode[] = [];
	const urls: string[] = [];
	/** Two signed-in users: the platform administrator and a company's administrator. */
	const tokens: string[] = [];

	/** A JSON request from its own address (setup must not spend the budgets under test). */
	const post = async (path: string, body: unknown, from: string, token?: string) => {
		const res = await request(`${urls[0]}${path}`, { "Content-Type": "application/json", "X-Forwarded-For": from, ...(token ? { Authorization: `Bearer ${token}` } : {}) }, { method: "POST", body: JSON.stringify(body) });
		assert.equal(res.status, 200, `${path}: ${JSON.stringify(res.body)}`);
		return res.body as Record<string, unknown>;
	};

	before(async () => {
		[nats, redis, pg, s3] = await Promise.all([startNats(), startRedis(), testPostgres(), startS3()]);
		const env = {
			TRANSPORTER: nats.url,
			REDIS_URL: redis.url,
			...s3.env,
			DATABASE_URL: await pg.createDatabase("cluster_rate_limit"),
			NAMESPACE: `rl-${randomUUID().slice(0, 8)}`,
			TRUSTED_PROXIES: "loopback",
			RATE_LIMIT_PER_IP: String(PER_IP),
			RATE_LIMIT_PER_USER: String(PER_USER),
			RATE_LIMIT_WINDOW: "600",
			JWT_SECRET: randomUUID(),
			ADMIN_PASSWORD,
		};
		for (const name of ["gateway-1", "gateway-2"]) {
			const port = await freePort();
			urls.push(`http://127.0.0.1:${port}`);
			// Each gateway node also runs the platform and org groups (on PostgreSQL and Redis), so both can serve a user's request.
			nodes.push(new ClusterNode(name, { groups: ["gateway", "platform", "org"], env: { ...env, PORT: String(port), HOST: "127.0.0.1" } }));
		}
		nodes.forEach(n => n.start());
		// Each readiness probe from an address of its own: neither the limits under test nor a slow start exhaust a budget.
		let probe = 0;
		const from = () => `192.0.${2 + Math.floor(++probe / 250)}.${probe % 250}`;
		await Promise.all(nodes.map((n, i) => n.started(async () => (await request(`${urls[i]}/api/ready`, { "X-Forwarded-For": from() })).status === 200, "ready", 60_000)));
		const admin = await post("/api/auth/login", { username: "admin", password: ADMIN_PASSWORD }, "198.18.0.1");
		const code = `rl-${randomUUID().slice(0, 8)}`;
		await post("/api/companies", { name: "Rate limits", code, admin: { username: `${code}-admin`, password: "Company-admin-1", name: "A" } }, "198.18.0.2", admin.accessToken as string);
		const companyAdmin = await post("/api/auth/login", { username: `${code}-admin`, password: "Company-admin-1" }, "198.18.0.3");
		// The company's administrator has spent nothing of its budget; the platform administrator one request.
		tokens.push(companyAdmin.accessToken as string, admin.accessToken as string);
	});

	after(async () => {
		await Promise.all(nodes.map(n => n.stop()));
		await Promise.all([nats?.stop(), redis?.stop(), s3?.stop()]);
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
			const headers = { Authorization: `Bearer ${tokens[0]}`, "X-Forwarded-For": `198.51.100.${i + 1}` };
			statuses.push((await request(`${urls[i % 2]}/api/auth/me`, headers)).status);
		}
		assert.deepEqual(statuses, [...Array(PER_USER).fill(200), 429, 429]);
		const other = await request(`${urls[0]}/api/auth/me`, { Authorization: `Bearer ${tokens[1]}`, "X-Forwarded-For": "198.51.100.99" });
		assert.equal(other.status, 200, "another user is not limited");
	});
});
