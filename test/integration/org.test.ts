/**
 * The organisation end to end through the gateway, embedded (one process, NeDB) and as a cluster
 * (two nodes over real NATS, PostgreSQL, Redis; requests alternate between the two gateways):
 * companies, licences, departments, roles, users, grants, data scopes and tenant isolation.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { ServiceSchema } from "moleculer";
import { Api, createCompany, expectStatus, startOrg, startOrgCluster, unique, type RunningOrg, type TestCompany } from "../support/org";
import { waitFor } from "../support/servers";

/** A service of another app ("bi"), to see licences limit what is granted. */
const ReportProbe: ServiceSchema = {
	name: "reportprobe",
	settings: { rest: "/report-probe", app: "bi", permissions: { "report:read": { description: "Read reports" } } },
	actions: { read: { rest: "GET /", permission: "report:read", handler: () => ({ ok: true }) } },
};

const YEAR = 365 * 24 * 3600 * 1000;

async function issueLicense(org: RunningOrg, claims: Partial<{ seats: number; features: string[]; expiresAt: string }> = {}) {
	const body = expectStatus(
		await org.admin.post("/api/licenses", {
			licensee: "Test Co",
			type: "enterprise",
			edition: "commercial",
			seats: 50,
			features: ["messaging"],
			expiresAt: new Date(Date.now() + YEAR).toISOString(),
			...claims,
		}),
		200,
		"issue licence",
	);
	return body.key as string;
}

const usernames = (page: { rows: { username: string }[] }) => page.rows.map(r => r.username).sort();

for (const mode of ["embedded", "cluster"] as const) {
	describe(`organisation (${mode})`, () => {
		let org: RunningOrg;
		/** The other gateway in cluster mode (the same one embedded): a user's next request may land anywhere. */
		let other: string;

		before(async () => {
			org = mode === "embedded" ? await startOrg() : await startOrgCluster();
			other = org.urls[org.urls.length - 1];
			org.broker.createService(ReportProbe);
			await waitFor(async () => (await org.admin.get("/api/report-probe")).status === 200, "the report probe to be routed");
		});
		after(() => org?.stop());

		it("documents every Authentication and Organisation route of API.md in the OpenAPI document", async () => {
			const doc = expectStatus(await org.anonymous.get("/api/openapi.json"), 200) as { paths: Record<string, Record<string, unknown>> };
			const routes = [
				"POST /api/auth/login", "POST /api/auth/refresh", "POST /api/auth/logout", "GET /api/auth/me", "PUT /api/auth/password",
				"GET /api/companies", "POST /api/companies", "GET /api/companies/{id}", "PUT /api/companies/{id}", "DELETE /api/companies/{id}",
				"GET /api/depts", "POST /api/depts", "PUT /api/depts/{id}", "DELETE /api/depts/{id}",
				"GET /api/users", "POST /api/users", "GET /api/users/{id}", "PUT /api/users/{id}", "DELETE /api/users/{id}",
				"PUT /api/users/{id}/status", "POST /api/users/{id}/reset-password",
				"GET /api/roles", "POST /api/roles", "GET /api/roles/{id}", "PUT /api/roles/{id}", "DELETE /api/roles/{id}",
				"GET /api/auth/permissions", "GET /api/grants", "POST /api/grants", "DELETE /api/grants/{id}",
				"GET /api/dicts", "POST /api/dicts", "PUT /api/dicts/{code}", "DELETE /api/dicts/{code}",
				"GET /api/dicts/{code}/items", "POST /api/dicts/{code}/items", "PUT /api/dicts/{code}/items/{value}", "DELETE /api/dicts/{code}/items/{value}",
				"POST /api/licenses", "POST /api/licenses/verify", "GET /api/licenses/current",
				"GET /api/logs/operations", "GET /api/logs/logins", "GET /api/logs/verify",
				"GET /api/online", "DELETE /api/online/{sessionId}",
			];
			const missing = routes.filter(r => {
				const [method, path] = r.split(" ");
				return !doc.paths[path]?.[method.toLowerCase()];
			});
			assert.deepEqual(missing, []);
		});

		describe("a licensed company builds its organisation and each user sees what role and scope allow", () => {
			let company: TestCompany;
			const ids: Record<string, string> = {};
			const password = "Passw0rd-user";

			before(async () => {
				company = await createCompany(org, { licenseKey: await issueLicense(org) });
			});

			it("gives the company administrator every permission of the company's apps, and none of the platform's", async () => {
				const perms: string[] = company.admin.user.permissions;
				for (const p of ["user:create", "dept:write", "role:write", "grant:write", "user:reset-password"]) assert.ok(perms.includes(p), p);
				assert.ok(!perms.includes("config:read"), "platform permissions stay the platform administrator's");
				assert.ok(!perms.includes("report:read"), "an app outside the licence is not granted");
				assert.equal(company.admin.user.companyId, company.id);
				assert.deepEqual(company.admin.user.roles, ["company-admin"]);
			});

			it("builds a department tree", async () => {
				const admin = company.admin.via(other);
				ids.hq = expectStatus(await admin.post("/api/depts", { name: "HQ" }), 200).id;
				ids.sales = expectStatus(await admin.post("/api/depts", { name: "Sales", parentId: ids.hq, order: 1 }), 200).id;
				ids.east = expectStatus(await admin.post("/api/depts", { name: "Sales East", parentId: ids.sales }), 200).id;
				ids.rnd = expectStatus(await admin.post("/api/depts", { name: "R&D", parentId: ids.hq, order: 2 }), 200).id;
				const tree = expectStatus(await company.admin.get("/api/depts"), 200);
				assert.equal(tree.length, 1);
				assert.equal(tree[0].name, "HQ");
				assert.deepEqual(tree[0].children.map((d: { name: string }) => d.name), ["Sales", "R&D"]);
				assert.deepEqual(tree[0].children[0].children.map((d: { name: string }) => d.name), ["Sales East"]);
			});

			it("refuses to delete a department with sub-departments or users, and to move one below itself", async () => {
				const admin = company.admin;
				const notEmpty = await admin.delete(`/api/depts/${ids.sales}`);
				assert.equal(notEmpty.status, 409);
				assert.equal(notEmpty.body.type, "DEPT_NOT_EMPTY");
				const cycle = await admin.put(`/api/depts/${ids.hq}`, { parentId: ids.east });
				assert.equal(cycle.status, 422);
				assert.match(cycle.body.message, /below itself/);
				// A move that is allowed, and back.
				expectStatus(await admin.put(`/api/depts/${ids.east}`, { parentId: ids.rnd }), 200);
				expectStatus(await admin.put(`/api/depts/${ids.east}`, { parentId: ids.sales }), 200);
			});

			it("creates roles with data scopes and users in departments", async () => {
				const admin = company.admin;
				ids.leadRole = expectStatus(await admin.post("/api/roles", { name: "Sales lead", code: "sales-lead", permissions: ["user:read", "dept:read"], dataScope: "deptAndChildren" }), 200).id;
				ids.clerkRole = expectStatus(await admin.post("/api/roles", { name: "Clerk", code: "clerk", permissions: ["user:read"], dataScope: "self" }), 200).id;
				ids.auditRole = expectStatus(await admin.post("/api/roles", { name: "Auditor", code: "auditor", permissions: ["user:read"], dataScope: "custom", deptIds: [ids.rnd] }), 200).id;
				ids.deptRole = expectStatus(await admin.post("/api/roles", { name: "Dept only", code: "dept-only", permissions: ["user:read"], dataScope: "dept" }), 200).id;

				const make = async (username: string, deptId: string | null, roleIds: string[]) => {
					const body = expectStatus(await admin.via(other).post("/api/users", { username: `${company.code}-${username}`, password, name: username, deptId, roleIds }), 200, username);
					assert.equal(body.passwordHash, undefined, "no password hash leaves the service");
					ids[username] = body.id;
				};
				await make("lead", ids.sales, [ids.leadRole]);
				await make("seller", ids.east, [ids.clerkRole]);
				await make("deptonly", ids.sales, [ids.deptRole]);
				await make("auditor", null, [ids.auditRole]);
				await make("engineer", ids.rnd, []);
			});

			it("lists users page by page, sorted and searched", async () => {
				const page = expectStatus(await company.admin.get(`/api/users?pageSize=2&page=2&sort=-username`), 200);
				assert.equal(page.total, 6);
				assert.equal(page.page, 2);
				assert.equal(page.pageSize, 2);
				assert.equal(page.totalPages, 3);
				const sorted = expectStatus(await company.admin.get(`/api/users?pageSize=100&sort=-username`), 200).rows.map((r: { username: string }) => r.username);
				assert.deepEqual(sorted, [...sorted].sort().reverse());
				assert.deepEqual(page.rows.map((r: { username: string }) => r.username), sorted.slice(2, 4));
				const found = expectStatus(await company.admin.get(`/api/users?search=SELL`), 200);
				assert.deepEqual(usernames(found), [`${company.code}-seller`]);
				const inDept = expectStatus(await company.admin.get(`/api/users?deptId=${ids.sales}`), 200);
				assert.deepEqual(usernames(inDept), [`${company.code}-deptonly`, `${company.code}-lead`]);
			});

			it("lets each user list exactly the users of their data scope", async () => {
				const as = (name: string) => org.anonymous.login(`${company.code}-${name}`, password);
				const u = (...names: string[]) => names.map(n => `${company.code}-${n}`).sort();

				const lead = await as("lead");
				assert.deepEqual(usernames(expectStatus(await lead.get("/api/users"), 200)), u("deptonly", "lead", "seller"), "deptAndChildren: Sales and Sales East");
				const seller = await as("seller");
				assert.deepEqual(usernames(expectStatus(await seller.via(other).get("/api/users"), 200)), u("seller"), "self");
				assert.equal((await seller.get(`/api/users/${ids.lead}`)).status, 404, "outside the scope reads as not found");
				const deptonly = await as("deptonly");
				assert.deepEqual(usernames(expectStatus(await deptonly.get("/api/users"), 200)), u("deptonly", "lead"), "dept: Sales only");
				const auditor = await as("auditor");
				assert.deepEqual(usernames(expectStatus(await auditor.get("/api/users"), 200)), u("engineer"), "custom: R&D");
				// The built-in member role: the members' permissions, scope deptAndChildren.
				const engineer = await as("engineer");
				assert.deepEqual(usernames(expectStatus(await engineer.get("/api/users"), 200)), u("engineer"));
				assert.deepEqual(expectStatus(await engineer.get("/api/depts"), 200).map((d: { name: string }) => d.name), ["R&D"]);
			});

			it("refuses what a role does not allow with 403, and a user cannot hand out more than they hold", async () => {
				const seller = await org.anonymous.login(`${company.code}-seller`, password);
				const denied = await seller.post("/api/users", { username: unique("x"), password, name: "X" });
				assert.equal(denied.status, 403);
				assert.equal(denied.body.data.permission, "user:create");
				assert.equal((await seller.get("/api/roles")).status, 403);

				// A user manager without role:write cannot give the company-admin role.
				const managerRole = expectStatus(await company.admin.post("/api/roles", { name: "User manager", code: "user-manager", permissions: ["user:read", "user:create", "role:read"], dataScope: "all" }), 200).id;
				expectStatus(await company.admin.post("/api/users", { username: `${company.code}-manager`, password, name: "Manager", roleIds: [managerRole] }), 200);
				const manager = await org.anonymous.login(`${company.code}-manager`, password);
				const roles = expectStatus(await manager.get("/api/roles?pageSize=100"), 200).rows;
				const adminRole = roles.find((r: { code: string }) => r.code === "company-admin");
				const escalate = await manager.post("/api/users", { username: `${company.code}-sneaky`, password, name: "Sneaky", roleIds: [adminRole.id] });
				assert.equal(escalate.status, 403);
				assert.equal((await company.admin.get(`/api/users?search=sneaky`)).body.total, 0, "nothing was written");
			});

			it("grants a permission to a user at once on every gateway, and a revoked grant stops working everywhere", async () => {
				const seller = await org.anonymous.login(`${company.code}-seller`, password);
				assert.equal((await seller.get("/api/roles")).status, 403);
				assert.equal((await seller.via(other).get("/api/roles")).status, 403, "the other gateway has the principal cached too");
				const grant = expectStatus(await company.admin.post("/api/grants", { subjectType: "user", subjectId: ids.seller, permission: "role:read" }), 200);
				await waitFor(async () => (await seller.get("/api/roles")).status === 200 && (await seller.via(other).get("/api/roles")).status === 200, "the grant on both gateways", 1000);
				expectStatus(await company.admin.delete(`/api/grants/${grant.id}`), 200);
				await waitFor(async () => (await seller.get("/api/roles")).status === 403 && (await seller.via(other).get("/api/roles")).status === 403, "the revocation on both gateways", 1000);
			});

			it("grants to a department reach the users of the departments below it", async () => {
				const grant = expectStatus(await company.admin.post("/api/grants", { subjectType: "dept", subjectId: ids.sales, permission: "role:read" }), 200);
				const seller = await org.anonymous.login(`${company.code}-seller`, password);
				assert.equal((await seller.get("/api/roles")).status, 200, "Sales East is below Sales");
				const engineer = await org.anonymous.login(`${company.code}-engineer`, password);
				expectStatus(await engineer.get("/api/roles"), 200, "members read roles");
				const listed = expectStatus(await company.admin.get(`/api/grants?subjectType=dept&subjectId=${ids.sales}`), 200);
				assert.deepEqual(listed.rows.map((g: { id: string }) => g.id), [grant.id]);
				expectStatus(await company.admin.delete(`/api/grants/${grant.id}`), 200);
			});

			it("signs out a disabled user at once, and refuses their login", async () => {
				const seller = await org.anonymous.login(`${company.code}-seller`, password);
				expectStatus(await seller.via(other).get("/api/users"), 200);
				expectStatus(await company.admin.put(`/api/users/${ids.seller}/status`, { status: "disabled" }), 200);
				await waitFor(async () => (await seller.get("/api/users")).status === 401 && (await seller.via(other).get("/api/users")).status === 401, "the disabled user's token to fail everywhere", 1000);
				const login = await org.anonymous.post("/api/auth/login", { username: `${company.code}-seller`, password });
				assert.equal(login.status, 401);
				expectStatus(await company.admin.put(`/api/users/${ids.seller}/status`, { status: "enabled" }), 200);
				await org.anonymous.login(`${company.code}-seller`, password);
			});

			it("resets a user's password: the old one stops working, the user's sessions end", async () => {
				const engineer = await org.anonymous.login(`${company.code}-engineer`, password);
				const weak = await company.admin.post(`/api/users/${ids.engineer}/reset-password`, { password: "short" });
				assert.equal(weak.status, 422);
				assert.equal(weak.body.type, "WEAK_PASSWORD");
				assert.equal((await company.admin.post(`/api/users/${ids.engineer}/reset-password`, { password: "New-passw0rd" })).status, 204);
				await waitFor(async () => (await engineer.get("/api/depts")).status === 401, "the engineer's session to end", 1000);
				assert.equal((await org.anonymous.post("/api/auth/login", { username: `${company.code}-engineer`, password })).status, 401);
				await org.anonymous.login(`${company.code}-engineer`, "New-passw0rd");
			});

			it("records every change and login in the company's audit log, secrets redacted, the chain intact", async () => {
				type Row = { service: string; action: string; username: string; params: Record<string, unknown>; result: string; target: string | null };
				let rows: Row[] = [];
				await waitFor(async () => {
					rows = expectStatus(await company.admin.get("/api/logs/operations?service=user&pageSize=100"), 200).rows;
					return rows.filter(r => r.action === "resetPassword").length >= 2;
				}, "the audit records");
				const created = rows.filter(r => r.action === "create");
				assert.ok(created.filter(r => r.username === `${company.code}-admin` && r.result === "ok").length >= 5, "the administrator's user creations");
				assert.ok(created.some(r => r.username === `${company.code}-manager` && r.result === "error"), "the refused escalation, by whom it was tried");
				for (const row of created) assert.equal(row.params.password, "[redacted]");
				const weak = rows.find(r => r.action === "resetPassword" && r.result === "error");
				assert.ok(weak, "a refused change is recorded with its error");
				assert.equal(weak.target, ids.engineer);
				assert.ok(!JSON.stringify(rows).includes(password), "no password anywhere in the records");

				const logins = expectStatus(await company.admin.get(`/api/logs/logins?username=${company.code}-seller&pageSize=100`), 200).rows;
				assert.ok(logins.some((r: { result: string }) => r.result === "ok"));
				assert.ok(logins.some((r: { result: string }) => r.result === "failure" || r.result === "disabled"), "the disabled user's refused login");
				const verify = expectStatus(await company.admin.get("/api/logs/verify"), 200);
				assert.equal(verify.intact, true, JSON.stringify(verify));

				// Another company's administrator sees none of it.
				const stranger = await createCompany(org);
				const theirs = expectStatus(await stranger.admin.get("/api/logs/operations?pageSize=100"), 200).rows;
				assert.ok(!JSON.stringify(theirs).includes(company.code));
			});

			it("refuses to delete a role still given to users, and built-in roles", async () => {
				const inUse = await company.admin.delete(`/api/roles/${ids.leadRole}`);
				assert.equal(inUse.status, 409);
				assert.equal(inUse.body.type, "ROLE_IN_USE");
				const roles = expectStatus(await company.admin.get("/api/roles?pageSize=100"), 200).rows;
				const member = roles.find((r: { code: string }) => r.code === "member");
				assert.equal((await company.admin.delete(`/api/roles/${member.id}`)).status, 409);
				assert.equal((await company.admin.put(`/api/roles/${member.id}`, { permissions: ["user:create"] })).status, 409);
			});

			it("signs out a disabled company's users and refuses their logins; only a disabled company can be deleted", async () => {
				const other = await createCompany(org);
				expectStatus(await other.admin.get("/api/depts"), 200);
				// Records of each kind, to see them go with the company.
				const dept = expectStatus(await other.admin.post("/api/depts", { name: "Doomed" }), 200);
				expectStatus(await other.admin.post("/api/grants", { subjectType: "dept", subjectId: dept.id, permission: "dept:read" }), 200);
				expectStatus(await other.admin.post("/api/dicts", { code: "doomed", name: "Doomed" }), 200);
				const enabled = await org.admin.delete(`/api/companies/${other.id}`);
				assert.equal(enabled.status, 409);
				expectStatus(await org.admin.put(`/api/companies/${other.id}`, { status: "disabled" }), 200);
				await waitFor(async () => (await other.admin.get("/api/depts")).status === 401, "the company's sessions to end", 1000);
				assert.equal((await org.anonymous.post("/api/auth/login", { username: `${other.code}-admin`, password: other.adminPassword })).status, 401);
				expectStatus(await org.admin.delete(`/api/companies/${other.id}`), 200);
				assert.equal((await org.admin.get(`/api/companies/${other.id}`)).status, 404);
				const gone = async (path: string) => (await org.admin.get(`${path}companyId=${other.id}`)).body.total === 0;
				// Dictionaries list the global ones too: only the company's own must go.
				const dictsGone = async () => (await org.admin.get(`/api/dicts?companyId=${other.id}`)).body.rows.every((d: { global: boolean }) => d.global);
				await waitFor(async () => (await gone("/api/users?")) && (await gone("/api/roles?")) && (await gone("/api/grants?")) && (await dictsGone()), "the company's records to go with it");
				assert.deepEqual(expectStatus(await org.admin.get(`/api/depts?companyId=${other.id}`), 200), []);
			});
		});

		describe("licences", () => {
			it("refuses a user beyond the licence's seats with a clear 403 and writes nothing", async () => {
				const company = await createCompany(org, { licenseKey: await issueLicense(org, { seats: 3 }) });
				const password = "Passw0rd-user";
				for (const n of [1, 2]) expectStatus(await company.admin.post("/api/users", { username: `${company.code}-u${n}`, password, name: `U${n}` }), 200);
				const full = await company.admin.post("/api/users", { username: `${company.code}-u3`, password, name: "U3" });
				assert.equal(full.status, 403);
				assert.equal(full.body.type, "SEATS_EXHAUSTED");
				assert.match(full.body.message, /3 users/);
				assert.equal(expectStatus(await company.admin.get("/api/users"), 200).total, 3);
				const current = expectStatus(await company.admin.get("/api/licenses/current"), 200);
				assert.equal(current.seats, 3);
				assert.equal(current.seatsUsed, 3);
			});

			it("installs a licence key on one company only", async () => {
				const key = await issueLicense(org);
				const first = await createCompany(org, { licenseKey: key });
				const code = unique("co-");
				const second = await org.admin.post("/api/companies", { name: "Second", code, licenseKey: key });
				assert.equal(second.status, 409);
				assert.equal(second.body.type, "LICENSE_IN_USE");
				const other = await createCompany(org);
				assert.equal((await org.admin.put(`/api/companies/${other.id}`, { licenseKey: key })).status, 409);
				expectStatus(await org.admin.put(`/api/companies/${first.id}`, { licenseKey: key }), 200, "the holder may set it again");
			});

			it("refuses a tampered licence key and creates nothing", async () => {
				const key = await issueLicense(org, { seats: 1000 });
				const at = key.length - 10;
				const tampered = key.slice(0, at) + (key[at] === "A" ? "B" : "A") + key.slice(at + 1);
				const code = unique("co-");
				const res = await org.admin.post("/api/companies", { name: "Tampered", code, licenseKey: tampered, admin: { username: `${code}-admin`, password: "Company-admin-1", name: "A" } });
				assert.equal(res.status, 422);
				assert.equal(res.body.type, "INVALID_LICENSE");
				assert.equal(expectStatus(await org.admin.get(`/api/companies?search=${code}`), 200).total, 0);
				assert.equal((await org.anonymous.post("/api/auth/login", { username: `${code}-admin`, password: "Company-admin-1" })).status, 401);
			});

			it("grants only the apps of the licence's features", async () => {
				const withoutBi = await createCompany(org, { licenseKey: await issueLicense(org, { features: ["messaging"] }) });
				const byApp = await withoutBi.admin.post("/api/grants", { subjectType: "company", subjectId: withoutBi.id, app: "bi" });
				assert.equal(byApp.status, 403);
				assert.equal(byApp.body.type, "APP_NOT_LICENSED");
				const byPermission = await org.admin.post("/api/grants", { subjectType: "company", subjectId: withoutBi.id, permission: "report:read" });
				assert.equal(byPermission.status, 403, "not even the platform administrator grants an unlicensed app");
				assert.equal((await withoutBi.admin.get("/api/report-probe")).status, 403);

				const withBi = await createCompany(org, { licenseKey: await issueLicense(org, { features: ["bi"] }) });
				assert.ok(withBi.admin.user.permissions.includes("report:read"));
				expectStatus(await withBi.admin.via(other).get("/api/report-probe"), 200);
			});

			it("leaves a company whose licence expired read-only, with a clear message, until a new licence is installed", async () => {
				const company = await createCompany(org, { licenseKey: await issueLicense(org, { expiresAt: new Date(Date.now() + 2500).toISOString() }) });
				expectStatus(await company.admin.post("/api/depts", { name: "Before expiry" }), 200);
				// An invalid body answers 422 while the company may write, 403 once it may not: nothing is written either way.
				await waitFor(async () => (await company.admin.post("/api/depts", {})).status === 403, "the licence to expire", 10_000);
				const refused = await company.admin.via(other).post("/api/depts", { name: "After expiry" });
				assert.equal(refused.status, 403);
				assert.equal(refused.body.type, "READ_ONLY");
				assert.match(refused.body.message, /licence expired on \d{4}-\d{2}-\d{2}.*read-only/);
				assert.deepEqual(expectStatus(await company.admin.get("/api/depts"), 200).map((d: { name: string }) => d.name), ["Before expiry"]);

				expectStatus(await org.admin.put(`/api/companies/${company.id}`, { licenseKey: await issueLicense(org) }), 200);
				await waitFor(async () => (await company.admin.post("/api/depts", { name: "Renewed" })).status === 200, "the new licence", 1000);
			});
		});

		describe("tenant isolation", () => {
			let a: TestCompany;
			let b: TestCompany;
			const theirs: Record<string, string> = {};
			let snapshot: string;

			/** What company B's administrator sees of B's records. */
			const snapshotOfB = async () =>
				JSON.stringify(
					await Promise.all(
						["/api/depts", "/api/users?pageSize=100&sort=username", "/api/roles?pageSize=100&sort=code", "/api/grants?pageSize=100", `/api/users/${theirs.user}`, `/api/roles/${theirs.role}`].map(
							async p => (await b.admin.get(p)).body,
						),
					),
				);

			before(async () => {
				a = await createCompany(org);
				b = await createCompany(org);
				theirs.dept = expectStatus(await b.admin.post("/api/depts", { name: "B dept" }), 200).id;
				theirs.role = expectStatus(await b.admin.post("/api/roles", { name: "B role", code: "b-role", permissions: ["user:read"], dataScope: "all" }), 200).id;
				theirs.user = expectStatus(await b.admin.post("/api/users", { username: `${b.code}-user`, password: "Passw0rd-b", name: "B user", deptId: theirs.dept, roleIds: [theirs.role] }), 200).id;
				theirs.grant = expectStatus(await b.admin.post("/api/grants", { subjectType: "user", subjectId: theirs.user, permission: "dept:read" }), 200).id;
				snapshot = await snapshotOfB();
			});

			it("answers 404 or 403 to company A for every route on company B's records, and changes nothing", async () => {
				const A = a.admin.via(other);
				const attempts: [string, string, unknown?][] = [
					["GET", `/api/users/${theirs.user}`],
					["PUT", `/api/users/${theirs.user}`, { name: "hacked" }],
					["DELETE", `/api/users/${theirs.user}`],
					["PUT", `/api/users/${theirs.user}/status`, { status: "disabled" }],
					["POST", `/api/users/${theirs.user}/reset-password`, { password: "Hacked-passw0rd" }],
					["GET", `/api/depts/${theirs.dept}`],
					["PUT", `/api/depts/${theirs.dept}`, { name: "hacked" }],
					["DELETE", `/api/depts/${theirs.dept}`],
					["GET", `/api/roles/${theirs.role}`],
					["PUT", `/api/roles/${theirs.role}`, { name: "hacked" }],
					["DELETE", `/api/roles/${theirs.role}`],
					["DELETE", `/api/grants/${theirs.grant}`],
					["GET", `/api/users?companyId=${b.id}`],
					["POST", "/api/users", { username: unique("x"), password: "Passw0rd-x", name: "X", companyId: b.id }],
					["POST", "/api/depts", { name: "X", companyId: b.id }],
					["GET", "/api/companies"],
					["GET", `/api/companies/${b.id}`],
					["PUT", `/api/companies/${b.id}`, { status: "disabled" }],
					["DELETE", `/api/companies/${b.id}`],
					["GET", `/api/licenses/current?companyId=${b.id}`],
				];
				for (const [method, path, body] of attempts) {
					const res = await A.call(method, path, body);
					assert.ok([403, 404].includes(res.status), `${method} ${path}: ${res.status} ${JSON.stringify(res.body)}`);
				}
				assert.equal(await snapshotOfB(), snapshot, "company B's records are unchanged");
			});

			it("refuses B's departments, roles and users as references in A's records", async () => {
				const A = a.admin;
				const refs: [string, string, unknown][] = [
					["POST", "/api/users", { username: unique("x"), password: "Passw0rd-x", name: "X", deptId: theirs.dept }],
					["POST", "/api/users", { username: unique("x"), password: "Passw0rd-x", name: "X", roleIds: [theirs.role] }],
					["POST", "/api/depts", { name: "X", parentId: theirs.dept }],
					["POST", "/api/roles", { name: "X", code: "x-role", permissions: [], dataScope: "custom", deptIds: [theirs.dept] }],
					["POST", "/api/grants", { subjectType: "user", subjectId: theirs.user, permission: "dept:read" }],
					["POST", "/api/grants", { subjectType: "role", subjectId: theirs.role, permission: "dept:read" }],
					["POST", "/api/grants", { subjectType: "dept", subjectId: theirs.dept, permission: "dept:read" }],
					["POST", "/api/grants", { subjectType: "company", subjectId: b.id, permission: "dept:read" }],
				];
				for (const [method, path, body] of refs) {
					const res = await A.call(method, path, body);
					assert.ok([403, 404, 422].includes(res.status), `${method} ${path} ${JSON.stringify(body)}: ${res.status} ${JSON.stringify(res.body)}`);
				}
				assert.equal(expectStatus(await A.get("/api/users"), 200).total, 1, "nothing was written in A");
				assert.equal(await snapshotOfB(), snapshot);
			});

			it("never lists B's records to A", async () => {
				const listed = JSON.stringify(
					await Promise.all(["/api/depts", "/api/users?pageSize=100", "/api/roles?pageSize=100", "/api/grants?pageSize=100", `/api/users?search=${b.code}`].map(async p => (await a.admin.get(p)).body)),
				);
				for (const id of Object.values(theirs)) assert.ok(!listed.includes(id), `B's record ${id} is listed to A`);
				assert.ok(!listed.includes(b.code));
			});
		});

		describe("bad input", () => {
			let company: TestCompany;
			let userId: string;

			before(async () => {
				company = await createCompany(org, { licenseKey: await issueLicense(org) });
				userId = company.admin.user.id;
			});

			it("answers every malformed request with a 4xx that says what was wrong, never a 5xx", async () => {
				const long = "x".repeat(5000);
				const cases: [Api, string, string, unknown?][] = [
					[org.admin, "POST", "/api/companies", {}],
					[org.admin, "POST", "/api/companies", { name: 5, code: "ok-code" }],
					[org.admin, "POST", "/api/companies", { name: "N", code: "Bad Code!" }],
					[org.admin, "POST", "/api/companies", { name: long, code: "long-name" }],
					[org.admin, "POST", "/api/companies", { name: "N", code: unique("c-"), status: "sleeping" }],
					[org.admin, "POST", "/api/companies", { name: "N", code: unique("c-"), admin: { username: "x" } }],
					[org.admin, "POST", "/api/companies", { name: "N", code: unique("c-"), licenseKey: "not-a-licence" }],
					[org.admin, "GET", "/api/companies/does-not-exist"],
					[org.admin, "GET", "/api/companies?pageSize=1000"],
					[org.admin, "GET", "/api/companies?page=0"],
					[org.admin, "PUT", `/api/companies/${company.id}`, { status: true }],
					[company.admin, "POST", "/api/depts", {}],
					[company.admin, "POST", "/api/depts", { name: "" }],
					[company.admin, "POST", "/api/depts", { name: long }],
					[company.admin, "POST", "/api/depts", { name: "D", order: "first" }],
					[company.admin, "POST", "/api/depts", { name: "D", parentId: "no-such-dept" }],
					[company.admin, "POST", "/api/depts", { name: "D", unexpected: 1 }],
					[company.admin, "PUT", "/api/depts/no-such-dept", { name: "D" }],
					[company.admin, "DELETE", "/api/depts/no-such-dept"],
					[company.admin, "POST", "/api/users", {}],
					[company.admin, "POST", "/api/users", { username: "ab", password: "Passw0rd-1", name: "N" }],
					[company.admin, "POST", "/api/users", { username: { $gt: "" }, password: "Passw0rd-1", name: "N" }],
					[company.admin, "POST", "/api/users", { username: unique("u"), password: 12345678, name: "N" }],
					[company.admin, "POST", "/api/users", { username: unique("u"), password: "Passw0rd-1", name: "N", email: "not-an-email" }],
					[company.admin, "POST", "/api/users", { username: unique("u"), password: "Passw0rd-1", name: "N", roleIds: "admin" }],
					[company.admin, "POST", "/api/users", { username: unique("u"), password: "Passw0rd-1", name: "N", roleIds: ["no-such-role"] }],
					[company.admin, "POST", "/api/users", { username: unique("u"), password: "password", name: "N" }],
					[company.admin, "POST", "/api/users", { username: `${company.code}-admin`, password: "Passw0rd-1", name: "Same username" }],
					[company.admin, "GET", "/api/users/no-such-user"],
					[company.admin, "GET", "/api/users?sort=passwordHash"],
					[company.admin, "GET", "/api/users?sort=nope"],
					[company.admin, "GET", `/api/users?search=${long}`],
					[company.admin, "GET", "/api/users?status=asleep"],
					[company.admin, "PUT", `/api/users/${userId}/status`, { status: "disabled" }],
					[company.admin, "DELETE", `/api/users/${userId}`],
					[company.admin, "PUT", "/api/users/no-such-user/status", { status: "disabled" }],
					[company.admin, "POST", "/api/users/no-such-user/reset-password", { password: "Passw0rd-1" }],
					[company.admin, "POST", "/api/roles", {}],
					[company.admin, "POST", "/api/roles", { name: "R", code: "r1", permissions: ["no:such"], dataScope: "all" }],
					[company.admin, "POST", "/api/roles", { name: "R", code: "r2", permissions: [], dataScope: "everything" }],
					[company.admin, "POST", "/api/roles", { name: "R", code: "r3", permissions: [], dataScope: "custom" }],
					[company.admin, "POST", "/api/roles", { name: "R", code: "R 4", permissions: [], dataScope: "all" }],
					[company.admin, "POST", "/api/roles", { name: "R", code: "company-admin", permissions: [], dataScope: "all" }],
					[company.admin, "DELETE", "/api/roles/no-such-role"],
					[company.admin, "POST", "/api/grants", {}],
					[company.admin, "POST", "/api/grants", { subjectType: "team", subjectId: "x", permission: "user:read" }],
					[company.admin, "POST", "/api/grants", { subjectType: "user", subjectId: userId }],
					[company.admin, "POST", "/api/grants", { subjectType: "user", subjectId: userId, app: "org", permission: "user:read" }],
					[company.admin, "POST", "/api/grants", { subjectType: "user", subjectId: userId, permission: "no:such" }],
					[company.admin, "POST", "/api/grants", { subjectType: "user", subjectId: userId, app: "no-such-app" }],
					[company.admin, "DELETE", "/api/grants/no-such-grant"],
				];
				for (const [api, method, path, body] of cases) {
					const res = await api.call(method, path, body);
					assert.ok(res.status >= 400 && res.status < 500, `${method} ${path} ${JSON.stringify(body)?.slice(0, 100)}: ${res.status} ${JSON.stringify(res.body)}`);
					assert.ok(typeof res.body?.message === "string" && res.body.message.length > 0, `${method} ${path}: a message says what was wrong`);
				}
				// The duplicate role code is a conflict, not a server error.
				assert.equal((await company.admin.post("/api/roles", { name: "R", code: "company-admin", permissions: [], dataScope: "all" })).status, 409);
				// Nothing above was written.
				assert.equal(expectStatus(await company.admin.get("/api/users"), 200).total, 1);
				assert.deepEqual(expectStatus(await company.admin.get("/api/depts"), 200), []);
			});

			it("stores injection-shaped strings verbatim and finds them as plain text", async () => {
				const strings = ["'; DROP TABLE users; --", "<script>alert(1)</script>", "Robert'); DELETE FROM depts;--", "%' OR '1'='1", ".*", "{\"$gt\": \"\"}", "名前 ü ☃"];
				for (const name of strings) {
					const dept = expectStatus(await company.admin.post("/api/depts", { name }), 200);
					assert.equal(dept.name, name);
					const user = expectStatus(await company.admin.post("/api/users", { username: unique("inj"), password: "Passw0rd-inj", name }), 200);
					assert.equal(expectStatus(await company.admin.get(`/api/users/${user.id}`), 200).name, name);
				}
				const tree = expectStatus(await company.admin.get("/api/depts"), 200);
				assert.deepEqual(tree.map((d: { name: string }) => d.name).sort(), [...strings].sort());
				// A search for SQL or regex syntax matches it as text, nothing more.
				const pct = expectStatus(await company.admin.get(`/api/users?search=${encodeURIComponent("%' OR '1'='1")}`), 200);
				assert.deepEqual(pct.rows.map((u: { name: string }) => u.name), ["%' OR '1'='1"]);
				const dot = expectStatus(await company.admin.get(`/api/users?search=${encodeURIComponent(".*")}`), 200);
				assert.deepEqual(dot.rows.map((u: { name: string }) => u.name), [".*"]);
			});
		});
	});
}
