/**
 * The data dictionary through the real gateway over HTTP (embedded, NeDB), and its cache kept
 * right across two nodes over a real NATS sharing PostgreSQL.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { Context, ServiceBroker } from "moleculer";
import DataDictService from "../../services/org/datadict.service";
import type { AuthenticatedUser } from "../../types/access";
import { createTestBroker } from "../support/broker";
import { startPlatform, type RunningGateway } from "../support/platform";
import { startNats, testPostgres, waitFor, type PostgresServer, type ServerProcess } from "../support/servers";
import { securityStub } from "../support/security.stub";

const user = (id: string, companyId: string | null, permissions: string[], extra: Partial<AuthenticatedUser> = {}): AuthenticatedUser => ({
	id, username: id, companyId, roles: [], permissions, ...extra,
});

/** Users of two companies, until the real security service is in these tests. */
const USERS: Record<string, AuthenticatedUser> = {
	admin: user("admin", null, [], { platformAdmin: true }),
	c1writer: user("c1writer", "c1", ["dict:read", "dict:write"]),
	c1reader: user("c1reader", "c1", ["dict:read"]),
	c1nobody: user("c1nobody", "c1", []),
	c2writer: user("c2writer", "c2", ["dict:read", "dict:write"]),
};

const TestSecurity = securityStub(USERS);

async function api(gw: RunningGateway, method: string, path: string, token: string, body?: unknown) {
	const res = await fetch(gw.url + path, {
		method,
		headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	return { status: res.status, body: (await res.json()) as any };
}

const codes = (res: { body: { rows: { code: string }[] } }) => res.body.rows.map(r => r.code).sort();

describe("datadict over HTTP", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({}, [TestSecurity, DataDictService], { withSecurity: false });
		await waitFor(async () => (await api(gw, "GET", "/api/dicts", "c1reader")).status === 200, "the dictionary routes");
	});
	after(() => gw.stop());

	it("lets the platform administrator create a global dictionary every company sees", async () => {
		const created = await api(gw, "POST", "/api/dicts", "admin", {
			code: "gender", name: "Gender", items: [{ value: "f", label: "Female", order: 2 }, { value: "m", label: "Male", order: 1 }],
		});
		assert.equal(created.status, 200, JSON.stringify(created.body));
		assert.equal(created.body.global, true);
		assert.equal(created.body.companyId, null);
		assert.equal(created.body.status, "enabled");
		assert.deepEqual(created.body.items.map((i: { value: string }) => i.value), ["m", "f"], "items by order");
		for (const token of ["c1reader", "c2writer"]) {
			const list = await api(gw, "GET", "/api/dicts", token);
			assert.equal(list.status, 200);
			assert.deepEqual(codes(list), ["gender"]);
			assert.equal(list.body.rows[0].itemCount, 2);
			assert.equal(list.body.rows[0].items, undefined, "lists leave the items out");
			const items = await api(gw, "GET", "/api/dicts/gender/items", token);
			assert.deepEqual(items.body, [
				{ value: "m", label: "Male", order: 1, status: "enabled" },
				{ value: "f", label: "Female", order: 2, status: "enabled" },
			]);
		}
	});

	it("keeps a company's own dictionary to that company: another company gets 404 for everything", async () => {
		const created = await api(gw, "POST", "/api/dicts", "c1writer", { code: "priority", name: "Priority", description: "Ticket priority" });
		assert.equal(created.status, 200, JSON.stringify(created.body));
		assert.equal(created.body.companyId, "c1");
		assert.equal(created.body.global, false);
		assert.equal(created.body.companyId, "c1");

		assert.deepEqual(codes(await api(gw, "GET", "/api/dicts", "c1reader")), ["gender", "priority"]);
		assert.deepEqual(codes(await api(gw, "GET", "/api/dicts", "c2writer")), ["gender"]);
		for (const [method, path, body] of [
			["GET", "/api/dicts/priority/items", undefined],
			["PUT", "/api/dicts/priority", { name: "Mine now" }],
			["DELETE", "/api/dicts/priority", undefined],
			["POST", "/api/dicts/priority/items", { value: "x", label: "X" }],
			["PUT", "/api/dicts/priority/items/x", { label: "X" }],
			["DELETE", "/api/dicts/priority/items/x", undefined],
		] as const) {
			const res = await api(gw, method, path, "c2writer", body);
			assert.equal(res.status, 404, `${method} ${path}`);
			assert.equal(res.body.type, "NOT_FOUND");
		}
		// Naming the other company is the platform administrator's privilege.
		assert.equal((await api(gw, "GET", "/api/dicts?companyId=c1", "c2writer")).status, 403);
		// The platform administrator sees the global ones, or a company's when it names it.
		assert.deepEqual(codes(await api(gw, "GET", "/api/dicts", "admin")), ["gender"]);
		assert.deepEqual(codes(await api(gw, "GET", "/api/dicts?companyId=c1", "admin")), ["gender", "priority"]);

		// The other company may have its own dictionary of the same code.
		const own = await api(gw, "POST", "/api/dicts", "c2writer", { code: "priority", name: "Their priority" });
		assert.equal(own.status, 200);
		const mine = await api(gw, "GET", "/api/dicts?search=prior", "c1reader");
		assert.deepEqual(mine.body.rows.map((r: { name: string }) => r.name), ["Priority"]);
	});

	it("refuses a company's changes to a global dictionary with 403, and lets the platform administrator make them", async () => {
		for (const [method, path, body] of [
			["PUT", "/api/dicts/gender", { name: "Sex" }],
			["DELETE", "/api/dicts/gender", undefined],
			["POST", "/api/dicts/gender/items", { value: "x", label: "Other" }],
			["PUT", "/api/dicts/gender/items/m", { label: "Man" }],
			["DELETE", "/api/dicts/gender/items/m", undefined],
		] as const) {
			const res = await api(gw, method, path, "c1writer", body);
			assert.equal(res.status, 403, `${method} ${path}`);
			assert.equal(res.body.type, "GLOBAL_DICTIONARY");
			assert.match(res.body.message, /only the platform administrator/);
		}
		assert.equal((await api(gw, "GET", "/api/dicts/gender/items", "c1reader")).body.length, 2, "nothing changed");
		const added = await api(gw, "POST", "/api/dicts/gender/items", "admin", { value: "x", label: "Other" });
		assert.equal(added.status, 200);
		assert.deepEqual(added.body, { value: "x", label: "Other", order: 3, status: "enabled" });
	});

	it("answers 409 for a code that clashes with a global or an existing dictionary, and for a repeated item value", async () => {
		const clashes: [string, unknown, RegExp][] = [
			["c1writer", { code: "gender", name: "Mine" }, /already a global dictionary/],
			["c1writer", { code: "priority", name: "Again" }, /already exists/],
			["admin", { code: "gender", name: "Again" }, /already exists/],
			["admin", { code: "priority", name: "Global" }, /company's own dictionary/],
		];
		for (const [token, body, message] of clashes) {
			const res = await api(gw, "POST", "/api/dicts", token, body);
			assert.equal(res.status, 409, JSON.stringify(body));
			assert.equal(res.body.type, "CONFLICT");
			assert.match(res.body.message, message);
		}
		assert.deepEqual(codes(await api(gw, "GET", "/api/dicts", "admin")), ["gender"], "no global 'priority' left behind");

		assert.equal((await api(gw, "POST", "/api/dicts/priority/items", "c1writer", { value: "high", label: "High" })).status, 200);
		const dup = await api(gw, "POST", "/api/dicts/priority/items", "c1writer", { value: "high", label: "Also high" });
		assert.equal(dup.status, 409);
		assert.match(dup.body.message, /already has an item 'high'/);
		assert.deepEqual((await api(gw, "GET", "/api/dicts/priority/items", "c1reader")).body.map((i: { label: string }) => i.label), ["High"]);
	});

	it("changes, orders, filters and removes items, and changes and removes dictionaries", async () => {
		await api(gw, "POST", "/api/dicts/priority/items", "c1writer", { value: "low", label: "Low", order: 10 });
		await api(gw, "POST", "/api/dicts/priority/items", "c1writer", { value: "mid", label: "Medium", order: 5 });
		const changed = await api(gw, "PUT", "/api/dicts/priority/items/high", "c1writer", { label: "Urgent", order: 1, status: "disabled" });
		assert.equal(changed.status, 200);
		assert.deepEqual(changed.body, { value: "high", label: "Urgent", order: 1, status: "disabled" });
		const items = await api(gw, "GET", "/api/dicts/priority/items", "c1reader");
		assert.deepEqual(items.body.map((i: { value: string }) => i.value), ["high", "mid", "low"]);
		const enabled = await api(gw, "GET", "/api/dicts/priority/items?status=enabled", "c1reader");
		assert.deepEqual(enabled.body.map((i: { value: string }) => i.value), ["mid", "low"]);

		const removed = await api(gw, "DELETE", "/api/dicts/priority/items/mid", "c1writer");
		assert.equal(removed.status, 200);
		assert.equal(removed.body.value, "mid");
		assert.equal((await api(gw, "DELETE", "/api/dicts/priority/items/mid", "c1writer")).status, 404);
		assert.equal((await api(gw, "PUT", "/api/dicts/priority/items/none", "c1writer", { label: "x" })).status, 404);

		const renamed = await api(gw, "PUT", "/api/dicts/priority", "c1writer", { name: "Urgency", status: "disabled" });
		assert.equal(renamed.status, 200);
		assert.equal(renamed.body.name, "Urgency");
		assert.equal(renamed.body.description, "Ticket priority", "fields not given stay");
		assert.deepEqual((await api(gw, "GET", "/api/dicts?status=disabled", "c1reader")).body.rows.map((r: { name: string }) => r.name), ["Urgency"]);

		const temp = await api(gw, "POST", "/api/dicts", "c1writer", { code: "temp.codes", name: "Temporary", items: [{ value: "a", label: "A" }] });
		assert.equal(temp.status, 200);
		const gone = await api(gw, "DELETE", "/api/dicts/temp.codes", "c1writer");
		assert.equal(gone.status, 200);
		assert.equal(gone.body.code, "temp.codes");
		assert.equal((await api(gw, "GET", "/api/dicts/temp.codes/items", "c1reader")).status, 404);
		// The code is free again.
		assert.equal((await api(gw, "POST", "/api/dicts", "c1writer", { code: "temp.codes", name: "Again" })).status, 200);
	});

	it("accepts item values of any script in the URL", async () => {
		await api(gw, "POST", "/api/dicts", "c1writer", { code: "sex-cn", name: "性别" });
		assert.equal((await api(gw, "POST", "/api/dicts/sex-cn/items", "c1writer", { value: "男", label: "男性" })).status, 200);
		const changed = await api(gw, "PUT", `/api/dicts/sex-cn/items/${encodeURIComponent("男")}`, "c1writer", { label: "男士" });
		assert.equal(changed.status, 200, JSON.stringify(changed.body));
		assert.deepEqual((await api(gw, "GET", "/api/dicts/sex-cn/items", "c1reader")).body, [{ value: "男", label: "男士", order: 0, status: "enabled" }]);
	});

	it("stores injection-shaped text verbatim and answers it unchanged", async () => {
		const sql = "'; DROP TABLE users; --";
		const html = "<script>alert(\"x\")</script>";
		const created = await api(gw, "POST", "/api/dicts", "c1writer", { code: "weird", name: html, description: sql, items: [{ value: "v1", label: sql }] });
		assert.equal(created.status, 200);
		await api(gw, "POST", "/api/dicts/weird/items", "c1writer", { value: "v2", label: html });
		const items = await api(gw, "GET", "/api/dicts/weird/items", "c1reader");
		assert.deepEqual(items.body.map((i: { label: string }) => i.label), [sql, html]);
		const row = (await api(gw, "GET", "/api/dicts?search=weird", "c1reader")).body.rows[0];
		assert.equal(row.name, html);
		assert.equal(row.description, sql);
		// A search text that looks like a pattern finds nothing rather than everything.
		assert.equal((await api(gw, "GET", `/api/dicts?search=${encodeURIComponent(".*")}`, "c1reader")).body.total, 0);
	});

	it("refuses bad input with a 4xx that says what was wrong, and writes nothing", async () => {
		const before = await api(gw, "GET", "/api/dicts?pageSize=100", "c1reader");
		const beforeItems = await api(gw, "GET", "/api/dicts/priority/items", "c1reader");
		const many = Array.from({ length: 1001 }, (_, i) => ({ value: `v${i}`, label: "x" }));
		const cases: [string, string, unknown, number, RegExp][] = [
			["POST", "/api/dicts", { name: "No code" }, 422, /code/],
			["POST", "/api/dicts", { code: "nocode" }, 422, /name/],
			["POST", "/api/dicts", { code: 42, name: "x" }, 422, /code/],
			["POST", "/api/dicts", { code: "Bad Code", name: "x" }, 422, /'code' must be/],
			["POST", "/api/dicts", { code: "a".repeat(65), name: "x" }, 422, /'code' must be/],
			["POST", "/api/dicts", { code: "x'; DROP TABLE dict_types; --", name: "x" }, 422, /'code' must be/],
			["POST", "/api/dicts", { code: "okcode", name: "x".repeat(101) }, 422, /name/],
			["POST", "/api/dicts", { code: "okcode", name: "x", description: "d".repeat(501) }, 422, /description/],
			["POST", "/api/dicts", { code: "okcode", name: "x", status: "maybe" }, 422, /status/],
			["POST", "/api/dicts", { code: "okcode", name: "x", unexpected: true }, 422, /forbidden keys/],
			["POST", "/api/dicts", { code: "okcode", name: "x", companyId: "c2" }, 403, /platform administrator/],
			["POST", "/api/dicts", { code: "okcode", name: "x", items: "none" }, 422, /items/],
			["POST", "/api/dicts", { code: "okcode", name: "x", items: [{ value: "a" }] }, 422, /label/],
			["POST", "/api/dicts", { code: "okcode", name: "x", items: [{ value: "a", label: "A", colour: "red" }] }, 422, /forbidden keys|colour/],
			["POST", "/api/dicts", { code: "okcode", name: "x", items: [{ value: "a", label: "A" }, { value: "a", label: "B" }] }, 422, /appears twice/],
			["POST", "/api/dicts", { code: "okcode", name: "x", items: many }, 422, /items/],
			["PUT", "/api/dicts/priority", {}, 422, /Nothing to change/],
			["PUT", "/api/dicts/priority", { name: 7 }, 422, /name/],
			["POST", "/api/dicts/priority/items", { value: "has space", label: "x" }, 422, /'value' must be/],
			["POST", "/api/dicts/priority/items", { value: "a/b", label: "x" }, 422, /'value' must be/],
			["POST", "/api/dicts/priority/items", { value: "ok", label: "" }, 422, /label/],
			["POST", "/api/dicts/priority/items", { value: "ok", label: "l".repeat(201) }, 422, /label/],
			["POST", "/api/dicts/priority/items", { value: "ok", label: "x", order: 1.5 }, 422, /order/],
			["POST", "/api/dicts/priority/items", { value: "ok", label: "x", order: "first" }, 422, /order/],
			["PUT", "/api/dicts/priority/items/high", {}, 422, /Nothing to change/],
			["PUT", "/api/dicts/priority/items/high", { label: ["x"] }, 422, /label/],
			["GET", "/api/dicts?page=0", undefined, 422, /page/],
			["GET", "/api/dicts?pageSize=1000", undefined, 422, /pageSize/],
			["GET", "/api/dicts/BAD!/items", undefined, 422, /'code' must be/],
		];
		for (const [method, path, body, status, message] of cases) {
			const res = await api(gw, method, path, "c1writer", body);
			assert.equal(res.status, status, `${method} ${path} ${JSON.stringify(body)?.slice(0, 80)}: ${JSON.stringify(res.body).slice(0, 200)}`);
			assert.match(JSON.stringify(res.body), message, `${method} ${path}`);
		}
		assert.deepEqual(await api(gw, "GET", "/api/dicts?pageSize=100", "c1reader"), before);
		assert.deepEqual(await api(gw, "GET", "/api/dicts/priority/items", "c1reader"), beforeItems);
	});

	it("lets readers read, and only dict:write holders write", async () => {
		assert.equal((await api(gw, "POST", "/api/dicts", "c1reader", { code: "nope", name: "x" })).status, 403);
		assert.equal((await api(gw, "POST", "/api/dicts/priority/items", "c1reader", { value: "z", label: "z" })).status, 403);
		assert.equal((await api(gw, "GET", "/api/dicts", "c1nobody")).status, 403);
		assert.equal((await api(gw, "GET", "/api/dicts", "unknown-token")).status, 401);
	});

	it("keeps every item when many writers add items to one dictionary at once", async () => {
		await api(gw, "POST", "/api/dicts", "c1writer", { code: "busy", name: "Busy" });
		const adds = await Promise.all(
			Array.from({ length: 12 }, (_, i) => api(gw, "POST", "/api/dicts/busy/items", "c1writer", { value: `v${i}`, label: `Item ${i}` })),
		);
		assert.deepEqual(adds.map(a => a.status), adds.map(() => 200));
		const items = await api(gw, "GET", "/api/dicts/busy/items", "c1reader");
		assert.deepEqual(items.body.map((i: { value: string }) => i.value).sort(), Array.from({ length: 12 }, (_, i) => `v${i}`).sort());
	});

	it("answers the new state at once after a change, though reads are cached", async () => {
		const first = await api(gw, "GET", "/api/dicts/busy/items", "c1reader");
		await api(gw, "PUT", "/api/dicts/busy/items/v0", "c1writer", { label: "Renamed" });
		const second = await api(gw, "GET", "/api/dicts/busy/items", "c1reader");
		assert.notDeepEqual(second.body, first.body);
		assert.equal(second.body.find((i: { value: string }) => i.value === "v0").label, "Renamed");
	});

	it("emits datadict.dict.* events with the record and the acting user", async () => {
		const seen: { event: string; code: string; user: string | null }[] = [];
		const listener = gw.broker.createService({
			name: "dict-listener",
			events: {
				"datadict.dict.*"(ctx: Context<{ entity: { code: string }; user: { username: string } | null }>) {
					seen.push({ event: String(ctx.eventName), code: ctx.params.entity.code, user: ctx.params.user?.username ?? null });
				},
			},
		});
		await gw.broker.waitForServices("dict-listener");
		try {
			await api(gw, "POST", "/api/dicts", "c1writer", { code: "evented", name: "Evented" });
			await api(gw, "POST", "/api/dicts/evented/items", "c1writer", { value: "a", label: "A" });
			await api(gw, "DELETE", "/api/dicts/evented", "c1writer");
			await waitFor(() => seen.length >= 3, "three events");
			assert.deepEqual(seen, [
				{ event: "datadict.dict.created", code: "evented", user: "c1writer" },
				{ event: "datadict.dict.updated", code: "evented", user: "c1writer" },
				{ event: "datadict.dict.removed", code: "evented", user: "c1writer" },
			]);
		} finally {
			await gw.broker.destroyService(listener);
		}
	});
});

describe("datadict across nodes over real NATS sharing PostgreSQL", () => {
	let nats: ServerProcess & { url: string };
	let pg: PostgresServer & { owned: boolean };
	const brokers: ServiceBroker[] = [];
	let a: ServiceBroker;
	let b: ServiceBroker;
	const meta = { user: USERS.c1writer };

	before(async () => {
		[nats, pg] = await Promise.all([startNats(), testPostgres()]);
		const env = { TRANSPORTER: nats.url, NAMESPACE: `dict-${randomUUID().slice(0, 8)}`, DATABASE_URL: await pg.createDatabase("datadict_nodes") };
		for (const nodeID of ["dict-a", "dict-b"]) {
			const broker = createTestBroker({ ...env, NODE_ID: nodeID });
			broker.createService(DataDictService);
			brokers.push(broker);
			await broker.start();
		}
		[a, b] = brokers;
		await waitFor(() => a.registry.getServiceList({ skipInternal: true }).filter(s => s.name === "datadict").length === 2, "both datadict replicas");
	});

	after(async () => {
		for (const broker of brokers.reverse()) await broker.stop().catch(() => {});
		await nats?.stop();
		if (pg?.owned) await pg.stop();
	});

	it("cleans node B's cached dictionaries when node A changes one", async () => {
		const created = (await a.call("datadict.create", { code: "colours", name: "Colours", items: [{ value: "red", label: "Red" }] }, { meta, nodeID: "dict-a" })) as { id: string };
		// Node B answers from its own memory cache (local calls are preferred).
		const list = () => b.call("datadict.list", {}, { meta }) as Promise<{ rows: { name: string; itemCount: number }[] }>;
		const items = () => b.call("datadict.items", { code: "colours" }, { meta }) as Promise<{ value: string }[]>;
		assert.deepEqual((await list()).rows.map(r => r.name), ["Colours"]);
		assert.deepEqual((await items()).map(i => i.value), ["red"]);

		// A change written behind the services' backs shows nothing: B's answers are cached.
		const adapter = (b.getLocalService("datadict") as unknown as { adapter: { updateById(id: string, u: object): Promise<unknown> } }).adapter;
		await adapter.updateById(created.id, { $set: { name: "Renamed behind" } });
		assert.deepEqual((await list()).rows.map(r => r.name), ["Colours"]);

		await a.call("datadict.addItem", { code: "colours", value: "blue", label: "Blue" }, { meta, nodeID: "dict-a" });
		await waitFor(async () => (await items()).length === 2, "node B's item cache to be cleaned", 2_000);
		assert.deepEqual((await list()).rows.map(r => [r.name, r.itemCount]), [["Renamed behind", 2]]);
	});

	it("keeps every item when writers on both nodes add to one dictionary at once", async () => {
		await a.call("datadict.create", { code: "shared", name: "Shared" }, { meta, nodeID: "dict-a" });
		await Promise.all(
			Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).call("datadict.addItem", { code: "shared", value: `v${i}`, label: `V${i}` }, { meta, nodeID: i % 2 ? "dict-a" : "dict-b" })),
		);
		const items = (await a.call("datadict.items", { code: "shared" }, { meta })) as { value: string }[];
		assert.equal(items.length, 10);
	});
});
