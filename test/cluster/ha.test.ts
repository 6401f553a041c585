/**
 * Proof of HA with real processes: a nats-server, PostgreSQL as the shared store, Redis for the
 * sessions, an S3 server for file chunks, two nodes of the stateful `platform` and `org` groups and a gateway node in front, all
 * started by scripts/node.sh.
 *
 * - One platform node is SIGKILLed while clients load the gateway: no client request fails
 *   (`config.get` is idempotent, so a call lost with the dead node times out and is retried on
 *   the other one), and the node gets traffic again once it is restarted.
 * - nats-server is killed for a few seconds: every node reconnects by itself and requests
 *   succeed again.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import { createTestBroker } from "../support/broker";
import { ClusterNode, request } from "../support/cluster";
import { ADMIN_PASSWORD, Api } from "../support/org";
import { startS3 } from "../support/s3";
import { freePort, startNats, startRedis, testPostgres, waitFor, type PostgresServer, type ServerProcess } from "../support/servers";

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

interface LoadReport {
	total: number;
	/** Anything but a 200 with the expected body: status (0 = network error) and body. */
	failures: { status: number; body: unknown }[];
	maxMs: number;
}

/** The platform administrator's `Authorization` header, once signed in. */
let auth: Record<string, string> = {};

/** `clients` loops calling GET `url` back to back until `stop()`; answers what they saw. */
function load(url: string, clients: number, expect: (body: unknown) => boolean) {
	let running = true;
	const report: LoadReport = { total: 0, failures: [], maxMs: 0 };
	const loops = Array.from({ length: clients }, async () => {
		while (running) {
			const t0 = performance.now();
			try {
				const res = await request(url, auth);
				if (res.status !== 200 || !expect(res.body)) report.failures.push({ status: res.status, body: res.body });
			} catch (err) {
				report.failures.push({ status: 0, body: String(err) });
			}
			report.total++;
			report.maxMs = Math.max(report.maxMs, performance.now() - t0);
		}
	});
	return {
		async stop(): Promise<LoadReport> {
			running = false;
			await Promise.all(loops);
			return report;
		},
	};
}

/** The sum of a `config.get` counter in a node's own metrics. */
async function counted(observer: ServiceBroker, nodeID: string, metric: string): Promise<number> {
	const metrics = (await observer.call("$node.metrics", { includes: [metric] }, { nodeID })) as {
		values: { labels: { action?: string }; value: number }[];
	}[];
	return metrics.flatMap(m => m.values).filter(v => v.labels.action === "config.get").reduce((n, v) => n + v.value, 0);
}

/** How many `config.get` requests a node has served. */
const servedBy = (observer: ServiceBroker, nodeID: string) => counted(observer, nodeID, "moleculer.request.total");
/** How many `config.get` calls a (calling) node has retried. */
const retriesBy = (observer: ServiceBroker, nodeID: string) => counted(observer, nodeID, "moleculer.request.retry.attempts.total");

describe("HA over real NATS and PostgreSQL", () => {
	let nats: ServerProcess & { url: string };
	let redis: ServerProcess & { url: string };
	let s3: Awaited<ReturnType<typeof startS3>>;
	let pg: PostgresServer & { owned: boolean };
	let observer: ServiceBroker;
	let gatewayUrl: string;
	const nodes: ClusterNode[] = [];
	let platformA: ClusterNode;
	const value = { marker: randomUUID() };
	const configUrl = () => `${gatewayUrl}/api/config/ha`;
	const isValue = (body: unknown) => (body as { values?: { marker?: string } }).values?.marker === value.marker;

	/** Nodes that serve `config`, as the rest of the cluster sees them. */
	const configNodes = () =>
		observer.registry
			.getServiceList({ onlyAvailable: true, skipInternal: true })
			.filter(s => s.name === "config")
			.map(s => s.nodeID)
			.sort();

	before(async () => {
		nats = await startNats();
		redis = await startRedis();
		s3 = await startS3();
		pg = await testPostgres();
		const env = {
			TRANSPORTER: nats.url,
			REDIS_URL: redis.url,
			...s3.env,
			JWT_SECRET: randomUUID(),
			ADMIN_PASSWORD,
			DATABASE_URL: await pg.createDatabase("cluster_ha"),
			NAMESPACE: `ha-${randomUUID().slice(0, 8)}`,
			// Shorter than the default so that the test waits less for a call lost with a dead node.
			REQUEST_TIMEOUT: "3000",
			// The load is one client hammering the gateway: rate limits (tested on their own) off.
			RATE_LIMIT_PER_IP: "0",
			RATE_LIMIT_PER_USER: "0",
		};
		const port = await freePort();
		gatewayUrl = `http://127.0.0.1:${port}`;
		platformA = new ClusterNode("platform-a", { groups: ["platform", "org"], env });
		nodes.push(platformA, new ClusterNode("platform-b", { groups: ["platform", "org"], env }));
		const gateway = new ClusterNode("gateway-1", { groups: ["gateway"], env: { ...env, PORT: String(port), HOST: "127.0.0.1" } });
		nodes.push(gateway);
		nodes.forEach(n => n.start());

		observer = createTestBroker({ TRANSPORTER: nats.url, NAMESPACE: env.NAMESPACE, NODE_ID: "observer" });
		await observer.start();
		await gateway.started(async () => (await request(`${gatewayUrl}/api/ready`)).status === 200, "the gateway ready");
		await waitFor(() => configNodes().join() === "platform-a,platform-b", "config on both platform nodes").catch(err => {
			throw new Error(`${err.message}; seen: ${configNodes().join()}\n${nodes.map(n => `--- ${n.nodeID}\n${n.process?.output()}`).join("\n")}`);
		});

		const admin = await new Api(gatewayUrl).login("admin", ADMIN_PASSWORD);
		auth = { Authorization: `Bearer ${admin.token}` };
		const put = await request(configUrl(), { ...auth, "Content-Type": "application/json" }, {
			method: "PUT",
			body: JSON.stringify({ values: value }),
		});
		assert.equal(put.status, 200, JSON.stringify(put.body));
	});

	after(async () => {
		await Promise.all(nodes.map(n => n.stop()));
		await observer?.stop();
		await nats?.stop();
		await redis?.stop();
		await s3?.stop();
		if (pg?.owned) await pg.stop();
	});

	it("answers every request while a platform node is SIGKILLed mid-load, and uses the node again once it restarts", async () => {
		const run = load(configUrl(), 8, isValue);
		await sleep(1_500);
		const before = await servedBy(observer, "platform-a");
		const retriesBefore = await retriesBy(observer, "gateway-1");
		await platformA.kill();
		// Long enough for the cluster to declare the node dead (HEARTBEAT_TIMEOUT) and to carry on without it.
		await sleep(10_000);
		const killed = await run.stop();
		assert.ok(before > 0, "platform-a served requests before it was killed");
		assert.ok(killed.total > 100, `the load ran (${killed.total} requests)`);
		assert.deepEqual(killed.failures.slice(0, 5), [], `${killed.failures.length} of ${killed.total} requests failed`);
		assert.deepEqual(configNodes(), ["platform-b"], "the dead node has left the registry");
		assert.ok((await retriesBy(observer, "gateway-1")) > retriesBefore, "the calls lost with the node were retried");

		platformA.start();
		await platformA.started(async () => configNodes().join() === "platform-a,platform-b", "back in the registry");
		const again = load(configUrl(), 8, isValue);
		await sleep(2_000);
		const restarted = await again.stop();
		assert.deepEqual(restarted.failures.slice(0, 5), [], `${restarted.failures.length} of ${restarted.total} requests failed after the restart`);
		const served = await servedBy(observer, "platform-a");
		assert.ok(served > restarted.total / 4, `the restarted node took its share: ${served} of ${restarted.total} requests`);
	});

	it("stops a node gracefully on SIGTERM: its calls in flight finish and it leaves the cluster at once", async () => {
		const platformB = nodes[1];
		const retriesBefore = await retriesBy(observer, "gateway-1");
		const run = load(configUrl(), 8, isValue);
		await sleep(1_000);
		await platformB.stop();
		// Its DISCONNECT announcement, not a heartbeat timeout, takes it out of the registry.
		await waitFor(() => configNodes().join() === "platform-a", "platform-b to leave", 1_000);
		await sleep(1_000);
		const report = await run.stop();
		assert.deepEqual(report.failures.slice(0, 5), [], `${report.failures.length} of ${report.total} requests failed`);
		assert.equal(await retriesBy(observer, "gateway-1"), retriesBefore, "no call had to be retried");

		platformB.start();
		await platformB.started(async () => configNodes().join() === "platform-a,platform-b", "back in the registry");
	});

	it("reconnects every node by itself when nats-server is down for a few seconds", async () => {
		assert.equal((await request(configUrl(), auth)).status, 200);
		await nats.stop("SIGKILL");
		await sleep(3_000);
		await nats.start();

		await waitFor(async () => (await request(configUrl(), auth)).status === 200, "a request through the cluster to succeed again", 30_000);
		await waitFor(() => configNodes().join() === "platform-a,platform-b", "both platform nodes to be seen again", 30_000);
		const run = load(configUrl(), 8, isValue);
		await sleep(2_000);
		const report = await run.stop();
		assert.ok(report.total > 50, `the load ran (${report.total} requests)`);
		assert.deepEqual(report.failures.slice(0, 5), [], `${report.failures.length} of ${report.total} requests failed after NATS came back`);
	});
});
