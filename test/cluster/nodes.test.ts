/**
 * Several brokers in this process joined over a real nats-server, with PostgreSQL as the shared
 * store: what must hold between nodes (live config, cache cleaning, replicas of a stateful
 * service) rather than inside one.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Errors, type Context, type ServiceBroker, type ServiceSchema } from "moleculer";
import { ConfigMixin } from "../../mixins/config.mixin";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import ConfigService from "../../services/platform/config.service";
import RegistryService from "../../services/platform/registry.service";
import type { ConfigSnapshot } from "../../types/config";
import { createTestBroker } from "../support/broker";
import { startNats, testPostgres, waitFor, type PostgresServer, type ServerProcess } from "../support/servers";

type Quota = { quotaBytes: number };

/** A service of another node that reads namespace `quota` through config.mixin. */
const QuotaConsumer: ServiceSchema = {
	name: "quota",
	mixins: [ConfigMixin<Quota>("quota", { quotaBytes: 1 })],
	actions: { current: { handler(this: { config: Quota }) { return this.config; } } },
};

/** A stateful service with a cached action, on the shared store. */
const Notes: ServiceSchema = {
	name: "notes",
	mixins: [DbMixin({ name: "notes", fields: { text: { type: "string", required: true } } })],
	actions: {
		count: { cache: true, handler(this: DbMethods, ctx: Context) { return this.countEntities(ctx); } },
		add: { params: { text: "string" }, handler(this: DbMethods, ctx: Context<{ text: string }>) { return this.createEntity(ctx, { text: ctx.params.text }); } },
	},
};

/** An action that always fails on the server side, to trip circuit breakers. */
const Fragile: ServiceSchema = {
	name: "fragile",
	actions: { fail() { throw new Errors.MoleculerServerError("Backend down", 500, "BACKEND_DOWN"); } },
};

type NodeRow = { id: string; available: boolean; local: boolean; metadata: { unit: string | null; zone: string | null }; services: string[] };
type ServiceRow = {
	name: string;
	nodes: { nodeID: string; available: boolean }[];
	actions: { name: string; endpoints: { nodeID: string; available: boolean; circuit: { state: string; caller?: string } }[] }[];
};

describe("nodes over real NATS sharing PostgreSQL", () => {
	let nats: ServerProcess & { url: string };
	let pg: PostgresServer & { owned: boolean };
	let databaseUrl: string;
	const namespace = `nodes-${randomUUID().slice(0, 8)}`;
	const brokers: ServiceBroker[] = [];

	/** A started broker of this cluster with the given services; `env` on top of the cluster's. */
	async function node(nodeID: string, services: ServiceSchema[], env: Record<string, string> = {}): Promise<ServiceBroker> {
		const broker = createTestBroker({ TRANSPORTER: nats.url, NAMESPACE: namespace, NODE_ID: nodeID, DATABASE_URL: databaseUrl, ...env });
		services.forEach(s => broker.createService(s));
		brokers.push(broker);
		await broker.start();
		return broker;
	}

	let a: ServiceBroker;
	let b: ServiceBroker;

	before(async () => {
		[nats, pg] = await Promise.all([startNats(), testPostgres()]);
		databaseUrl = await pg.createDatabase("cluster_nodes");
		a = await node("node-a", [ConfigService, Notes, RegistryService]);
		b = await node("node-b", [ConfigService, Notes, QuotaConsumer, Fragile], { NODE_UNIT: "unit-2", NODE_ZONE: "zone-b" });
		await waitFor(() => a.registry.getServiceList({ skipInternal: true }).filter(s => s.name === "config").length === 2, "both config replicas");
	});

	after(async () => {
		for (const broker of brokers.reverse()) await broker.stop().catch(() => {});
		await nats?.stop();
		if (pg?.owned) await pg.stop();
	});

	it("pushes a config change to a config.mixin service on another node within a second", async () => {
		assert.deepEqual(await b.call("quota.current"), { quotaBytes: 1 });
		// Written on node A, read by the consumer on node B.
		await a.call("config.set", { namespace: "quota", values: { quotaBytes: 4096 } }, { nodeID: "node-a", meta: { user: { username: "admin", platformAdmin: true } } });
		await waitFor(async () => ((await b.call("quota.current")) as Quota).quotaBytes === 4096, "node B to see the change", 1_000);
	});

	it("lets exactly one of concurrent writers on two replicas win a compare-and-set", async () => {
		const writes = await Promise.allSettled(
			[a, b, a, b, a, b].map((broker, i) =>
				broker.call("config.set", { namespace: "race", values: { writer: i }, expectedVersion: 0 }, { nodeID: broker.nodeID }),
			),
		);
		assert.equal(writes.filter(w => w.status === "fulfilled").length, 1);
		for (const w of writes.filter(w => w.status === "rejected")) assert.equal((w as PromiseRejectedResult).reason.type, "VERSION_CONFLICT");
		const current = (await b.call("config.get", { namespace: "race" })) as ConfigSnapshot;
		assert.equal(current.version, 1);
	});

	it("gives concurrent unconditional writers on two replicas consecutive versions", async () => {
		const writes = await Promise.all(
			[a, b, a, b].map((broker, i) => broker.call("config.set", { namespace: "busy", values: { i } }, { nodeID: broker.nodeID }) as Promise<ConfigSnapshot>),
		);
		assert.deepEqual(writes.map(w => w.version).sort(), [1, 2, 3, 4]);
	});

	it("cleans a cached answer on every node when a record changes on one", async () => {
		// Each node answers from its own memory cache (calls stay local: preferLocal).
		assert.equal(await b.call("notes.count"), 0);
		assert.equal(await a.call("notes.count"), 0);
		// A row written behind the services' backs changes no cache: the answers are cached.
		await (b.getLocalService("notes") as unknown as { adapter: { insert(doc: object): Promise<unknown> } }).adapter.insert({ id: randomUUID(), text: "unseen" });
		assert.equal(await b.call("notes.count"), 0);

		await a.call("notes.add", { text: "written on A" });
		await waitFor(async () => (await b.call("notes.count")) === 2, "node B's cache to be cleaned", 1_000);
		assert.equal(await a.call("notes.count"), 2);
	});

	it("lists the live nodes with their metadata and services", async () => {
		const nodes = (await a.call("registry.nodes")) as NodeRow[];
		const byId = new Map(nodes.map(n => [n.id, n]));
		assert.deepEqual(byId.get("node-b")?.metadata, { unit: "unit-2", zone: "zone-b" });
		assert.deepEqual(byId.get("node-b")?.services, ["config", "fragile", "notes", "quota"]);
		assert.equal(byId.get("node-b")?.available, true);
		assert.equal(byId.get("node-a")?.local, true);
	});

	it("lists each service's nodes and the circuit-breaker state of its endpoints", async () => {
		const before = (await a.call("registry.services")) as ServiceRow[];
		assert.deepEqual(before.find(s => s.name === "config")?.nodes.map(n => n.nodeID).sort(), ["node-a", "node-b"]);

		// Enough failures in the window (20 calls, all failing) open node A's breaker for node B's endpoint.
		for (let i = 0; i < 25; i++) await a.call("fragile.fail").catch(() => {});
		await waitFor(async () => {
			const services = (await a.call("registry.services")) as ServiceRow[];
			const endpoint = services.find(s => s.name === "fragile")?.actions[0].endpoints.find(e => e.nodeID === "node-b");
			return endpoint?.circuit.state === "open" && endpoint.circuit.caller === "node-a" && endpoint.available === false;
		}, "the open circuit to show", 2_000);
	});

	it("refuses to start a replica of a stateful service on NeDB", async () => {
		// No DATABASE_URL: this node would keep its own NeDB file beside the shared store.
		await assert.rejects(node("node-nedb", [ConfigService], { DATABASE_URL: "" }), (err: Error & { type?: string }) => {
			assert.equal(err.type, "NEDB_REPLICA_REFUSED");
			assert.match(err.message, /already runs on node 'node-(a|b)'.*set DATABASE_URL or MONGO_URI/);
			return true;
		});
	});
});
