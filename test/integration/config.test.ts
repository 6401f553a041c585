/**
 * The config centre through the gateway, and a service using config.mixin seeing changes live.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { ServiceSchema } from "moleculer";
import { ConfigMixin } from "../../mixins/config.mixin";
import { startPlatform, type RunningGateway } from "../support/platform";
import { waitFor } from "../support/servers";
import { bearer } from "../support/security.stub";

type Defaults = { quotaBytes: number; greeting: string };
const seen: { next: Defaults; previous: Defaults }[] = [];

/** A service that reads namespace `demo` and records every change it is told of. */
const DemoConsumer: ServiceSchema = {
	name: "demo",
	mixins: [ConfigMixin<Defaults>("demo", { quotaBytes: 100, greeting: "hello" })],
	actions: { current: { handler(this: { config: Defaults }) { return this.config; } } },
	methods: {
		configChanged(next: Defaults, previous: Defaults) {
			seen.push({ next, previous });
		},
	},
};

async function api(gw: RunningGateway, method: string, path: string, token: string, body?: unknown) {
	const res = await fetch(gw.url + path, {
		method,
		headers: { ...bearer(token), ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	return { status: res.status, body: (await res.json()) as any };
}

describe("config centre", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({}, [DemoConsumer]);
	});
	after(() => gw.stop());

	it("answers version 0 and no values for a namespace never set", async () => {
		const res = await api(gw, "GET", "/api/config/never-set", "reader-token");
		assert.equal(res.status, 200);
		assert.deepEqual(res.body, { namespace: "never-set", version: 0, values: {} });
	});

	it("starts a consumer on its defaults", async () => {
		assert.deepEqual(await gw.broker.call("demo.current"), { quotaBytes: 100, greeting: "hello" });
	});

	it("stores a new version on every change and pushes it to consumers without a restart", async () => {
		const put = await api(gw, "PUT", "/api/config/demo", "admin-token", { values: { quotaBytes: 5000, "dotted.key": true, $dollar: 1 } });
		assert.equal(put.status, 200);
		assert.equal(put.body.version, 1);
		const got = await api(gw, "GET", "/api/config/demo", "reader-token");
		assert.deepEqual(got.body, { namespace: "demo", version: 1, values: { quotaBytes: 5000, "dotted.key": true, $dollar: 1 } });

		await waitFor(async () => ((await gw.broker.call("demo.current")) as Defaults).quotaBytes === 5000, "the consumer to see version 1", 1000);
		const current = (await gw.broker.call("demo.current")) as Defaults;
		assert.equal(current.greeting, "hello", "defaults stay under keys the namespace does not set");
		assert.equal(seen.at(-1)!.previous.quotaBytes, 100);
	});

	it("is a compare-and-set with expectedVersion: a stale version gets 409 and changes nothing", async () => {
		const ok = await api(gw, "PUT", "/api/config/demo", "admin-token", { values: { quotaBytes: 6000 }, expectedVersion: 1 });
		assert.equal(ok.status, 200);
		assert.equal(ok.body.version, 2);
		const stale = await api(gw, "PUT", "/api/config/demo", "admin-token", { values: { quotaBytes: 1 }, expectedVersion: 1 });
		assert.equal(stale.status, 409);
		assert.equal(stale.body.type, "VERSION_CONFLICT");
		assert.deepEqual(stale.body.data, { namespace: "demo", expectedVersion: 1, version: 2 });
		assert.equal((await api(gw, "GET", "/api/config/demo", "reader-token")).body.values.quotaBytes, 6000);
	});

	it("lets exactly one of several concurrent writers with the same expectedVersion win", async () => {
		const writes = await Promise.all(
			[1, 2, 3, 4, 5].map(n => api(gw, "PUT", "/api/config/race", "admin-token", { values: { writer: n }, expectedVersion: 0 })),
		);
		assert.deepEqual(writes.map(w => w.status).sort(), [200, 409, 409, 409, 409]);
		const winner = writes.find(w => w.status === 200)!.body.values.writer;
		const current = await api(gw, "GET", "/api/config/race", "reader-token");
		assert.deepEqual(current.body, { namespace: "race", version: 1, values: { writer: winner } });
	});

	it("serialises concurrent writers without expectedVersion into consecutive versions", async () => {
		const writes = await Promise.all([1, 2, 3, 4].map(n => api(gw, "PUT", "/api/config/busy", "admin-token", { values: { n } })));
		assert.deepEqual(writes.map(w => w.body.version).sort(), [1, 2, 3, 4]);
	});

	it("keeps the history newest first and rolls back as a new version", async () => {
		const history = await api(gw, "GET", "/api/config/demo/history", "reader-token");
		assert.equal(history.status, 200);
		assert.deepEqual(history.body.rows.map((r: { version: number }) => r.version), [2, 1]);
		assert.equal(history.body.total, 2);
		assert.equal(history.body.rows[0].createdBy, "admin");

		const rollback = await api(gw, "POST", "/api/config/demo/rollback", "admin-token", { version: 1 });
		assert.equal(rollback.status, 200);
		assert.equal(rollback.body.version, 3);
		assert.equal(rollback.body.values.quotaBytes, 5000);
		const after = await api(gw, "GET", "/api/config/demo/history?pageSize=1", "reader-token");
		assert.equal(after.body.rows[0].change, "rollback");
		assert.equal(after.body.rows[0].restoredFrom, 1);
		await waitFor(async () => ((await gw.broker.call("demo.current")) as Defaults).quotaBytes === 5000, "the consumer to see the rollback", 1000);
	});

	it("refuses bad input with a 4xx that says what was wrong, and writes nothing", async () => {
		const cases: [string, string, unknown, number, RegExp][] = [
			["PUT", "/api/config/Bad Name!", { values: {} }, 422, /namespace/],
			["PUT", "/api/config/demo", { values: "not an object" }, 422, /values/],
			["PUT", "/api/config/demo", {}, 422, /values/],
			["PUT", "/api/config/demo", { values: {}, expectedVersion: -1 }, 422, /expectedVersion/],
			["PUT", "/api/config/demo", { values: {}, unexpected: 1 }, 422, /forbidden keys/],
			["PUT", "/api/config/demo", { values: { blob: "x".repeat(300 * 1024) } }, 413, /.*/],
			["POST", "/api/config/demo/rollback", { version: 99 }, 404, /no version 99/],
			["POST", "/api/config/demo/rollback", { version: "one" }, 422, /version/],
			["GET", "/api/config/demo/history?page=0", undefined, 422, /page/],
		];
		for (const [method, path, body, status, message] of cases) {
			const res = await api(gw, method, path, "admin-token", body);
			assert.equal(res.status, status, `${method} ${path} ${JSON.stringify(body)?.slice(0, 80)}`);
			assert.match(JSON.stringify(res.body), message);
		}
		assert.equal((await api(gw, "GET", "/api/config/demo", "reader-token")).body.version, 3);
	});

	it("lets readers read and only the platform administrator write", async () => {
		assert.equal((await api(gw, "PUT", "/api/config/demo", "reader-token", { values: {} })).status, 403);
		assert.equal((await api(gw, "POST", "/api/config/demo/rollback", "reader-token", { version: 1 })).status, 403);
		assert.equal((await api(gw, "GET", "/api/config/demo", "nobody-token")).status, 403);
		assert.equal((await api(gw, "GET", "/api/config/demo", "reader-token")).status, 200);
	});
});

describe("config centre logging", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({ LOG_LEVEL: "debug", TRACING_EXPORTER: "console" }, [DemoConsumer]);
	});
	after(() => gw.stop());

	it("never writes config values to the log, even at debug level with tracing on", async () => {
		const secret = "s3cr3t-Value-4f9a";
		const written: string[] = [];
		const capture = (stream: NodeJS.WriteStream) => {
			const original = stream.write.bind(stream);
			stream.write = ((chunk: unknown, ...rest: unknown[]) => {
				written.push(String(chunk));
				return (original as (...a: unknown[]) => boolean)(chunk, ...rest);
			}) as typeof stream.write;
			return () => (stream.write = original);
		};
		const restore = [capture(process.stdout), capture(process.stderr)];
		try {
			const res = await api(gw, "PUT", "/api/config/demo", "admin-token", { values: { apiKey: secret } });
			assert.equal(res.status, 200);
			await waitFor(async () => ((await gw.broker.call("demo.current")) as Record<string, unknown>).apiKey === secret, "the change to arrive", 1000);
			await new Promise(r => setTimeout(r, 300)); // let console tracing flush its spans
		} finally {
			restore.forEach(r => r());
		}
		const log = written.join("");
		assert.match(log, /Namespace 'demo' is now at version 1/, "the change itself is logged");
		const at = log.indexOf(secret);
		assert.ok(at < 0, `a config value reached the log: ${log.slice(Math.max(0, at - 300), at + 50)}`);
	});
});
