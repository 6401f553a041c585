/**
 * App messages end to end through the gateway: embedded (one process, NeDB) for every rule, and
 * one scenario as a cluster (two nodes over real NATS, PostgreSQL, Redis). Pushes are watched by
 * a probe service in the `socket` event group, where `lib/realtime/push` broadcasts them.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Context, ServiceBroker, ServiceSchema } from "moleculer";
import { createCompany, expectStatus, startOrg, startOrgCluster, unique, type Api, type RunningOrg, type TestCompany } from "../support/org";
import { waitFor } from "../support/servers";
import type { Push } from "../../lib/realtime/push";
import type { AppMessage, AppMessageCreated } from "../../types/messaging";
import type { EntityEvent } from "../../types/org";

const YEAR = 365 * 24 * 3600 * 1000;
const PASSWORD = "Passw0rd-user";

interface Probe {
	name: string;
	pushes: Push[];
	created: EntityEvent<AppMessageCreated>[];
}

/** Records `realtime.push` as the TCP channel gets it (every member of the `socket` group) and the domain event. */
function startProbe(broker: ServiceBroker): Probe {
	const probe: Probe = { name: unique("appmsg-probe-"), pushes: [], created: [] };
	const schema: ServiceSchema = {
		name: probe.name,
		events: {
			"realtime.push": { group: "socket", handler: (ctx: Context<Push>) => void probe.pushes.push(ctx.params) },
			"appmsg.message.created": (ctx: Context<EntityEvent<AppMessageCreated>>) => void probe.created.push(ctx.params),
		},
	};
	broker.createService(schema);
	return probe;
}

/** The rooms `app.message` pushes of message `id` went to, sorted (duplicates kept, so a double push shows). */
const pushedRooms = (probe: Probe, id: string) =>
	probe.pushes.filter(p => p.event === "app.message" && (p.data as AppMessage).id === id).flatMap(p => p.rooms).sort();
const rooms = (...userIds: string[]) => userIds.map(id => `user:${id}`).sort();

async function waitForPushes(probe: Probe, id: string, expected: string[]) {
	await waitFor(() => pushedRooms(probe, id).length >= expected.length, `the pushes of message ${id}`);
	assert.deepEqual(pushedRooms(probe, id), rooms(...expected));
}

async function licensedCompany(org: RunningOrg): Promise<TestCompany> {
	const key = expectStatus(
		await org.admin.post("/api/licenses", {
			licensee: "Test Co", type: "enterprise", edition: "commercial", seats: 50, features: ["messaging"], expiresAt: new Date(Date.now() + YEAR).toISOString(),
		}),
		200,
		"issue licence",
	).key as string;
	return createCompany(org, { licenseKey: key });
}

async function createUser(company: TestCompany, name: string, deptId: string | null, roleIds: string[] = []): Promise<string> {
	return expectStatus(await company.admin.post("/api/users", { username: `${company.code}-${name}`, password: PASSWORD, name, deptId, roleIds }), 200, name).id;
}

const send = (api: Api, body: unknown) => api.post("/api/app-messages", body);
const inbox = async (api: Api, query = "") => expectStatus(await api.get(`/api/app-messages${query}`), 200, "inbox") as { rows: AppMessage[]; total: number; page: number; pageSize: number; totalPages: number };
const inboxIds = async (api: Api, query = "?pageSize=100") => (await inbox(api, query)).rows.map(r => r.id);

describe("app messages (embedded)", () => {
	let org: RunningOrg;
	let probe: Probe;
	let a: TestCompany;
	let b: TestCompany;
	const ids: Record<string, string> = {};
	const as: Record<string, Api> = {};
	/** Messages sent so far in company A, oldest first, with their recipients. */
	const sent: { id: string; to: string[] }[] = [];

	/** A send in company A that must succeed with exactly `expected` recipients; records it. */
	async function sendOk(body: Record<string, unknown>, expected: string[], api = a.admin) {
		const reply = expectStatus(await send(api, { app: "crm", title: unique("Title "), content: "Some content", ...body }), 200, "send");
		assert.equal(reply.recipients, expected.length, "recipients");
		sent.push({ id: reply.id, to: expected });
		await waitForPushes(probe, reply.id, expected);
		return reply.id as string;
	}

	/** The appmsg service of the embedded node, to look at its store. */
	const service = () => org.broker.getLocalService("appmsg") as unknown as {
		countEntities(ctx: unknown, params?: { query?: Record<string, unknown> }): Promise<number>;
		createEntity(ctx: unknown, doc: Record<string, unknown>): Promise<Record<string, unknown>>;
		sweepPending(): Promise<number>;
		config: { maxRecipients: number };
	};
	const storedRows = (query: Record<string, unknown> = {}) => service().countEntities(null, { query });

	before(async () => {
		org = await startOrg();
		probe = startProbe(org.broker);
		a = await licensedCompany(org);
		b = await licensedCompany(org);
		ids.admin = a.admin.user.id;
		ids.hq = expectStatus(await a.admin.post("/api/depts", { name: "HQ" }), 200).id;
		ids.sales = expectStatus(await a.admin.post("/api/depts", { name: "Sales", parentId: ids.hq }), 200).id;
		ids.east = expectStatus(await a.admin.post("/api/depts", { name: "Sales East", parentId: ids.sales }), 200).id;
		ids.rnd = expectStatus(await a.admin.post("/api/depts", { name: "R&D", parentId: ids.hq }), 200).id;
		ids.oncall = expectStatus(await a.admin.post("/api/roles", { name: "On call", code: "oncall", permissions: ["appmsg:read"], dataScope: "self" }), 200).id;
		ids.lead = await createUser(a, "lead", ids.sales, [ids.oncall]);
		ids.seller = await createUser(a, "seller", ids.east);
		ids.engineer = await createUser(a, "engineer", ids.rnd, [ids.oncall]);
		ids.intern = await createUser(a, "intern", ids.rnd);
		expectStatus(await a.admin.put(`/api/users/${ids.intern}/status`, { status: "disabled" }), 200, "disable the intern");
		for (const name of ["lead", "seller", "engineer"]) as[name] = await org.anonymous.login(`${a.code}-${name}`, PASSWORD);

		ids.bAdmin = b.admin.user.id;
		ids.bDept = expectStatus(await b.admin.post("/api/depts", { name: "B HQ" }), 200).id;
		ids.bRole = expectStatus(await b.admin.post("/api/roles", { name: "B role", code: "brole", permissions: ["appmsg:read"], dataScope: "self" }), 200).id;
		ids.bUser = await createUser(b, "buser", ids.bDept, [ids.bRole]);
		as.bUser = await org.anonymous.login(`${b.code}-buser`, PASSWORD);
	});
	after(() => org?.stop());

	it("documents the routes in the OpenAPI document", async () => {
		const doc = expectStatus(await org.anonymous.get("/api/openapi.json"), 200) as { paths: Record<string, Record<string, { description?: string }>> };
		for (const [method, path] of [["post", "/api/app-messages"], ["get", "/api/app-messages"], ["post", "/api/app-messages/{id}/read"], ["post", "/api/app-messages/read-all"]])
			assert.ok(doc.paths[path]?.[method], `${method} ${path}`);
	});

	it("sends to listed users: each one's inbox holds it unread, pushes reach exactly them, the domain event goes once", async () => {
		const id = await sendOk({ title: "Quarterly report", content: "It is out", to: { userIds: [ids.seller, ids.engineer] } }, [ids.seller, ids.engineer]);
		const [row] = (await inbox(as.seller)).rows;
		assert.deepEqual({ ...row, sentAt: typeof row.sentAt }, {
			id, app: "crm", title: "Quarterly report", content: "It is out", sentAt: "string", readAt: null,
			sender: { id: ids.admin, username: `${a.code}-admin`, name: "Admin" },
		});
		assert.ok(!Number.isNaN(Date.parse(row.sentAt)));
		assert.deepEqual((await inbox(as.engineer)).rows.map(r => r.id), [id]);
		assert.ok(!(await inboxIds(as.lead)).includes(id), "not a recipient");
		const push = probe.pushes.find(p => (p.data as AppMessage).id === id)!;
		assert.equal(push.event, "app.message");
		assert.deepEqual(push.data, row, "the push carries the inbox row");
		await waitFor(() => probe.created.some(e => e.entity.id === id), "appmsg.message.created");
		const events = probe.created.filter(e => e.entity.id === id);
		assert.equal(events.length, 1, "one event per message, not per recipient");
		assert.deepEqual({ companyId: events[0].entity.companyId, recipients: events[0].entity.recipients, user: events[0].user?.id }, { companyId: a.id, recipients: 2, user: ids.admin });
	});

	it("sends to a department and every department below it", async () => {
		await sendOk({ to: { deptIds: [ids.sales] } }, [ids.lead, ids.seller]);
		await sendOk({ to: { deptIds: [ids.east] } }, [ids.seller]);
	});

	it("sends to the holders of a role", async () => {
		await sendOk({ to: { roleIds: [ids.oncall] } }, [ids.lead, ids.engineer]);
	});

	it("sends to the whole company, leaving out disabled users everywhere", async () => {
		await sendOk({ to: { company: true } }, [ids.admin, ids.lead, ids.seller, ids.engineer]);
		await sendOk({ to: { deptIds: [ids.rnd], userIds: [ids.intern] } }, [ids.engineer]);
	});

	it("counts a user named by several targets once", async () => {
		const id = await sendOk({ to: { userIds: [ids.lead], deptIds: [ids.sales], roleIds: [ids.oncall] } }, [ids.lead, ids.seller, ids.engineer]);
		assert.equal((await inboxIds(as.lead)).filter(x => x === id).length, 1);
	});

	it("keeps each user's read state: newest first, unread filter, mark read, read-all", async () => {
		const mine = sent.filter(m => m.to.includes(ids.seller)).map(m => m.id).reverse();
		assert.ok(mine.length >= 5);
		assert.deepEqual(await inboxIds(as.seller), mine, "newest first");
		const page = await inbox(as.seller, "?pageSize=2&page=2");
		assert.deepEqual({ total: page.total, page: page.page, pageSize: page.pageSize, totalPages: page.totalPages }, { total: mine.length, page: 2, pageSize: 2, totalPages: Math.ceil(mine.length / 2) });
		assert.deepEqual(page.rows.map(r => r.id), mine.slice(2, 4));
		assert.deepEqual(await inboxIds(as.seller, "?unread=true&pageSize=100"), mine);
		assert.deepEqual(await inboxIds(as.seller, "?unread=false"), []);

		const shared = sent.find(m => m.to.includes(ids.seller) && m.to.includes(ids.lead))!.id;
		const read = expectStatus(await as.seller.post(`/api/app-messages/${shared}/read`), 200, "mark read");
		assert.equal(read.id, shared);
		assert.ok(read.readAt && !Number.isNaN(Date.parse(read.readAt)));
		const again = expectStatus(await as.seller.post(`/api/app-messages/${shared}/read`), 200, "mark read again");
		assert.equal(again.readAt, read.readAt, "the first time stays");
		assert.deepEqual(await inboxIds(as.seller, "?unread=false"), [shared]);
		assert.deepEqual(await inboxIds(as.seller, "?unread=true&pageSize=100"), mine.filter(x => x !== shared));
		assert.ok((await inboxIds(as.lead, "?unread=true&pageSize=100")).includes(shared), "another recipient's copy stays unread");

		assert.deepEqual(expectStatus(await as.seller.post("/api/app-messages/read-all"), 200), { updated: mine.length - 1 });
		assert.equal((await inbox(as.seller, "?unread=true")).total, 0);
		assert.equal((await inbox(as.seller, "?unread=false")).total, mine.length);
		assert.ok((await inbox(as.lead, "?unread=true")).total > 0, "read-all is the caller's own");
	});

	it("answers 404 for a message of someone else's inbox or an unknown id", async () => {
		const onlySeller = sent.find(m => m.to.length === 1 && m.to[0] === ids.seller)!.id;
		const other = await as.lead.post(`/api/app-messages/${onlySeller}/read`);
		assert.equal(other.status, 404);
		assert.equal(other.body.type, "NOT_FOUND");
		assert.equal((await as.lead.post("/api/app-messages/no-such-message/read")).status, 404);
		assert.equal((await as.bUser.post(`/api/app-messages/${onlySeller}/read`)).status, 404, "nor from another company");
	});

	it("refuses a member without appmsg:send with 403, and lets them read", async () => {
		const denied = await send(as.seller, { app: "crm", title: "Hi", content: "x", to: { company: true } });
		assert.equal(denied.status, 403);
		assert.equal(denied.body.data.permission, "appmsg:send");
		assert.equal((await as.seller.get("/api/app-messages")).status, 200);
		assert.ok(a.admin.user.permissions.includes("appmsg:send"), "the company administrator holds it");
	});

	it("keeps companies apart: no other company's recipients, nothing of theirs in my inbox", async () => {
		const before = { rows: await storedRows(), created: probe.created.length, pushes: probe.pushes.length };
		for (const [to, field, bad] of [
			[{ userIds: [ids.seller, ids.bUser] }, "to.userIds", ids.bUser],
			[{ deptIds: [ids.bDept] }, "to.deptIds", ids.bDept],
			[{ roleIds: [ids.oncall, ids.bRole] }, "to.roleIds", ids.bRole],
		] as const) {
			const refused = await send(a.admin, { app: "crm", title: "Cross", content: "x", to });
			assert.equal(refused.status, 422, JSON.stringify(to));
			assert.match(refused.body.message, new RegExp(`'${bad}' not found`));
			assert.equal(refused.body.data.field, field);
		}
		const naming = await send(a.admin, { app: "crm", title: "Cross", content: "x", to: { company: true }, companyId: b.id });
		assert.equal(naming.status, 403, "only the platform administrator names a company");
		assert.deepEqual({ rows: await storedRows(), created: probe.created.length, pushes: probe.pushes.length }, before, "nothing stored, emitted or pushed");
		assert.equal((await inbox(as.bUser)).total, 0);
		assert.equal((await inbox(b.admin)).total, 0);

		const id = expectStatus(await send(b.admin, { app: "crm", title: "B only", content: "x", to: { company: true } }), 200).id;
		await waitForPushes(probe, id, [ids.bAdmin, ids.bUser]);
		assert.deepEqual(await inboxIds(as.bUser), [id]);
		assert.ok(!(await inboxIds(a.admin)).includes(id));
	});

	it("refuses bad input with 422 and a message saying what is wrong, storing nothing", async () => {
		const before = { rows: await storedRows(), created: probe.created.length, pushes: probe.pushes.length };
		const good = { app: "crm", title: "Title", content: "Content", to: { userIds: [ids.seller] } };
		const cases: [string, unknown, RegExp][] = [
			["no to", { app: "crm", title: "T", content: "c" }, /'to' field is required/],
			["empty to", { ...good, to: {} }, /at least one recipient/],
			["empty lists", { ...good, to: { userIds: [], deptIds: [], company: false } }, /at least one recipient/],
			["bad id type", { ...good, to: { userIds: [42] } }, /'to\.userIds\[0\]' field must be a string/],
			["empty id", { ...good, to: { userIds: [""] } }, /'to\.userIds\[0\]'/],
			["unknown user", { ...good, to: { userIds: ["no-such-user"] } }, /User 'no-such-user' not found/],
			["unknown dept", { ...good, to: { deptIds: ["no-such-dept"] } }, /Department 'no-such-dept' not found/],
			["duplicate ids", { ...good, to: { userIds: [ids.seller, ids.seller] } }, /'to\.userIds'.*unique/],
			["long title", { ...good, title: "x".repeat(201) }, /'title'.*200/],
			["blank title", { ...good, title: "   " }, /'title'/],
			["long content", { ...good, content: "x".repeat(4001) }, /'content'.*4000/],
			["bad app", { ...good, app: "Bad App!" }, /'app' must be 2-32 characters/],
			["unknown field", { ...good, priority: "high" }, /forbidden keys: 'priority'/],
			["unknown target", { ...good, to: { userIds: [ids.seller], groupIds: ["g"] } }, /'to' contains forbidden keys: 'groupIds'/],
		];
		for (const [what, body, message] of cases) {
			const reply = await send(a.admin, body);
			assert.equal(reply.status, 422, `${what}: ${JSON.stringify(reply.body)}`);
			const text = [reply.body.message, ...(Array.isArray(reply.body.data) ? reply.body.data.map((d: { message: string }) => d.message) : [])].join(" | ");
			assert.match(text, message, what);
		}
		assert.deepEqual({ rows: await storedRows(), created: probe.created.length, pushes: probe.pushes.length }, before, "nothing stored, emitted or pushed");
	});

	it("caps the recipients of one message (config appmsg.maxRecipients)", async () => {
		expectStatus(await org.admin.put("/api/config/appmsg", { values: { maxRecipients: 2 } }), 200, "set the cap");
		try {
			await waitFor(() => service().config.maxRecipients === 2, "the cap to apply");
			const rows = await storedRows();
			const over = await send(a.admin, { app: "crm", title: "All", content: "x", to: { company: true } });
			assert.equal(over.status, 422);
			assert.equal(over.body.type, "TOO_MANY_RECIPIENTS");
			assert.equal(over.body.data.max, 2);
			assert.equal(await storedRows(), rows, "nothing stored");
			await sendOk({ to: { userIds: [ids.lead, ids.seller] } }, [ids.lead, ids.seller]);
		} finally {
			expectStatus(await org.admin.put("/api/config/appmsg", { values: {} }), 200, "reset the cap");
		}
		await waitFor(() => service().config.maxRecipients === 10_000, "the default cap");
	});

	it("lets the platform administrator send in the company it names, and services through appmsg.send", async () => {
		const unnamed = await send(org.admin, { app: "platform", title: "Maintenance", content: "Tonight", to: { company: true } });
		assert.equal(unnamed.status, 422);
		assert.equal(unnamed.body.data.field, "companyId");
		const id = await sendOk({ app: "platform", title: "Maintenance", content: "Tonight", to: { userIds: [ids.seller] }, companyId: a.id }, [ids.seller], org.admin);
		assert.equal((await inbox(as.seller)).rows.find(r => r.id === id)?.sender?.username, "admin");

		const internal = await org.broker.call<{ id: string; recipients: number }, object>("appmsg.send", {
			companyId: a.id, app: "bi", title: "KPI alert", content: "Revenue below target", to: { roleIds: [ids.oncall] },
		});
		assert.equal(internal.recipients, 2);
		await waitForPushes(probe, internal.id, [ids.lead, ids.engineer]);
		const row = (await inbox(as.engineer)).rows[0];
		assert.deepEqual({ id: row.id, app: row.app, sender: row.sender }, { id: internal.id, app: "bi", sender: null }, "sent by the platform, not a user");
		await assert.rejects(org.broker.call("appmsg.send", { companyId: a.id, app: "bi", title: "x", content: "x", to: { userIds: [ids.bUser] } }), /not found/);
	});

	it("never shows a half-written message: a failed send is removed, a retried row is stored once, an abandoned one is swept", async () => {
		const svc = service();
		const original = svc.createEntity;
		const rows = await storedRows();
		const sellerTotal = (await inbox(as.seller)).total;
		const created = probe.created.length;
		try {
			// The third recipient's row cannot be written (a full disk, say).
			svc.createEntity = async (ctx, doc) => {
				if (doc.userId === ids.seller) throw new Error("disk full");
				return original.call(svc, ctx, doc);
			};
			const failed = await send(a.admin, { app: "crm", title: "Doomed", content: "x", to: { company: true } });
			assert.equal(failed.status, 500);
			assert.equal(await storedRows(), rows, "the rows already written are removed");
			assert.equal(probe.created.length, created, "no event for a failed send");
			for (const name of ["lead", "engineer"]) assert.ok(!(await inbox(as[name])).rows.some(r => r.title === "Doomed"), name);

			// A write that landed but whose answer was lost is retried: the row is stored once.
			let lost = false;
			svc.createEntity = async (ctx, doc) => {
				const saved = await original.call(svc, ctx, doc);
				if (doc.userId === ids.seller && !lost) {
					lost = true;
					throw new Error("connection reset");
				}
				return saved;
			};
			const id = await sendOk({ to: { userIds: [ids.seller, ids.engineer] } }, [ids.seller, ids.engineer]);
			assert.ok(lost);
			assert.equal((await inboxIds(as.seller)).filter(x => x === id).length, 1);
			assert.equal((await inbox(as.seller)).total, sellerTotal + 1);
		} finally {
			svc.createEntity = original;
		}

		// A node that died between writing the rows and showing them leaves pending rows: never listed, swept later.
		const old = new Date(Date.now() - 2 * 3600_000);
		await original.call(svc, null, {
			messageId: "abandoned", companyId: a.id, userId: ids.seller, app: "crm", title: "Abandoned", content: "x", sender: null, status: "pending", sentAt: old, readAt: null,
		});
		assert.ok(!(await inboxIds(as.seller)).includes("abandoned"));
		assert.equal(await svc.sweepPending(), 1);
		assert.equal(await storedRows({ messageId: "abandoned" }), 0);
	});

	it("removes a user's messages with the user, and a company's with the company", async () => {
		const c = await createCompany(org);
		const userId = await createUser(c, "temp", null);
		const id = expectStatus(await send(c.admin, { app: "crm", title: "Hi", content: "x", to: { company: true } }), 200).id;
		assert.equal(await storedRows({ messageId: id }), 2);
		expectStatus(await c.admin.delete(`/api/users/${userId}`), 200);
		await waitFor(async () => (await storedRows({ userId })) === 0, "the user's messages to go");
		expectStatus(await org.admin.put(`/api/companies/${c.id}`, { status: "disabled" }), 200);
		expectStatus(await org.admin.delete(`/api/companies/${c.id}`), 200);
		await waitFor(async () => (await storedRows({ companyId: c.id })) === 0, "the company's messages to go");
		assert.ok((await storedRows({ companyId: a.id })) > 0, "other companies keep theirs");
	});
});

describe("app messages (cluster)", () => {
	let org: RunningOrg;
	let probe: Probe;
	let company: TestCompany;
	const ids: Record<string, string> = {};

	before(async () => {
		org = await startOrgCluster();
		// The probe runs on the second node only: pushes must cross NATS to reach it.
		probe = startProbe(org.brokers[1]);
		await org.brokers[0].waitForServices([probe.name], 10_000);
		company = await licensedCompany(org);
		const sales = expectStatus(await company.admin.post("/api/depts", { name: "Sales" }), 200).id;
		const east = expectStatus(await company.admin.post("/api/depts", { name: "Sales East", parentId: sales }), 200).id;
		ids.sales = sales;
		ids.oncall = expectStatus(await company.admin.post("/api/roles", { name: "On call", code: "oncall", permissions: ["appmsg:read"], dataScope: "self" }), 200).id;
		ids.lead = await createUser(company, "lead", sales);
		ids.seller = await createUser(company, "seller", east, [ids.oncall]);
		ids.engineer = await createUser(company, "engineer", null, [ids.oncall]);
		ids.bystander = await createUser(company, "bystander", null);
	});
	after(() => org?.stop());

	it("sends through one node and reads through the other: one row per recipient, pushes to exactly their rooms, shared read state", async () => {
		const reply = expectStatus(
			await send(company.admin, { app: "crm", title: "Cluster", content: "Hello", to: { userIds: [ids.lead], deptIds: [ids.sales], roleIds: [ids.oncall] } }),
			200,
			"send",
		);
		assert.equal(reply.recipients, 3);
		await waitForPushes(probe, reply.id, [ids.lead, ids.seller, ids.engineer]);
		await waitFor(() => probe.created.some(e => e.entity.id === reply.id), "appmsg.message.created on the other node");

		const seller = (await org.anonymous.login(`${company.code}-seller`, PASSWORD)).via(org.urls[1]);
		const lead = await org.anonymous.login(`${company.code}-lead`, PASSWORD);
		const bystander = (await org.anonymous.login(`${company.code}-bystander`, PASSWORD)).via(org.urls[1]);
		assert.deepEqual(await inboxIds(seller, "?unread=true"), [reply.id]);
		assert.deepEqual(await inboxIds(bystander), []);
		expectStatus(await seller.post(`/api/app-messages/${reply.id}/read`), 200, "mark read");
		assert.deepEqual(await inboxIds(seller.via(org.urls[0]), "?unread=true"), [], "read on the other node too");
		assert.deepEqual(await inboxIds(lead, "?unread=true"), [reply.id], "the lead's copy stays unread");
		assert.equal((await bystander.post(`/api/app-messages/${reply.id}/read`)).status, 404);
	});
});
