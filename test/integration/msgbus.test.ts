/**
 * The integration bus end to end through the gateway, with a real HTTP server as the webhook
 * receiver (it checks every signature itself and drops duplicate message ids): embedded (the
 * in-process channels adapter), over Redis Streams and over NATS JetStream, then as a cluster
 * of two nodes (NATS, PostgreSQL, Redis Streams) where a node is stopped and another one killed
 * mid-delivery.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import { Api, createCompany, expectStatus, startOrg, startOrgCluster, unique, type RunningOrg, type TestCompany } from "../support/org";
import { freePort, startNats, startRedis, waitFor, type ServerProcess } from "../support/servers";
import { WebhookReceiver } from "../support/webhook";
import { ClusterNode } from "../support/cluster";
import MsgbusService from "../../services/messaging/msgbus.service";

/** Test-sized bus settings: 3 attempts 100 ms and 200 ms apart, 1 s per request; a silent node's messages move after ~3.8 s. */
const FAST = {
	attempts: 3, backoffInitialMs: 100, backoffFactor: 2, backoffMaxMs: 1000, timeoutMs: 1000,
	redeliverMarginMs: 500, claimIntervalMs: 100, maxPayloadBytes: 4096, reconcileIntervalMs: 2000,
};
const SECRET_A = "secret-of-company-a-0123456789";
const SECRET_B = "secret-of-company-b-0123456789";

/** Sets the bus's config namespace and waits until every node's msgbus runs on it. */
async function fastBus(org: RunningOrg, brokers: ServiceBroker[] = org.brokers) {
	// The change is broadcast: every node must know every other node's msgbus first.
	const msgbusNodes = (broker: ServiceBroker) =>
		(broker.registry as unknown as { getServiceList(o: object): { name: string }[] }).getServiceList({ onlyAvailable: true }).filter(s => s.name === "msgbus").length;
	await waitFor(() => brokers.every(b => msgbusNodes(b) === brokers.length), "msgbus known on every node");
	const set = expectStatus(await org.admin.put("/api/config/msgbus", { values: FAST }), 200, "set msgbus config");
	await waitFor(() => brokers.every(b => ((b.getLocalService("msgbus") as unknown as { configVersion: number })?.configVersion ?? 0) >= set.version), "the bus settings on every node");
}

async function subscribe(api: Api, topic: string, url: string, secret: string) {
	return expectStatus(await api.post("/api/bus/subscriptions", { topic, url, secret }), 200, `subscribe ${topic}`);
}

async function publish(api: Api, topic: string, body: unknown) {
	return expectStatus(await api.post(`/api/bus/topics/${topic}`, body), 202, `publish on ${topic}`);
}

/** Every key at any depth of a JSON value. */
function keysOf(value: unknown): string[] {
	if (!value || typeof value !== "object") return [];
	return Object.entries(value).flatMap(([k, v]) => [k, ...keysOf(v)]);
}

type Mode = "embedded" | "redis" | "nats";

async function startMode(mode: Mode): Promise<{ org: RunningOrg; stop(): Promise<void> }> {
	const servers: ServerProcess[] = [];
	let env: Record<string, string> = {};
	if (mode === "redis") {
		const redis = await startRedis();
		servers.push(redis);
		env = { CHANNELS: "redis", REDIS_URL: redis.url };
	} else if (mode === "nats") {
		const nats = await startNats({ jetstream: true });
		servers.push(nats);
		env = { CHANNELS: "nats", TRANSPORTER: nats.url, JWT_SECRET: `test-${randomUUID()}`, NAMESPACE: unique("bus") };
	}
	const org = await startOrg(env);
	return {
		org,
		async stop() {
			await org.stop();
			for (const server of servers) await server.stop();
		},
	};
}

for (const mode of ["embedded", "redis", "nats"] as const) {
	describe(`msgbus (${mode})`, () => {
		let org: RunningOrg;
		let stopAll: () => Promise<void>;
		let receiver: WebhookReceiver;
		let a: TestCompany;
		let b: TestCompany;

		before(async () => {
			({ org, stop: stopAll } = await startMode(mode));
			receiver = await WebhookReceiver.start();
			await fastBus(org);
			[a, b] = await Promise.all([createCompany(org), createCompany(org)]);
		});
		after(async () => {
			await receiver?.stop();
			await stopAll?.();
		});

		if (mode === "embedded") {
			it("documents every bus route of API.md in the OpenAPI document", async () => {
				const doc = expectStatus(await org.anonymous.get("/api/openapi.json"), 200);
				const routes = ["post /api/bus/topics/{topic}", "get /api/bus/subscriptions", "post /api/bus/subscriptions", "delete /api/bus/subscriptions/{id}", "get /api/bus/dead-letters"];
				assert.deepEqual(routes.filter(r => !doc.paths[r.split(" ")[1]]?.[r.split(" ")[0]]), []);
			});

			it("retries network errors and timeouts as failures, then dead-letters them", async () => {
				const refused = `http://127.0.0.1:${await freePort()}/nobody-listens`;
				const silent = receiver.endpoint("/a/silent", { secret: SECRET_A, hold: true });
				await subscribe(a.admin, "net", refused, SECRET_A);
				await subscribe(a.admin, "net", silent, SECRET_A);
				const published = await publish(a.admin, "net", { n: 1 });
				await waitFor(async () => expectStatus(await a.admin.get("/api/bus/dead-letters?topic=net"), 200).total === 2, "both dead letters");
				const rows = expectStatus(await a.admin.get("/api/bus/dead-letters?topic=net"), 200).rows;
				const byUrl = Object.fromEntries(rows.map((r: { url: string }) => [r.url, r]));
				assert.match(byUrl[refused].lastError, /^Network error: ECONNREFUSED/);
				assert.match(byUrl[silent].lastError, /^No answer within 1000 ms/);
				for (const row of rows) {
					assert.equal(row.messageId, published.id);
					assert.equal(row.attempts, FAST.attempts);
					assert.equal(row.lastStatus, null);
				}
				assert.equal(receiver.received("/a/silent").length, FAST.attempts);
			});
		}

		it("POSTs a published message to the company's webhook, signed, with its id and timestamp", async () => {
			const url = receiver.endpoint("/a/orders", { secret: SECRET_A });
			const sub = await subscribe(a.admin, "orders", url, SECRET_A);
			assert.equal(sub.secret, undefined, "the secret never leaves the service");
			const published = await publish(a.admin, "orders", { orderNo: 1, lines: [{ sku: "X", qty: 2 }], companyId: "part of the message" });
			const [id] = await receiver.waitForProcessed("/a/orders", 1);
			assert.equal(id, published.id);
			const [got] = receiver.received("/a/orders");
			assert.ok(got.signatureValid, "X-Signature is the HMAC-SHA256 of the raw body with the secret");
			assert.equal(got.headers["x-message-id"], published.id);
			assert.equal(got.headers["x-timestamp"], String(Date.parse(published.publishedAt)));
			assert.equal(got.headers["content-type"], "application/json");
			assert.deepEqual(got.body, { id: published.id, topic: "orders", publishedAt: published.publishedAt, payload: { orderNo: 1, lines: [{ sku: "X", qty: 2 }], companyId: "part of the message" } });
			const list = expectStatus(await a.admin.get("/api/bus/subscriptions?topic=orders"), 200);
			assert.deepEqual(list.rows.map((s: { id: string }) => s.id), [sub.id]);
			assert.equal(list.rows[0].secret, undefined);
		});

		it("retries a refusing webhook with exponential back-off until it accepts", async () => {
			const url = receiver.endpoint("/a/flaky", { secret: SECRET_A, failFirst: 2 });
			await subscribe(a.admin, "invoices", url, SECRET_A);
			const published = await publish(a.admin, "invoices", { invoice: 7 });
			assert.deepEqual(await receiver.waitForProcessed("/a/flaky", 1), [published.id]);
			const attempts = receiver.received("/a/flaky");
			assert.deepEqual(attempts.map(r => [r.headers["x-delivery-attempt"], r.status]), [["1", 500], ["2", 500], ["3", 200]]);
			assert.ok(attempts[1].at - attempts[0].at >= 90, "about 100 ms before the second attempt");
			assert.ok(attempts[2].at - attempts[1].at >= 190, "about 200 ms before the third");
			assert.equal(expectStatus(await a.admin.get("/api/bus/dead-letters?topic=invoices"), 200).total, 0);
		});

		it("dead-letters a message the webhook refuses on every attempt, listed with the last error and the attempts", async () => {
			const url = receiver.endpoint("/a/down", { secret: SECRET_A, alwaysFail: 503 });
			const sub = await subscribe(a.admin, "shipments", url, SECRET_A);
			const published = await publish(a.admin, "shipments", { parcel: "P-1" });
			await waitFor(async () => expectStatus(await a.admin.get("/api/bus/dead-letters?topic=shipments"), 200).total === 1, "the dead letter");
			const [letter] = expectStatus(await a.admin.get("/api/bus/dead-letters?topic=shipments"), 200).rows;
			assert.equal(letter.subscriptionId, sub.id);
			assert.equal(letter.messageId, published.id);
			assert.equal(letter.attempts, FAST.attempts);
			assert.equal(letter.lastStatus, 503);
			assert.match(letter.lastError, /HTTP 503: down for maintenance/);
			assert.equal(letter.url, url);
			assert.deepEqual(letter.message.payload, { parcel: "P-1" });
			assert.equal(receiver.received("/a/down").length, FAST.attempts);
			// Delivered twice (at-least-once) and refused twice, a message is still one dead letter.
			const again = { companyId: a.id, subscriptionId: sub.id, topic: "shipments", url, messageId: published.id, message: letter.message, attempts: 3, lastStatus: 503, lastError: "again" };
			await org.broker.call("msgbusDeadLetters.record", again);
			assert.equal(expectStatus(await a.admin.get("/api/bus/dead-letters?topic=shipments"), 200).total, 1);
		});

		it("keeps companies apart: B's subscription to the same topic never receives A's messages, B's dead letters never list A's", async () => {
			const urlB = receiver.endpoint("/b/orders", { secret: SECRET_B });
			await subscribe(b.admin, "orders", urlB, SECRET_B);
			const fromA = await publish(a.admin, "orders", { orderNo: 2 });
			await waitFor(() => receiver.processed("/a/orders").includes(fromA.id), "A's message at A's webhook");
			// B's own message arrives after A's was delivered: had A's been routed to B, it would be there too.
			const fromB = await publish(b.admin, "orders", { orderNo: "b-1" });
			await receiver.waitForProcessed("/b/orders", 1);
			assert.deepEqual(receiver.processed("/b/orders"), [fromB.id]);
			assert.ok(!receiver.processed("/a/orders").includes(fromB.id));
			assert.ok(receiver.received("/b/orders").every(r => r.signatureValid), "signed with B's own secret");

			const deadB = expectStatus(await b.admin.get("/api/bus/dead-letters"), 200);
			assert.equal(deadB.total, 0);
			assert.ok(expectStatus(await a.admin.get("/api/bus/dead-letters"), 200).total >= 1);
			const subsB = expectStatus(await b.admin.get("/api/bus/subscriptions"), 200);
			assert.deepEqual(subsB.rows.map((s: { companyId: string }) => s.companyId), [b.id]);
		});

		it("bridges domain events: a user created in A reaches A's user.user.created webhook, without any password", async () => {
			const url = receiver.endpoint("/a/users", { secret: SECRET_A });
			await subscribe(a.admin, "user.user.created", url, SECRET_A);
			const username = `${a.code}-bridged`;
			// B's new user is B's event: it must not reach A's subscription.
			expectStatus(await b.admin.post("/api/users", { username: `${b.code}-other`, password: "Passw0rd-user", name: "Other" }), 200);
			const user = expectStatus(await a.admin.post("/api/users", { username, password: "Passw0rd-user", name: "Bridged" }), 200);
			await receiver.waitForProcessed("/a/users", 1);
			const body = receiver.received("/a/users").find(r => r.status === 200)!.body;
			assert.equal(body.topic, "user.user.created");
			assert.equal(body.payload.event, "user.user.created");
			assert.equal(body.payload.entity.id, user.id);
			assert.equal(body.payload.entity.username, username);
			assert.equal(body.payload.entity.companyId, a.id);
			assert.equal(body.payload.user.username, `${a.code}-admin`);
			const leaked = keysOf(body).filter(k => /pass|hash|secret|salt/i.test(k));
			assert.deepEqual(leaked, [], "no password, hash or secret field");
			assert.ok(!/Passw0rd-user/.test(receiver.received("/a/users")[0].raw));
			assert.equal(receiver.processed("/a/users").length, 1, "only A's user");
		});

		it("lets other services publish with msgbus.publish, and validates what they give", async () => {
			const published = await org.broker.call<{ id: string }, object>("msgbus.publish", { companyId: a.id, topic: "orders", payload: { from: "erp" } });
			await waitFor(() => receiver.processed("/a/orders").includes(published.id), "the internal message at A's webhook");
			const body = receiver.received("/a/orders").find(r => r.body?.id === published.id)!.body;
			assert.deepEqual(body.payload, { from: "erp" });
			await assert.rejects(org.broker.call("msgbus.publish", { companyId: a.id, topic: "Not A Topic", payload: {} }), { name: "ValidationError" });
			// The platform administrator publishes for a company by naming it; `companyId` is then not part of the message.
			const byAdmin = await publish(org.admin, "orders", { companyId: a.id, from: "admin" });
			await waitFor(() => receiver.processed("/a/orders").includes(byAdmin.id), "the administrator's message at A's webhook");
			assert.deepEqual(receiver.received("/a/orders").find(r => r.body?.id === byAdmin.id)!.body.payload, { from: "admin" });
			assert.equal((await org.admin.post("/api/bus/topics/orders", { from: "admin" })).status, 422, "the administrator must name the company");
			await assert.rejects(org.broker.call("msgbus.publish", { companyId: a.id, topic: "orders", payload: "text" }), { name: "ValidationError" });
		});

		it("refuses bad input on every route with a clear 4xx, and writes nothing", async () => {
			const api = a.admin;
			const before = expectStatus(await api.get("/api/bus/subscriptions?pageSize=100"), 200).total;
			const refused = async (reply: Promise<{ status: number; body: any }>, status: number, message: RegExp) => {
				const r = await reply;
				assert.equal(r.status, status, JSON.stringify(r.body));
				assert.match(JSON.stringify(r.body), message);
			};
			// Publishing
			await refused(api.post("/api/bus/topics/Orders", { x: 1 }), 422, /topic/);
			await refused(api.post("/api/bus/topics/-orders", { x: 1 }), 422, /topic/);
			await refused(api.post(`/api/bus/topics/${"a".repeat(101)}`, { x: 1 }), 422, /topic/);
			await refused(api.post("/api/bus/topics/orders", [1, 2, 3]), 422, /JSON object, not an array/);
			await refused(api.call("POST", "/api/bus/topics/orders", "just text"), 400, /not valid JSON/);
			await refused(api.post("/api/bus/topics/orders", { blob: "x".repeat(FAST.maxPayloadBytes) }), 413, /larger than 4096 bytes/);
			// Subscribing
			const url = receiver.endpoint("/a/never", { secret: SECRET_A });
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url: "ftp://example.com/hook", secret: SECRET_A }), 422, /http or https/);
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url: "not a url", secret: SECRET_A }), 422, /absolute http\(s\) URL/);
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url: "http://user:pw@example.com/", secret: SECRET_A }), 422, /credentials/);
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url, secret: "short" }), 422, /at least 16 characters/);
			await refused(api.post("/api/bus/subscriptions", { topic: "Bad Topic", url, secret: SECRET_A }), 422, /topic/);
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url }), 422, /secret/);
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url, secret: SECRET_A, extra: true }), 422, /extra/);
			await refused(api.post("/api/bus/subscriptions", { topic: "orders", url: receiver.base + "/a/orders", secret: SECRET_A }), 409, /already receives/);
			// Deleting: unknown, and another company's subscription, read the same
			const subB = expectStatus(await b.admin.get("/api/bus/subscriptions"), 200).rows[0];
			await refused(api.delete(`/api/bus/subscriptions/${randomUUID()}`), 404, /not found/);
			await refused(api.delete(`/api/bus/subscriptions/${subB.id}`), 404, /not found/);
			assert.equal(expectStatus(await b.admin.get("/api/bus/subscriptions"), 200).total, 1, "B's subscription is still there");
			// Lists
			await refused(api.get("/api/bus/dead-letters?pageSize=1000"), 422, /pageSize/);
			await refused(api.get("/api/bus/subscriptions?companyId=" + b.id), 403, /platform administrator/);
			// Nothing was written, nothing delivered
			assert.equal(expectStatus(await api.get("/api/bus/subscriptions?pageSize=100"), 200).total, before);
			assert.equal(receiver.received("/a/never").length, 0);
			// A member of the company holds neither bus permission
			expectStatus(await api.post("/api/users", { username: `${a.code}-member`, password: "Passw0rd-user", name: "Member" }), 200);
			const member = await org.anonymous.login(`${a.code}-member`, "Passw0rd-user");
			await refused(member.post("/api/bus/topics/orders", { x: 1 }), 403, /bus:publish/);
			await refused(member.get("/api/bus/subscriptions"), 403, /bus:subscribe/);
		});

		it("removes a deleted company's subscriptions and dead letters", async () => {
			const c = await createCompany(org);
			const url = receiver.endpoint("/c/gone", { secret: SECRET_A, alwaysFail: 500 });
			const sub = await subscribe(c.admin, "gone", url, SECRET_A);
			await publish(c.admin, "gone", { n: 1 });
			await waitFor(async () => expectStatus(await org.admin.get(`/api/bus/dead-letters?companyId=${c.id}`), 200).total === 1, "C's dead letter");
			expectStatus(await org.admin.put(`/api/companies/${c.id}`, { status: "disabled" }), 200);
			expectStatus(await org.admin.delete(`/api/companies/${c.id}`), 200);
			await waitFor(async () => expectStatus(await org.admin.get(`/api/bus/subscriptions?companyId=${c.id}`), 200).total === 0, "C's subscriptions gone");
			await waitFor(async () => expectStatus(await org.admin.get(`/api/bus/dead-letters?companyId=${c.id}`), 200).total === 0, "C's dead letters gone");
			const consumers = await org.broker.call<{ subscriptions: string[] }, object>("msgbus.consumers", {});
			assert.ok(!consumers.subscriptions.includes(sub.id), "no node consumes it any more");
		});

		it("stops delivering once a subscription is deleted", async () => {
			const url = receiver.endpoint("/a/temporary", { secret: SECRET_A });
			const sub = await subscribe(a.admin, "temporary", url, SECRET_A);
			await publish(a.admin, "temporary", { n: 1 });
			await receiver.waitForProcessed("/a/temporary", 1);
			expectStatus(await a.admin.delete(`/api/bus/subscriptions/${sub.id}`), 200);
			// A second subscription of the same topic shows when messages have gone through.
			const witness = receiver.endpoint("/a/temporary-witness", { secret: SECRET_A });
			await subscribe(a.admin, "temporary", witness, SECRET_A);
			const second = await publish(a.admin, "temporary", { n: 2 });
			assert.deepEqual(await receiver.waitForProcessed("/a/temporary-witness", 1), [second.id]);
			assert.equal(receiver.processed("/a/temporary").length, 1);
		});
	});
}

for (const transport of ["redis", "nats"] as const) {
	describe(`msgbus (cluster: two nodes over NATS and PostgreSQL, the bus on ${transport === "redis" ? "Redis Streams" : "JetStream"})`, () => {
		let org: RunningOrg;
		let jetstream: ServerProcess | null = null;
		let receiver: WebhookReceiver;
		let a: TestCompany;
		let subscriptionId: string;
		const extra: ClusterNode[] = [];

		/** The subscriptions a node consumes, once its msgbus is known to node 1. */
		const consumersOn = async (nodeID: string) => {
			const registry = org.broker.registry as unknown as { getServiceList(o: object): { name: string; nodeID: string }[] };
			if (!registry.getServiceList({ onlyAvailable: true }).some(s => s.name === "msgbus" && s.nodeID === nodeID)) return [];
			return (await org.broker.call<{ subscriptions: string[] }, object>("msgbus.consumers", {}, { nodeID })).subscriptions;
		};

		before(async () => {
			if (transport === "nats") jetstream = await startNats({ jetstream: true });
			// startOrgCluster's own NATS is replaced by one with JetStream for the bus on NATS.
			org = await startOrgCluster(jetstream ? { CHANNELS: "nats", TRANSPORTER: (jetstream as ServerProcess & { url: string }).url } : { CHANNELS: "redis" });
			receiver = await WebhookReceiver.start();
			await fastBus(org);
			a = await createCompany(org);
		});
		after(async () => {
			for (const node of extra) await node.kill();
			await receiver?.stop();
			await org?.stop();
			await jetstream?.stop();
		});

		it("consumes a subscription made through one gateway on both nodes", async () => {
			const url = receiver.endpoint("/c/orders", { secret: SECRET_A, failFirst: 1 });
			subscriptionId = (await subscribe(a.admin.via(org.urls[1]), "orders", url, SECRET_A)).id;
			for (const broker of org.brokers) assert.deepEqual(await consumersOn(broker.nodeID), [subscriptionId], broker.nodeID);
		});

		it("delivers every message at least once while publishers alternate gateways and the webhook refuses each first attempt", async () => {
			const ids: string[] = [];
			for (let i = 0; i < 20; i++) ids.push((await publish(a.admin.via(org.urls[i % 2]), "orders", { n: i })).id);
			const processed = await receiver.waitForProcessed("/c/orders", ids.length);
			assert.deepEqual([...processed].sort(), [...ids].sort());
			assert.ok(receiver.received("/c/orders").every(r => r.signatureValid));
		});

		it("delivers a message published while one consumer node is gone", async () => {
			const second = org.brokers[1];
			await second.stop();
			// Stopped for good: the suite's stop must not stop it twice.
			second.stop = () => Promise.resolve();
			const published = await publish(a.admin, "orders", { while: "node 2 is gone" });
			await waitFor(() => receiver.processed("/c/orders").includes(published.id), "the message through the remaining node");
		});

		it("hands a message held by a killed node to another node, which delivers it", async () => {
			// A third node, a process running msgbus alone; node 1 gives up its msgbus so that the process holds the message.
			const node = new ClusterNode(`${org.env.NAMESPACE}-bus`, { groups: ["dist/services/messaging/msgbus.service.js"], env: org.env as Record<string, string> });
			extra.push(node);
			node.start();
			await node.started(async () => (await consumersOn(node.nodeID)).includes(subscriptionId), "msgbus consuming the subscription");
			await org.broker.destroyService(org.broker.getLocalService("msgbus")!);

			receiver.hold("/c/orders", true);
			const published = await org.broker.call<{ id: string }, object>("msgbus.publish", { companyId: a.id, topic: "orders", payload: { held: true } });
			await receiver.waitForReceived("/c/orders", rs => rs.some(r => r.body?.id === published.id), "the held delivery");
			await node.kill();
			const killedAt = Date.now();
			receiver.hold("/c/orders", false);

			org.broker.createService(MsgbusService);
			await waitFor(() => receiver.processed("/c/orders").includes(published.id), "the message redelivered by node 1", 30_000);
			const accepted = receiver.received("/c/orders").filter(r => r.body?.id === published.id && r.status === 200);
			assert.ok(accepted.every(r => r.at > killedAt), "delivered after the kill, by another node");
			assert.equal(receiver.processed("/c/orders").filter(id => id === published.id).length, 1, "processed once");
		});
	});
}
