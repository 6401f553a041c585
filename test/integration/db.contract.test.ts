/**
 * The db mixin's contract, run against every store available here: NeDB files always,
 * PostgreSQL always (the test run starts one), MongoDB when MONGO_URI is set.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Context, ServiceBroker, ServiceSchema } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import type { EntityDefinition } from "../../types/entity";
import { createTestBroker, tempDir } from "../support/broker";
import { testPostgres, type PostgresServer } from "../support/servers";

const Things: EntityDefinition = {
	name: "things",
	fields: {
		name: { type: "string", required: true, max: 100 },
		code: { type: "string", required: true, max: 40 },
		companyId: { type: "string" },
		count: { type: "integer" },
		score: { type: "number" },
		active: { type: "boolean" },
		tags: { type: "json" },
		at: { type: "date" },
	},
	indexes: [
		{ fields: ["code"], unique: true },
		{ fields: ["companyId", "name"], unique: true },
	],
	searchFields: ["name", "code"],
};

const ThingsService: ServiceSchema = {
	name: "things",
	mixins: [DbMixin(Things)],
	actions: {
		// A cached action, to show that changes clean the cache.
		total: { cache: true, handler(this: DbMethods, ctx: Context) { return this.countEntities(ctx); } },
	},
};

type Svc = DbMethods & { broker: ServiceBroker };

let pg: PostgresServer | undefined;
const stores: { name: string; env: () => Promise<Record<string, string>> }[] = [
	{ name: "nedb", env: async () => ({ DATA_DIR: tempDir() }) },
	{ name: "postgres", env: async () => ({ DATABASE_URL: await pg!.createDatabase(`contract_${Date.now()}`) }) },
];
if (process.env.MONGO_URI) stores.push({ name: "mongo", env: async () => ({ MONGO_URI: process.env.MONGO_URI! }) });

before(async () => {
	pg = await testPostgres();
});
after(async () => {
	await pg?.stop();
});

for (const store of stores) {
	describe(`db.mixin on ${store.name}`, () => {
		let env: Record<string, string>;
		let broker: ServiceBroker;
		let svc: Svc;
		let ctx: Context;

		async function boot() {
			broker = createTestBroker(env);
			broker.createService(ThingsService);
			await broker.start();
			svc = broker.getLocalService("things") as unknown as Svc;
			ctx = broker.ContextFactory.create(broker, null as never, {}, {}) as Context;
		}

		before(async () => {
			env = await store.env();
			await boot();
		});
		after(async () => {
			await broker.stop();
		});

		const thing = (n: number, extra: Record<string, unknown> = {}) => ({
			name: `Thing ${n}`, code: `T-${n}`, companyId: "c1", count: n, score: n / 2, active: n % 2 === 0,
			tags: { "a.b": n, $odd: n % 2 === 1, list: [n] }, at: new Date(Date.UTC(2026, 0, n)).toISOString(), ...extra,
		});

		it("creates a record with a generated string id and reads it back field for field", async () => {
			const created = await svc.createEntity(ctx, thing(1));
			assert.equal(typeof created.id, "string");
			assert.ok((created.id as string).length >= 16);
			const got = await svc.getEntity(ctx, created.id as string);
			assert.deepEqual(got, { id: created.id, ...thing(1) });
		});

		it("keeps only declared fields and answers null for an unknown id", async () => {
			const created = await svc.createEntity(ctx, { ...thing(2), isAdmin: true, password: "x" });
			assert.equal("isAdmin" in created, false);
			assert.equal("password" in created, false);
			assert.equal(await svc.getEntity(ctx, "no-such-id"), null);
		});

		it("answers 409 for a duplicate unique key, single or compound, and writes nothing", async () => {
			const before = await svc.countEntities(ctx);
			await assert.rejects(svc.createEntity(ctx, thing(1, { name: "Other name" })), { code: 409, type: "CONFLICT" });
			await assert.rejects(svc.createEntity(ctx, thing(1, { code: "T-other" })), { code: 409, type: "CONFLICT" });
			assert.equal(await svc.countEntities(ctx), before);
			// The same name in another company is fine.
			await svc.createEntity(ctx, thing(1, { code: "T-1b", companyId: "c2" }));
		});

		it("translates every query operator", async () => {
			for (const n of [3, 4, 5, 6]) await svc.createEntity(ctx, thing(n));
			const names = async (query: Record<string, unknown>) =>
				(await svc.findEntities(ctx, { query: { companyId: "c1", ...query }, sort: ["count"] })).map(d => d.count);

			assert.deepEqual(await names({ count: 3 }), [3]);
			assert.deepEqual(await names({ count: { $eq: 4 } }), [4]);
			assert.deepEqual(await names({ count: { $ne: 4, $lte: 5 } }), [1, 2, 3, 5]);
			assert.deepEqual(await names({ count: { $gt: 3, $lt: 6 } }), [4, 5]);
			assert.deepEqual(await names({ count: { $gte: 5 } }), [5, 6]);
			assert.deepEqual(await names({ count: { $in: [2, 6, 99] } }), [2, 6]);
			assert.deepEqual(await names({ count: { $nin: [1, 2, 3] } }), [4, 5, 6]);
			assert.deepEqual(await names({ active: true }), [2, 4, 6]);
			assert.deepEqual(await names({ $or: [{ count: 1 }, { code: "T-6" }] }), [1, 6]);
			assert.deepEqual(await names({ $and: [{ count: { $gt: 1 } }, { count: { $lt: 3 } }] }), [2]);
			assert.deepEqual(await names({ at: { $gte: new Date(Date.UTC(2026, 0, 5)).toISOString() } }), [5, 6]);
			assert.deepEqual(await names({ name: { $contains: "THING 4" } }), [4]);
			assert.deepEqual(await names({ id: { $in: [] } }), []);
		});

		it("treats $contains text literally (no wildcard or regex injection)", async () => {
			await svc.createEntity(ctx, thing(7, { name: "100% a_b.c (x)" }));
			const find = (text: string) => svc.findEntities(ctx, { query: { name: { $contains: text } } });
			assert.equal((await find("100% a_b.c (x)")).length, 1);
			assert.equal((await find("%")).length, 1);
			assert.equal((await find("a%b")).length, 0);
			assert.equal((await find("_")).length, 1);
			assert.equal((await find(".*")).length, 0);
		});

		it("null checks with $exists", async () => {
			await svc.createEntity(ctx, { name: "Bare", code: "BARE", companyId: "c3" });
			const bare = await svc.findEntities(ctx, { query: { companyId: "c3", score: { $exists: false } } });
			assert.deepEqual(bare.map(d => d.code), ["BARE"]);
			assert.equal((await svc.findEntities(ctx, { query: { companyId: "c3", score: { $exists: true } } })).length, 0);
			assert.equal(bare[0].tags, null);
		});

		it("searches only inside the query (search never widens a tenant filter)", async () => {
			await svc.createEntity(ctx, thing(8, { companyId: "c9", name: "Secret thing" }));
			const mine = await svc.findEntities(ctx, { query: { companyId: "c1" }, search: "secret" });
			assert.equal(mine.length, 0);
			const theirs = await svc.findEntities(ctx, { query: { companyId: "c9" }, search: "SECRET" });
			assert.equal(theirs.length, 1);
			assert.equal((await svc.findEntities(ctx, { query: { companyId: "c1" }, search: "t-3" }))[0].count, 3);
		});

		it("lists pages in moleculer-db's shape, sorted either way, and refuses an unknown sort field", async () => {
			const page = await svc.listEntities(ctx, { query: { companyId: "c1" }, sort: ["-count"], page: 2, pageSize: 2 });
			assert.equal(page.total, 7);
			assert.equal(page.totalPages, 4);
			assert.equal(page.page, 2);
			assert.equal(page.pageSize, 2);
			assert.deepEqual(page.rows.map(r => r.count), [5, 4]);
			const big = await svc.listEntities(ctx, { query: { companyId: "c1" }, pageSize: 10_000 });
			assert.equal(big.pageSize, 100);
			await assert.rejects(svc.listEntities(ctx, { sort: ["password"] }), { code: 422 });
		});

		it("updates one record partially, and answers null for an unknown id", async () => {
			const [one] = await svc.findEntities(ctx, { query: { code: "T-3" } });
			const updated = await svc.updateEntity(ctx, one.id as string, { score: 42, tags: { x: 1 }, role: "admin" });
			assert.equal(updated!.score, 42);
			assert.deepEqual(updated!.tags, { x: 1 });
			assert.equal(updated!.name, "Thing 3");
			assert.equal("role" in updated!, false);
			assert.deepEqual(await svc.getEntity(ctx, one.id as string), updated);
			assert.equal(await svc.updateEntity(ctx, "no-such-id", { score: 1 }), null);
			await assert.rejects(svc.updateEntity(ctx, one.id as string, { code: "T-4" }), { code: 409 });
		});

		it("compare-and-set: updateEntities changes only what still matches", async () => {
			const [one] = await svc.findEntities(ctx, { query: { code: "T-4" } });
			assert.equal(await svc.updateEntities(ctx, { id: one.id, count: 4 }, { count: 40 }), 1);
			assert.equal(await svc.updateEntities(ctx, { id: one.id, count: 4 }, { count: 41 }), 0);
			assert.equal((await svc.getEntity(ctx, one.id as string))!.count, 40);
		});

		it("cleans the cache of the service when an entity changes", async () => {
			const first = await broker.call("things.total");
			await svc.createEntity(ctx, thing(20));
			assert.equal(await broker.call("things.total"), (first as number) + 1);
		});

		it("removes one record or many", async () => {
			const [one] = await svc.findEntities(ctx, { query: { code: "T-5" } });
			const removed = await svc.removeEntity(ctx, one.id as string);
			assert.equal(removed!.code, "T-5");
			assert.equal(await svc.getEntity(ctx, one.id as string), null);
			assert.equal(await svc.removeEntity(ctx, one.id as string), null);
			assert.equal(await svc.removeEntities(ctx, { companyId: "c2" }), 1);
			assert.equal(await svc.countEntities(ctx, { query: { companyId: "c2" } }), 0);
		});

		it("keeps the data across a restart", async () => {
			const count = await svc.countEntities(ctx);
			await broker.stop();
			await boot();
			assert.equal(await svc.countEntities(ctx), count);
			assert.ok(count > 5);
		});
	});
}
