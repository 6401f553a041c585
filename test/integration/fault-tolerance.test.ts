/**
 * The fault-tolerance settings of moleculer.config.ts, on real brokers: retries for idempotent
 * actions only, declared fallbacks, the request timeout, the bulkhead, and a graceful stop that
 * finishes the calls in flight and leaves the cluster (two brokers over a real nats-server).
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Errors, type Context, type ServiceBroker, type ServiceSchema } from "moleculer";
import { createTestBroker } from "../support/broker";
import { startNats, waitFor, type ServerProcess } from "../support/servers";

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** Fails the first `failures` calls of each key with a retryable error, then answers. */
function flaky(failures: number) {
	const attempts = new Map<string, number>();
	return {
		attempts,
		handler(ctx: Context<{ key: string }>) {
			const n = (attempts.get(ctx.params.key) ?? 0) + 1;
			attempts.set(ctx.params.key, n);
			if (n <= failures) throw new Errors.MoleculerRetryableError("Temporarily unavailable", 503, "TEMPORARY");
			return { attempts: n };
		},
	};
}

describe("fault tolerance on one node", () => {
	const readFlaky = flaky(2);
	const writeFlaky = flaky(2);
	let broker: ServiceBroker;

	const Probe: ServiceSchema = {
		name: "probe",
		actions: {
			read: { idempotent: true, params: { key: "string" }, handler: readFlaky.handler },
			write: { params: { key: "string" }, handler: writeFlaky.handler },
			slow: { params: { ms: "number" }, async handler(ctx: Context<{ ms: number }>) { await sleep(ctx.params.ms); return "done"; } },
			// Its own bulkhead (one per action): no call left over from another test holds a slot.
			busy: { async handler() { await sleep(100); return "done"; } },
			withFallback: {
				fallback: "stale",
				handler() { throw new Errors.MoleculerServerError("Backend down", 502, "BACKEND_DOWN"); },
			},
		},
		methods: {
			stale() { return { stale: true }; },
		},
	};

	before(async () => {
		broker = createTestBroker({ REQUEST_TIMEOUT: "300", BULKHEAD_CONCURRENCY: "2", BULKHEAD_QUEUE: "1" });
		broker.createService(Probe);
		await broker.start();
	});
	after(() => broker.stop());

	it("retries an idempotent action until it answers", async () => {
		assert.deepEqual(await broker.call("probe.read", { key: randomUUID() }), { attempts: 3 });
	});

	it("never retries an action that is not marked idempotent", async () => {
		const key = randomUUID();
		await assert.rejects(broker.call("probe.write", { key }), { type: "TEMPORARY" });
		assert.equal(writeFlaky.attempts.get(key), 1);
	});

	it("answers with the action's declared fallback when it fails, or the caller's fallbackResponse", async () => {
		assert.deepEqual(await broker.call("probe.withFallback"), { stale: true });
		assert.equal(await broker.call("probe.write", { key: randomUUID() }, { fallbackResponse: "later" }), "later");
	});

	it("gives up on a call after REQUEST_TIMEOUT", async () => {
		await assert.rejects(broker.call("probe.slow", { ms: 1_000 }), (err: Errors.MoleculerError) => {
			assert.equal(err.name, "RequestTimeoutError");
			assert.equal(err.code, 504);
			return true;
		});
	});

	it("refuses calls beyond the bulkhead's concurrency and queue with 429", async () => {
		const calls = [1, 2, 3, 4].map(() => broker.call("probe.busy"));
		const results = await Promise.allSettled(calls);
		assert.deepEqual(results.map(r => r.status), ["fulfilled", "fulfilled", "fulfilled", "rejected"]);
		const refused = (results[3] as PromiseRejectedResult).reason as Errors.MoleculerError;
		assert.equal(refused.name, "QueueIsFullError");
		assert.equal(refused.code, 429);
	});
});

describe("graceful stop over NATS", () => {
	let nats: ServerProcess & { url: string };
	let caller: ServiceBroker;
	let worker: ServiceBroker;

	before(async () => {
		nats = await startNats();
		const env = { TRANSPORTER: nats.url, NAMESPACE: `ft-${randomUUID().slice(0, 8)}`, REQUEST_TIMEOUT: "5000" };
		caller = createTestBroker({ ...env, NODE_ID: "caller" });
		worker = createTestBroker({ ...env, NODE_ID: "worker" });
		worker.createService({
			name: "work",
			actions: { slow: { async handler() { await sleep(800); return "finished"; } } },
		});
		await Promise.all([caller.start(), worker.start()]);
		await caller.waitForServices("work", 10_000);
	});

	after(async () => {
		await Promise.all([caller?.stop(), worker?.stop()]);
		await nats?.stop();
	});

	it("finishes the calls in flight, then leaves the cluster at once", async () => {
		const inFlight = [1, 2, 3].map(() => caller.call("work.slow"));
		await sleep(200);
		const stopped = worker.stop();
		assert.deepEqual(await Promise.all(inFlight), ["finished", "finished", "finished"]);
		await stopped;
		// Gone from the caller's registry by its own announcement, long before a heartbeat timeout.
		await waitFor(() => !caller.registry.nodes.get("worker")?.available, "the worker to be seen as gone", 1_000);
		await assert.rejects(caller.call("work.slow"), (err: Errors.MoleculerError) => /^ServiceNot(Found|Available)Error$/.test(err.name));
	});
});
