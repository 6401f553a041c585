/**
 * The audit log end to end: the audit middleware on a broker with the gateway, the `log`
 * service recording operations and login attempts, queries over HTTP with tenancy and data
 * scope, the hash chain against records changed or removed behind its back, retention, and
 * two `log` replicas writing one chain over NATS on a shared PostgreSQL.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Errors, type Context, type Middleware, type ServiceBroker, type ServiceSchema } from "moleculer";
import GatewayService from "../../services/gateway/gateway.service";
import ConfigService from "../../services/platform/config.service";
import LogService from "../../services/org/log.service";
import LogChainService from "../../services/org/log-chain.service";
import AuditMiddleware from "../../middlewares/audit.middleware";
import IdempotentRetryMiddleware from "../../middlewares/idempotent-retry.middleware";
import type { AuthenticatedUser } from "../../types/access";
import type { LoginAttemptedEvent, OperationPerformedEvent } from "../../types/audit";
import { createTestBroker } from "../support/broker";
import { freePort, startNats, testPostgres, waitFor } from "../support/servers";
import { securityStub } from "../support/security.stub";

const MIDDLEWARES = [IdempotentRetryMiddleware, AuditMiddleware] as unknown as Middleware[];
const ALL = { all: true, deptIds: [], self: false };
const WRITE = ["probe:write", "probe:read"];

/** Users of two companies and the platform administrator, each behind a bearer token. */
const USERS: Record<string, AuthenticatedUser> = {
	"a-admin": { id: "ua-admin", username: "alice", companyId: "ca", deptId: "d1", roles: ["company-admin"], permissions: ["log:read", "log:verify", ...WRITE], dataScope: ALL },
	"a-dept": { id: "ua-dept", username: "dora", companyId: "ca", deptId: "d2", roles: ["member"], permissions: ["log:read", ...WRITE], dataScope: { all: false, deptIds: ["d2"], self: false } },
	"a-self": { id: "ua-self", username: "sam", companyId: "ca", deptId: "d3", roles: ["member"], permissions: ["log:read", ...WRITE], dataScope: { all: false, deptIds: [], self: true } },
	"a-nolog": { id: "ua-nolog", username: "nora", companyId: "ca", deptId: "d1", roles: ["member"], permissions: WRITE, dataScope: ALL },
	"b-admin": { id: "ub-admin", username: "bert", companyId: "cb", deptId: "d9", roles: ["company-admin"], permissions: ["log:read", "log:verify", ...WRITE], dataScope: ALL },
	root: { id: "u-root", username: "admin", companyId: null, roles: ["platform-admin"], permissions: [], platformAdmin: true },
};

const TestSecurity = securityStub(USERS);

let created = 0;
/** A service with every kind of action the middleware must tell apart. */
const Probe: ServiceSchema = {
	name: "probe",
	settings: { rest: "/probe" },
	actions: {
		create: {
			rest: "POST /items",
			permission: "probe:write",
			params: { name: { type: "string", max: 100 } },
			handler(ctx: Context<{ name: string }>) {
				return { id: `item-${++created}`, name: ctx.params.name };
			},
		},
		update: {
			rest: { method: "PUT", path: "/items/:id" },
			permission: "probe:write",
			params: { $$strict: true, id: { type: "string", max: 64 }, name: { type: "string", max: 100 } },
			handler(ctx: Context<{ id: string; name: string }>) {
				return { id: ctx.params.id, name: ctx.params.name };
			},
		},
		read: {
			rest: "GET /items/:id",
			permission: "probe:read",
			params: { $$strict: true, id: { type: "string", max: 64 } },
			handler(ctx: Context<{ id: string }>) {
				return { id: ctx.params.id };
			},
		},
		quiet: {
			rest: "POST /quiet",
			permission: "probe:write",
			audit: false,
			params: { $$strict: false },
			handler() {
				return { ok: true };
			},
		},
		conflict: {
			rest: "POST /conflict",
			permission: "probe:write",
			params: { $$strict: false },
			handler() {
				throw new Errors.MoleculerClientError("Item 'dup' already exists", 409, "CONFLICT");
			},
		},
		boom: {
			rest: "POST /boom",
			permission: "probe:write",
			params: { $$strict: false },
			handler() {
				throw new Error("connect ECONNREFUSED postgres://app:hunter2@db");
			},
		},
		nested: {
			rest: "POST /nested",
			permission: "probe:write",
			params: { $$strict: false },
			async handler(ctx: Context) {
				await ctx.call("probe.create", { name: "made-by-nested" });
				return { id: "nested-1" };
			},
		},
	},
};

interface Running {
	broker: ServiceBroker;
	url: string;
}

async function start(): Promise<Running> {
	const port = await freePort();
	const broker = createTestBroker({ PORT: String(port), HOST: "127.0.0.1" }, { middlewares: MIDDLEWARES });
	for (const schema of [GatewayService, ConfigService, LogService, LogChainService, TestSecurity, Probe]) broker.createService(schema);
	await broker.start();
	const url = `http://127.0.0.1:${port}`;
	await waitFor(async () => (await fetch(`${url}/api/logs/verify`, { headers: { Authorization: "Bearer a-admin" } })).status === 200, "the log routes");
	await waitFor(async () => (await fetch(`${url}/api/probe/items/x`, { headers: { Authorization: "Bearer a-admin" } })).status === 200, "the probe routes");
	return { broker, url };
}

async function api(app: Running, method: string, path: string, token: string, body?: unknown, headers: Record<string, string> = {}) {
	const res = await fetch(app.url + path, {
		method,
		headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }), ...headers },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	return { status: res.status, body: (await res.json()) as any };
}

/** Every operation of a service, as the platform administrator sees them. */
async function operationsOf(app: Running, service: string, extra = ""): Promise<any[]> {
	const res = await api(app, "GET", `/api/logs/operations?service=${service}&pageSize=100${extra}`, "root");
	assert.equal(res.status, 200, JSON.stringify(res.body));
	return res.body.rows;
}

/** Waits for the record an HTTP call with this request id produced. */
async function recordOf(app: Running, requestId: string, service = "probe"): Promise<any> {
	let found: any;
	await waitFor(async () => Boolean((found = (await operationsOf(app, service)).find(r => r.requestId === requestId))), `the record of ${requestId}`);
	return found;
}

function operation(over: Partial<OperationPerformedEvent>): OperationPerformedEvent {
	return {
		at: new Date().toISOString(), requestId: null, userId: "u-x", username: "x", companyId: "ca", deptId: null,
		service: "orders", action: "create", target: null, params: {}, result: "ok", error: null, durationMs: 1, ip: "10.0.0.1", ...over,
	};
}

async function verifyChain(app: Running, chain: string) {
	const res = await api(app, "GET", `/api/logs/verify?companyId=${chain}`, "root");
	assert.equal(res.status, 200, JSON.stringify(res.body));
	return res.body.chains[0];
}

async function waitForRecords(app: Running, chain: string, count: number) {
	await waitFor(async () => (await verifyChain(app, chain)).records === count, `${count} records in chain ${chain}`);
}

describe("audit log", () => {
	let app: Running;
	before(async () => {
		app = await start();
	});
	after(() => app.broker.stop());

	it("records a mutating call through the gateway: who, company, what, target, params, result, time, IP, request id", async () => {
		const res = await api(app, "POST", "/api/probe/items", "a-admin", { name: "widget" }, { "X-Request-ID": "req-create-1" });
		assert.equal(res.status, 200);
		const row = await recordOf(app, "req-create-1");
		assert.deepEqual(
			{ ...row, id: undefined, at: undefined, durationMs: undefined, seq: undefined, prevHash: undefined, hash: undefined },
			{
				id: undefined, at: undefined, durationMs: undefined, seq: undefined, prevHash: undefined, hash: undefined,
				kind: "operation", chain: "ca", requestId: "req-create-1", userId: "ua-admin", username: "alice", companyId: "ca", deptId: "d1",
				service: "probe", action: "create", target: res.body.id, params: { name: "widget" }, result: "ok", error: null,
				reason: null, ip: "127.0.0.1", device: null,
			},
		);
		assert.ok(Number.isInteger(row.durationMs) && row.durationMs >= 0);
		assert.ok(Math.abs(Date.parse(row.at) - Date.now()) < 60_000, row.at);
		assert.match(row.hash, /^[0-9a-f]{64}$/);

		const put = await api(app, "PUT", "/api/probe/items/item-77", "a-admin", { name: "renamed" }, { "X-Request-ID": "req-update-1" });
		assert.equal(put.status, 200);
		const updated = await recordOf(app, "req-update-1");
		assert.equal(updated.target, "item-77", "the id param is the target");
		assert.equal(updated.action, "update");
	});

	it("does not record reads, actions with audit: false, nested service-to-service calls or calls from inside", async () => {
		assert.equal((await api(app, "GET", "/api/probe/items/item-1", "a-admin", undefined, { "X-Request-ID": "req-read" })).status, 200);
		assert.equal((await api(app, "POST", "/api/probe/quiet", "a-admin", { password: "x" }, { "X-Request-ID": "req-quiet" })).status, 200);
		assert.equal((await api(app, "POST", "/api/probe/nested", "a-admin", {}, { "X-Request-ID": "req-nested" })).status, 200);
		await app.broker.call("probe.create", { name: "made-by-broker" });
		// Records of one chain are written in the order their events came: once this one is there, the others would be too.
		await api(app, "POST", "/api/probe/items", "a-admin", { name: "sentinel" }, { "X-Request-ID": "req-sentinel-1" });
		await recordOf(app, "req-sentinel-1");

		const rows = await operationsOf(app, "probe");
		assert.deepEqual(rows.filter(r => ["req-read", "req-quiet"].includes(r.requestId)), []);
		assert.deepEqual(rows.filter(r => r.requestId === "req-nested").map(r => r.action), ["nested"], "the outer call only");
		assert.deepEqual(rows.filter(r => ["made-by-nested", "made-by-broker"].includes(r.params?.name)), []);
		assert.deepEqual(rows.filter(r => r.action === "read" || r.action === "quiet"), []);
	});

	it("records failures with their code and type, and no server internals", async () => {
		const conflict = await api(app, "POST", "/api/probe/conflict", "a-admin", { name: "dup" }, { "X-Request-ID": "req-conflict" });
		assert.equal(conflict.status, 409);
		const row = await recordOf(app, "req-conflict");
		assert.equal(row.result, "error");
		assert.deepEqual(row.error, { code: 409, type: "CONFLICT", message: "Item 'dup' already exists" });
		assert.equal(row.target, null);

		const boom = await api(app, "POST", "/api/probe/boom", "a-admin", {}, { "X-Request-ID": "req-boom" });
		assert.equal(boom.status, 500);
		const failed = await recordOf(app, "req-boom");
		assert.deepEqual(failed.error, { code: 500, type: "Error", message: "Internal server error" });
		assert.equal(JSON.stringify(failed).includes("hunter2"), false);
	});

	it("redacts secrets at any depth and keeps every other param verbatim, injection-shaped strings included", async () => {
		const secrets = ["Pw-1-secret", "Pw-2-secret", "Rt-3-secret", "Lk-4-secret", "Au-5-secret", "Cs-6-secret", "Ck-7-secret", "Ak-8-secret"];
		const body = {
			name: "'; DROP TABLE audit_logs; --",
			password: secrets[0],
			profile: { newPassword: secrets[1], nick: "<script>alert('x')</script>", tags: ["a", "b"] },
			sessions: [{ refreshToken: secrets[2], device: "phone" }],
			license: { licenseKey: secrets[3], seats: 10 },
			headers: { authorization: `Bearer ${secrets[4]}` },
			oauth: { client_secret: secrets[5], scope: "read write" },
			cookie: secrets[6],
			"x-api-key": secrets[7],
			"$where": "this.password.length > 0",
			"a.b": { "$ne": null },
			path: "../../etc/passwd",
		};
		const res = await api(app, "POST", "/api/probe/items", "a-admin", body, { "X-Request-ID": "req-redact" });
		assert.equal(res.status, 200);
		const row = await recordOf(app, "req-redact");
		assert.deepEqual(row.params, {
			name: "'; DROP TABLE audit_logs; --",
			password: "[redacted]",
			profile: { newPassword: "[redacted]", nick: "<script>alert('x')</script>", tags: ["a", "b"] },
			sessions: [{ refreshToken: "[redacted]", device: "phone" }],
			license: { licenseKey: "[redacted]", seats: 10 },
			headers: { authorization: "[redacted]" },
			oauth: { client_secret: "[redacted]", scope: "read write" },
			cookie: "[redacted]",
			"x-api-key": "[redacted]",
			"$where": "this.password.length > 0",
			"a.b": { "$ne": null },
			path: "../../etc/passwd",
		});
		const stored = JSON.stringify(row);
		for (const secret of secrets) assert.equal(stored.includes(secret), false, secret);
	});

	it("records login attempts with the fields of the contract only: no password gets in", async () => {
		const attempt = (over: Partial<LoginAttemptedEvent> & Record<string, unknown>) =>
			app.broker.emit("security.login.attempted", {
				at: new Date().toISOString(), requestId: null, username: "alice", userId: "ua-admin", companyId: "ca", result: "ok", reason: null, ip: "10.1.1.1", device: "web", ...over,
			});
		await attempt({ requestId: "login-1", password: "Smuggled-Pw-1", token: "Smuggled-Tk-1" });
		await attempt({ requestId: "login-2", result: "failure", reason: "wrong password", password: "Smuggled-Pw-2" });
		await attempt({ requestId: "login-3", result: "failure", username: "ghost", userId: null, companyId: null, reason: "unknown user" });
		await attempt({ requestId: "login-4", result: "locked", username: "sam", userId: "ua-self", reason: "locked" });
		await waitFor(async () => (await api(app, "GET", "/api/logs/logins?pageSize=100", "root")).body.total === 4, "four login records");

		const all = await api(app, "GET", "/api/logs/logins?pageSize=100", "root");
		assert.equal(/Smuggled/.test(JSON.stringify(all.body)), false);
		for (const row of all.body.rows) assert.equal("password" in row || "token" in row, false);
		const failures = await api(app, "GET", "/api/logs/logins?username=alice&result=failure", "a-admin");
		assert.deepEqual(failures.body.rows.map((r: any) => [r.requestId, r.reason, r.ip, r.device, r.chain]), [["login-2", "wrong password", "10.1.1.1", "web", "ca"]]);
		const ghost = all.body.rows.find((r: any) => r.requestId === "login-3");
		assert.equal(ghost.chain, "platform", "attempts of no company go to the platform chain");
		const mine = await api(app, "GET", "/api/logs/logins", "a-admin");
		assert.deepEqual(mine.body.rows.map((r: any) => r.requestId).sort(), ["login-1", "login-2", "login-4"]);
		assert.deepEqual((await api(app, "GET", "/api/logs/logins", "a-self")).body.rows.map((r: any) => r.requestId), ["login-4"]);
		assert.equal((await api(app, "GET", "/api/logs/logins", "b-admin")).body.total, 0);
	});

	describe("queries", () => {
		before(async () => {
			const day = (d: number) => `2024-03-0${d}T10:00:00.000Z`;
			const events = [
				operation({ at: day(1), userId: "ua-admin", deptId: "d1", target: "o1" }),
				operation({ at: day(2), userId: "ua-admin", deptId: "d1", target: "o2" }),
				operation({ at: day(3), userId: "ua-dept", deptId: "d2", target: "o3" }),
				operation({ at: day(4), userId: "ua-dept", deptId: "d2", target: "o4", result: "error", error: { code: 409, type: "CONFLICT", message: "taken" } }),
				operation({ at: day(5), userId: "ua-self", deptId: "d3", target: "o5" }),
				operation({ at: day(6), userId: "ua-self", deptId: "d3", target: "o6" }),
				operation({ at: day(3), userId: "ub-admin", deptId: "d9", companyId: "cb", target: "b1" }),
				operation({ at: day(4), userId: "ub-admin", deptId: "d9", companyId: "cb", target: "b2" }),
			];
			for (const event of events) await app.broker.emit("audit.operation.performed", event);
			await waitFor(async () => (await operationsOf(app, "orders")).length === 8, "the order records");
		});

		const targets = async (token: string, query = "") => {
			const res = await api(app, "GET", `/api/logs/operations?service=orders${query}`, token);
			assert.equal(res.status, 200, JSON.stringify(res.body));
			return res.body.rows.map((r: any) => r.target);
		};

		it("answers newest first, a company its own records only, the platform administrator every company or the one named", async () => {
			assert.deepEqual(await targets("a-admin"), ["o6", "o5", "o4", "o3", "o2", "o1"]);
			assert.deepEqual(await targets("b-admin"), ["b2", "b1"]);
			assert.deepEqual(await targets("a-admin", "&sort=at"), ["o1", "o2", "o3", "o4", "o5", "o6"]);
			assert.equal((await targets("root")).length, 8);
			assert.deepEqual(await targets("root", "&companyId=cb"), ["b2", "b1"]);
			const foreign = await api(app, "GET", "/api/logs/operations?companyId=cb", "a-admin");
			assert.equal(foreign.status, 403);
		});

		it("honours the data scope: departments listed, own records", async () => {
			assert.deepEqual(await targets("a-dept"), ["o4", "o3"]);
			assert.deepEqual(await targets("a-self"), ["o6", "o5"]);
		});

		it("filters by user, result and time, and pages", async () => {
			assert.deepEqual(await targets("a-admin", "&userId=ua-dept"), ["o4", "o3"]);
			assert.deepEqual(await targets("a-admin", "&result=error"), ["o4"]);
			assert.deepEqual(await targets("a-admin", "&from=2024-03-02&to=2024-03-04"), ["o4", "o3", "o2"], "a date-only 'to' takes in the whole day");
			assert.deepEqual(await targets("a-admin", "&from=2024-03-05T10:00:00Z"), ["o6", "o5"]);
			const page2 = await api(app, "GET", "/api/logs/operations?service=orders&pageSize=4&page=2", "a-admin");
			assert.deepEqual(
				{ ...page2.body, rows: page2.body.rows.map((r: any) => r.target) },
				{ rows: ["o2", "o1"], total: 6, page: 2, pageSize: 4, totalPages: 2 },
			);
		});

		it("refuses bad input with a 422 that names what was wrong, and readers without the permission", async () => {
			const cases: [string, RegExp][] = [
				["from=yesterday", /from/],
				["to=2024-13-01", /to/],
				["from=2024-02-30", /from/],
				["from=2024-03-05&to=2024-03-01", /from/],
				["pageSize=101", /pageSize/],
				["page=0", /page/],
				["result=maybe", /result/],
				["sort=name", /sort/],
				["foo=1", /forbidden keys|foo/],
				[`userId=${"u".repeat(65)}`, /userId/],
			];
			for (const [query, message] of cases) {
				const res = await api(app, "GET", `/api/logs/operations?${query}`, "a-admin");
				assert.equal(res.status, 422, query);
				assert.match(JSON.stringify(res.body), message, query);
			}
			assert.equal((await api(app, "GET", "/api/logs/logins?username=", "a-admin")).status, 422);
			assert.equal((await api(app, "GET", "/api/logs/operations", "a-nolog")).status, 403);
			assert.equal((await api(app, "GET", "/api/logs/verify", "a-dept")).status, 403, "verify takes log:verify");
			assert.equal((await api(app, "DELETE", "/api/logs/operations", "root")).status, 404, "no route removes records");
		});

		it("publishes exactly the three log routes in the OpenAPI document", async () => {
			const doc = (await (await fetch(`${app.url}/api/openapi.json`)).json()) as any;
			const logPaths = Object.keys(doc.paths).filter(p => p.startsWith("/api/logs"));
			assert.deepEqual(logPaths.sort(), ["/api/logs/logins", "/api/logs/operations", "/api/logs/verify"]);
			for (const path of logPaths) assert.deepEqual(Object.keys(doc.paths[path]), ["get"], path);
		});
	});

	describe("hash chain", () => {
		const ctxOf = () => app.broker.ContextFactory.create(app.broker, null as never, {}, {});
		const logService = () => app.broker.getLocalService("log") as any;
		const recordAt = async (chain: string, seq: number) => (await logService().findEntities(ctxOf(), { query: { chain, seq } }))[0];

		async function fill(chain: string, count: number) {
			for (let i = 1; i <= count; i++) await app.broker.emit("audit.operation.performed", operation({ companyId: chain, target: `${chain}-${i}`, params: { amount: i } }));
			await waitForRecords(app, chain, count);
		}

		it("verifies intact chains: my company's, or every chain for the platform administrator", async () => {
			const mine = await api(app, "GET", "/api/logs/verify", "a-admin");
			assert.equal(mine.status, 200);
			assert.equal(mine.body.intact, true);
			assert.deepEqual(mine.body.chains.map((c: any) => [c.chain, c.intact]), [["ca", true]]);
			assert.ok(mine.body.chains[0].records >= 10);
			const all = await api(app, "GET", "/api/logs/verify", "root");
			assert.equal(all.body.intact, true);
			assert.deepEqual(all.body.chains.map((c: any) => c.chain).sort(), ["ca", "cb", "platform"]);
			assert.equal((await api(app, "GET", "/api/logs/verify?companyId=cb", "a-admin")).status, 403);
		});

		it("finds a changed field", async () => {
			await fill("t1", 5);
			const record = await recordAt("t1", 3);
			await logService().updateEntity(ctxOf(), record.id, { params: { amount: 1000 } });
			const report = await verifyChain(app, "t1");
			assert.deepEqual([report.intact, report.firstBrokenSeq], [false, 3]);
			assert.match(report.problem, /changed/);
		});

		it("finds a removed record in the middle", async () => {
			await fill("t2", 5);
			await logService().removeEntity(ctxOf(), (await recordAt("t2", 2)).id);
			const report = await verifyChain(app, "t2");
			assert.deepEqual([report.intact, report.firstBrokenSeq], [false, 2]);
			assert.match(report.problem, /record 2 is missing/);
		});

		it("finds the newest record removed, and keeps the gap when the chain grows again", async () => {
			await fill("t3", 5);
			await logService().removeEntity(ctxOf(), (await recordAt("t3", 5)).id);
			const report = await verifyChain(app, "t3");
			assert.deepEqual([report.intact, report.firstBrokenSeq], [false, 5]);
			await app.broker.emit("audit.operation.performed", operation({ companyId: "t3", target: "t3-6" }));
			await waitFor(async () => Boolean(await recordAt("t3", 6)), "record 6 of t3");
			assert.equal((await verifyChain(app, "t3")).firstBrokenSeq, 5);
		});

		it("finds a removed chain head and reports it in the platform-wide verification", async () => {
			await fill("t4", 2);
			const chains = app.broker.getLocalService("logChain") as any;
			const [head] = await chains.findEntities(ctxOf(), { query: { chain: "t4" } });
			await chains.removeEntity(ctxOf(), head.id);
			const all = await api(app, "GET", "/api/logs/verify", "root");
			assert.equal(all.body.intact, false);
			const byChain = Object.fromEntries(all.body.chains.map((c: any) => [c.chain, c]));
			assert.match(byChain.t4.problem, /head is missing/);
			assert.equal(byChain.ca.intact, true, "other chains are not affected");
			assert.deepEqual(["t1", "t2", "t3"].map(c => byChain[c].intact), [false, false, false]);
		});
	});

	describe("retention", () => {
		const daysAgo = (d: number) => new Date(Date.now() - d * 86_400_000).toISOString();

		it("removes the oldest records of a chain, moves its anchor, and the chain still verifies and grows", async () => {
			for (let i = 1; i <= 5; i++) await app.broker.emit("audit.operation.performed", operation({ companyId: "r1", at: daysAgo(400 - i), target: `old-${i}` }));
			for (let i = 1; i <= 3; i++) await app.broker.emit("audit.operation.performed", operation({ companyId: "r1", at: daysAgo(10 - i), target: `new-${i}` }));
			await waitForRecords(app, "r1", 8);

			const purge = (await app.broker.call("log.purge", {})) as any;
			assert.deepEqual(purge.chains.find((c: any) => c.chain === "r1"), { chain: "r1", removed: 5, anchorSeq: 6 });
			const report = await verifyChain(app, "r1");
			assert.deepEqual([report.intact, report.records, report.anchorSeq], [true, 3, 6]);
			assert.deepEqual((await operationsOf(app, "orders", "&companyId=r1")).map(r => r.target), ["new-3", "new-2", "new-1"]);

			await app.broker.emit("audit.operation.performed", operation({ companyId: "r1", target: "after-purge" }));
			await waitForRecords(app, "r1", 4);
			assert.equal((await verifyChain(app, "r1")).intact, true);
		});

		it("can empty a chain, which then continues where it was; a broken chain is left as it is", async () => {
			const purge = (await app.broker.call("log.purge", { before: new Date(Date.now() + 86_400_000).toISOString() })) as any;
			const byChain = Object.fromEntries(purge.chains.map((c: any) => [c.chain, c]));
			assert.equal(byChain.r1.removed, 4);
			assert.match(byChain.t1.problem, /changed/);
			assert.equal(byChain.t1.removed, 0);
			assert.equal((await verifyChain(app, "t1")).records, 5, "the evidence stays");
			assert.deepEqual(await verifyChain(app, "r1"), { chain: "r1", records: 0, intact: true, headSeq: 9, anchorSeq: 10 });

			await app.broker.emit("audit.operation.performed", operation({ companyId: "r1", target: "fresh" }));
			await waitForRecords(app, "r1", 1);
			const [row] = await operationsOf(app, "orders", "&companyId=r1");
			assert.equal(row.seq, 10);
			assert.equal((await verifyChain(app, "r1")).intact, true);
		});

		it("takes the retention period from the config centre", async () => {
			for (const [i, age] of [40, 35, 1].entries()) await app.broker.emit("audit.operation.performed", operation({ companyId: "r2", at: daysAgo(age), target: `r2-${i}` }));
			await waitForRecords(app, "r2", 3);
			assert.equal(((await app.broker.call("log.purge", {})) as any).chains.some((c: any) => c.chain === "r2"), false, "within 180 days");
			await app.broker.call("config.set", { namespace: "log", values: { retentionDays: 30 } });
			await waitFor(() => (app.broker.getLocalService("log") as any).config.retentionDays === 30, "the new retention period");
			const purge = (await app.broker.call("log.purge", {})) as any;
			assert.equal(purge.chains.find((c: any) => c.chain === "r2").removed, 2);
			assert.equal((await verifyChain(app, "r2")).intact, true);
			await assert.rejects(app.broker.call("log.purge", { before: "last week" }), (err: any) => err.code === 422);
		});
	});
});

describe("audit log replicas", () => {
	const root = USERS.root;
	let brokers: ServiceBroker[] = [];
	let stopNats: () => Promise<void>;
	let stopPg: () => Promise<void>;

	before(async () => {
		const nats = await startNats();
		const pg = await testPostgres();
		stopNats = () => nats.stop();
		stopPg = () => pg.stop();
		const env = { TRANSPORTER: nats.url, DATABASE_URL: await pg.createDatabase("audit_replicas") };
		brokers = [1, 2].map(n => createTestBroker({ ...env, NODE_ID: `audit-${n}` }));
		for (const broker of brokers) for (const schema of [ConfigService, LogService, LogChainService]) broker.createService(schema);
		await Promise.all(brokers.map(b => b.start()));
		await Promise.all(brokers.map(b => b.waitForServices(["log", "logChain", "config"])));
	});
	after(async () => {
		await Promise.all(brokers.map(b => b.stop()));
		await stopNats();
		await stopPg();
	});

	it("two log nodes writing one chain at once give contiguous seqs, no duplicates, an intact chain", async () => {
		const total = 150;
		// Each node's events go to its own log instance (local first): two writers race on chain "cc".
		await Promise.all(
			Array.from({ length: total }, (_, n) => brokers[n % 2].emit("audit.operation.performed", operation({ companyId: "cc", params: { n }, target: `t-${n}` }))),
		);
		const list = (page: number) => brokers[0].call<any, object>("log.operations", { companyId: "cc", pageSize: 100, page, sort: "at" }, { meta: { user: root } });
		await waitFor(async () => (await list(1)).total === total, `${total} records`, 30_000);
		const rows = [...(await list(1)).rows, ...(await list(2)).rows];
		assert.deepEqual(rows.map(r => r.seq).sort((a, b) => a - b), Array.from({ length: total }, (_, i) => i + 1));
		assert.deepEqual(rows.map(r => r.params.n).sort((a, b) => a - b), Array.from({ length: total }, (_, i) => i));
		const verified = await brokers[1].call<any, object>("log.verify", { companyId: "cc" }, { meta: { user: root } });
		assert.deepEqual(verified.chains.map((c: any) => [c.chain, c.records, c.intact, c.headSeq]), [["cc", total, true, total]]);
	});
});
