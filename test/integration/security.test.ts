/**
 * Authentication through the gateway over HTTP, on the whole platform (every service, the
 * embedded mode): login, lockout, tokens and their expiry, refresh rotation and theft detection,
 * logout, password change, disabled accounts; then two nodes over NATS sharing Redis.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import ConfigService from "../../services/platform/config.service";
import SecurityService from "../../services/platform/security.service";
import { createTestBroker } from "../support/broker";
import { Api, createCompany, expectStatus, startOrg, startOrgCluster, unique, type Reply, type RunningOrg, type TestCompany } from "../support/org";
import { startNats, waitFor, type ServerProcess } from "../support/servers";

const PASSWORD = "Member-pass-1";
let ipSeq = 0;
/** A fresh client address (the gateway trusts X-Forwarded-For from loopback here), so IP lockouts of one test stay out of the others. */
const freshIp = () => `10.9.${Math.floor(++ipSeq / 250)}.${ipSeq % 250}`;

/** POST /api/auth/login from a given client address. */
function login(api: Api, username: string, password: unknown, ip = freshIp(), extra: Record<string, unknown> = {}): Promise<Reply> {
	return new Api(api.url).call("POST", "/api/auth/login", { username, password, ...extra }, { "X-Forwarded-For": ip });
}

async function signIn(api: Api, username: string, password = PASSWORD): Promise<Api> {
	const body = expectStatus(await login(api, username, password), 200, `login ${username}`);
	return new Api(api.url, body.accessToken, body.refreshToken, body.user);
}

async function createUser(company: TestCompany, password = PASSWORD): Promise<{ id: string; username: string }> {
	const username = unique(`${company.code}-u`);
	const user = expectStatus(await company.admin.post("/api/users", { username, password, name: "Member" }), 200, "create user");
	return { id: user.id, username };
}

/** A company with room for every user a test file creates (the evaluation allowance has 5 seats). */
async function roomyCompany(org: RunningOrg): Promise<TestCompany> {
	const licence = expectStatus(
		await org.admin.post("/api/licenses", {
			licensee: "Security tests", type: "enterprise", edition: "commercial", seats: 500, features: [],
			expiresAt: new Date(Date.now() + 365 * 24 * 3600 * 1000).toISOString(),
		}),
		200,
		"issue licence",
	);
	return createCompany(org, { licenseKey: licence.key });
}

const refresh = (api: Api, refreshToken: unknown) => new Api(api.url).post("/api/auth/refresh", { refreshToken });

describe("security: authentication through the gateway", () => {
	let org: RunningOrg;
	let company: TestCompany;

	before(async () => {
		org = await startOrg({ TRUSTED_PROXIES: "loopback" });
		company = await roomyCompany(org);
	});
	after(() => org?.stop());

	it("signs in and answers the user; the access token opens /me", async () => {
		const { username, id } = await createUser(company);
		const body = expectStatus(await login(org.anonymous, username, PASSWORD, freshIp(), { device: "test-phone" }), 200);
		assert.equal(typeof body.accessToken, "string");
		assert.match(body.refreshToken, /^[A-Za-z0-9-]+\.[A-Za-z0-9_-]{43}$/);
		assert.equal(body.expiresIn, 900);
		assert.equal(body.user.id, id);
		assert.equal(body.user.username, username);
		assert.equal(body.user.companyId, company.id);
		assert.ok(Array.isArray(body.user.roles) && Array.isArray(body.user.permissions));
		assert.equal(body.user.passwordHash, undefined);

		const me = expectStatus(await org.anonymous.as(body.accessToken).get("/api/auth/me"), 200);
		assert.equal(me.id, id);
		assert.equal(me.companyId, company.id);
		assert.equal(typeof me.sessionId, "string");
		assert.equal((await org.anonymous.get("/api/auth/me")).status, 401);
		assert.equal((await org.anonymous.as("not-a-token").get("/api/auth/me")).status, 401);
	});

	it("answers an unknown user and a wrong password with the same 401", async () => {
		const { username } = await createUser(company);
		const wrong = await login(org.anonymous, username, "Wrong-pass-1");
		const unknown = await login(org.anonymous, unique("nobody-"), "Wrong-pass-1");
		assert.equal(wrong.status, 401);
		assert.deepEqual(wrong.body, unknown.body);
		assert.equal(wrong.body.type, "INVALID_CREDENTIALS");
		assert.equal(wrong.body.message, "Wrong username or password");
	});

	it("locks a username after 5 failures, from any address, even with the right password", async () => {
		const { username } = await createUser(company);
		for (let i = 0; i < 5; i++) assert.equal((await login(org.anonymous, username, `Wrong-pass-${i}`)).status, 401);
		const lockedOut = await login(org.anonymous, username, PASSWORD);
		assert.equal(lockedOut.status, 423);
		assert.equal(lockedOut.body.type, "LOCKED");
		assert.ok(lockedOut.body.data.retryAfter > 500 && lockedOut.body.data.retryAfter <= 600, `retryAfter ${lockedOut.body.data.retryAfter}`);
		// Another user is not affected.
		const other = await createUser(company);
		assert.equal((await login(org.anonymous, other.username, PASSWORD)).status, 200);
	});

	it("locks a client address after 5 failures, whatever the usernames", async () => {
		const ip = freshIp();
		for (let i = 0; i < 5; i++) assert.equal((await login(org.anonymous, unique("ghost-"), "Wrong-pass-1", ip)).status, 401);
		const { username } = await createUser(company);
		const lockedOut = await login(org.anonymous, username, PASSWORD, ip);
		assert.equal(lockedOut.status, 423);
		assert.ok(lockedOut.body.data.retryAfter > 0);
		assert.equal((await login(org.anonymous, username, PASSWORD, freshIp())).status, 200, "the same user from elsewhere");
	});

	it("forgets a username's failures after a successful login", async () => {
		const { username } = await createUser(company);
		for (let i = 0; i < 4; i++) await login(org.anonymous, username, "Wrong-pass-1");
		assert.equal((await login(org.anonymous, username, PASSWORD)).status, 200);
		for (let i = 0; i < 4; i++) await login(org.anonymous, username, "Wrong-pass-1");
		assert.equal((await login(org.anonymous, username, PASSWORD)).status, 200);
	});

	it("rotates refresh tokens: each is spent once used, and the new access token works", async () => {
		const { username } = await createUser(company);
		const first = await signIn(org.anonymous, username);
		const second = expectStatus(await refresh(org.anonymous, first.refreshToken), 200);
		assert.notEqual(second.refreshToken, first.refreshToken);
		assert.equal(second.refreshToken.split(".")[0], first.refreshToken!.split(".")[0], "the same session");
		assert.equal(second.user.username, username);
		assert.equal(expectStatus(await org.anonymous.as(second.accessToken).get("/api/auth/me"), 200).username, username);
		const third = expectStatus(await refresh(org.anonymous, second.refreshToken), 200);
		assert.equal(expectStatus(await org.anonymous.as(third.accessToken).get("/api/auth/me"), 200).username, username);
	});

	it("revokes the session when a spent refresh token comes back (theft)", async () => {
		const { username } = await createUser(company);
		const stolen = await signIn(org.anonymous, username);
		const legit = expectStatus(await refresh(org.anonymous, stolen.refreshToken), 200);
		// The new access token is in use (and cached by the gateway) before the theft shows.
		assert.equal((await org.anonymous.as(legit.accessToken).get("/api/auth/me")).status, 200);

		const reuse = await refresh(org.anonymous, stolen.refreshToken);
		assert.equal(reuse.status, 401);
		assert.equal(reuse.body.type, "REFRESH_TOKEN_REUSED");
		assert.equal((await refresh(org.anonymous, legit.refreshToken)).status, 401, "the current refresh token is dead too");
		assert.equal((await org.anonymous.as(legit.accessToken).get("/api/auth/me")).status, 401, "and so is the access token");
		assert.equal((await org.anonymous.as(stolen.token).get("/api/auth/me")).status, 401);
	});

	it("refuses an unknown refresh token without ending the session", async () => {
		const { username } = await createUser(company);
		const session = await signIn(org.anonymous, username);
		const sessionId = session.refreshToken!.split(".")[0];
		const forged = await refresh(org.anonymous, `${sessionId}.${randomBytes(32).toString("base64url")}`);
		assert.equal(forged.status, 401);
		assert.equal(forged.body.type, "INVALID_TOKEN");
		assert.equal((await refresh(org.anonymous, "garbage")).status, 401);
		assert.equal((await refresh(org.anonymous, session.refreshToken)).status, 200, "the real one still works");
	});

	it("logs out: the session's access and refresh tokens stop working at once", async () => {
		const { username } = await createUser(company);
		const session = await signIn(org.anonymous, username);
		const other = await signIn(org.anonymous, username);
		assert.equal((await session.get("/api/auth/me")).status, 200);
		const out = await session.post("/api/auth/logout");
		assert.equal(out.status, 204);
		assert.equal((await session.get("/api/auth/me")).status, 401);
		assert.equal((await refresh(org.anonymous, session.refreshToken)).status, 401);
		assert.equal((await other.get("/api/auth/me")).status, 200, "the user's other session lives on");
		assert.equal((await org.anonymous.post("/api/auth/logout")).status, 401);
	});

	it("expires access tokens after the configured lifetime, while refresh still works", async () => {
		const { username } = await createUser(company);
		expectStatus(await org.admin.put("/api/config/security", { values: { accessTokenTtlSeconds: 2 } }), 200);
		try {
			await waitFor(async () => (await login(org.anonymous, username, PASSWORD)).body.expiresIn === 2, "the new lifetime to apply");
			const session = await signIn(org.anonymous, username);
			// Used while valid, so the gateway caches it: the cache must not outlive the token.
			assert.equal((await session.get("/api/auth/me")).status, 200);
			await new Promise(resolve => setTimeout(resolve, 3100));
			const expired = await session.get("/api/auth/me");
			assert.equal(expired.status, 401);
			assert.equal(expired.body.type, "INVALID_TOKEN");
			const renewed = expectStatus(await refresh(org.anonymous, session.refreshToken), 200);
			assert.equal((await org.anonymous.as(renewed.accessToken).get("/api/auth/me")).status, 200);
		} finally {
			expectStatus(await org.admin.put("/api/config/security", { values: {} }), 200);
		}
	});

	it("changes the password: policy, the current password, and the user's other sessions end", async () => {
		const { username } = await createUser(company);
		const here = await signIn(org.anonymous, username);
		const elsewhere = await signIn(org.anonymous, username);

		const weak = [["short1", /at least 8/], ["onlyletters", /letters and digits/], [`${username}x1`, /username/]] as const;
		for (const [password, message] of weak) {
			const res = await here.put("/api/auth/password", { oldPassword: PASSWORD, newPassword: password });
			assert.equal(res.status, 422, password);
			assert.equal(res.body.type, "WEAK_PASSWORD");
			assert.match(res.body.message, message);
		}
		const wrongOld = await here.put("/api/auth/password", { oldPassword: "Not-mine-1", newPassword: "Brand-new-2" });
		assert.equal(wrongOld.status, 422);
		assert.equal(wrongOld.body.type, "WRONG_PASSWORD");
		assert.equal((await elsewhere.get("/api/auth/me")).status, 200, "nothing ended on a refused change");

		assert.equal((await here.put("/api/auth/password", { oldPassword: PASSWORD, newPassword: "Brand-new-2" })).status, 204);
		assert.equal((await here.get("/api/auth/me")).status, 200, "this session lives on");
		assert.equal((await elsewhere.get("/api/auth/me")).status, 401, "the other ended");
		assert.equal((await refresh(org.anonymous, elsewhere.refreshToken)).status, 401);
		assert.equal((await login(org.anonymous, username, PASSWORD)).status, 401);
		assert.equal((await login(org.anonymous, username, "Brand-new-2")).status, 200);
	});

	it("ends a disabled user's sessions and refuses the login, telling only a caller with the right password", async () => {
		const { username, id } = await createUser(company);
		const session = await signIn(org.anonymous, username);
		assert.equal((await session.get("/api/auth/me")).status, 200);
		expectStatus(await company.admin.put(`/api/users/${id}/status`, { status: "disabled" }), 200, "disable");
		assert.equal((await session.get("/api/auth/me")).status, 401);
		assert.equal((await refresh(org.anonymous, session.refreshToken)).status, 401);
		const right = await login(org.anonymous, username, PASSWORD);
		assert.equal(right.status, 401);
		assert.equal(right.body.type, "ACCOUNT_DISABLED");
		const wrong = await login(org.anonymous, username, "Wrong-pass-1");
		assert.equal(wrong.body.type, "INVALID_CREDENTIALS");
	});

	it("ends the sessions of a disabled company's users", async () => {
		const other = await createCompany(org);
		const { username } = await createUser(other);
		const session = await signIn(org.anonymous, username);
		assert.equal((await session.get("/api/auth/me")).status, 200);
		expectStatus(await org.admin.put(`/api/companies/${other.id}`, { status: "disabled" }), 200, "disable company");
		assert.equal((await session.get("/api/auth/me")).status, 401);
		assert.equal((await other.admin.get("/api/auth/me")).status, 401);
		assert.equal((await login(org.anonymous, username, PASSWORD)).body.type, "COMPANY_DISABLED");
	});

	it("refuses bad input with a 4xx that says what was wrong", async () => {
		const { username } = await createUser(company);
		const session = await signIn(org.anonymous, username);
		const anon = new Api(org.url);
		const cases: [Api, string, string, unknown, number, RegExp][] = [
			[anon, "POST", "/api/auth/login", { username }, 422, /password/],
			[anon, "POST", "/api/auth/login", { password: PASSWORD }, 422, /username/],
			[anon, "POST", "/api/auth/login", { username, password: 12345678 }, 422, /password/],
			[anon, "POST", "/api/auth/login", { username: "x".repeat(65), password: PASSWORD }, 422, /username/],
			[anon, "POST", "/api/auth/login", { username, password: "x".repeat(129) }, 422, /password/],
			[anon, "POST", "/api/auth/login", { username, password: PASSWORD, device: "d".repeat(201) }, 422, /device/],
			[anon, "POST", "/api/auth/login", { username, password: PASSWORD, admin: true }, 422, /forbidden keys/],
			[anon, "POST", "/api/auth/refresh", {}, 422, /refreshToken/],
			[anon, "POST", "/api/auth/refresh", { refreshToken: "r".repeat(201) }, 422, /refreshToken/],
			[anon, "POST", "/api/auth/refresh", { refreshToken: ["x"] }, 422, /refreshToken/],
			[session, "PUT", "/api/auth/password", { oldPassword: PASSWORD }, 422, /newPassword/],
			[session, "PUT", "/api/auth/password", { oldPassword: PASSWORD, newPassword: 5 }, 422, /newPassword/],
		];
		for (const [api, method, path, body, status, message] of cases) {
			const res = await api.call(method, path, body, { "X-Forwarded-For": freshIp() });
			assert.equal(res.status, status, `${method} ${path} ${JSON.stringify(body).slice(0, 60)}: ${JSON.stringify(res.body)}`);
			assert.match(JSON.stringify(res.body), message);
		}
		const notJson = await fetch(`${org.url}/api/auth/login`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{nope" });
		assert.equal(notJson.status, 400);
		assert.equal((await session.get("/api/auth/me")).status, 200, "the password was not changed");
	});

	it("emits a login event for every attempt", async () => {
		const seen: any[] = [];
		const listener = org.broker.createService({ name: `login-listener-${ipSeq}`, events: { "security.login.attempted"(ctx: any) { seen.push(ctx.params); } } });
		try {
			const { username, id } = await createUser(company);
			const ip = freshIp();
			await login(org.anonymous, username, "Wrong-pass-1", ip);
			await login(org.anonymous, username, PASSWORD, ip, { device: "laptop" });
			await waitFor(() => seen.filter(e => e.username === username).length === 2, "two login events");
			const [failure, ok] = seen.filter(e => e.username === username);
			assert.deepEqual([failure.result, failure.userId, failure.ip], ["failure", id, ip]);
			assert.deepEqual([ok.result, ok.userId, ok.companyId, ok.device], ["ok", id, company.id, "laptop"]);
			assert.equal(JSON.stringify(seen).includes(PASSWORD), false, "no password in the event");
		} finally {
			await org.broker.destroyService(listener);
		}
	});
});

describe("security across two nodes (NATS, Redis, PostgreSQL)", () => {
	let org: RunningOrg;
	let company: TestCompany;

	before(async () => {
		org = await startOrgCluster({ TRUSTED_PROXIES: "loopback" });
		company = await roomyCompany(org);
	});
	after(() => org?.stop());

	it("a session opened on one node works on the other, and a logout on one ends it on both", async () => {
		const { username } = await createUser(company);
		const one = await signIn(org.anonymous, username);
		const two = one.via(org.urls[1]);
		assert.equal((await two.get("/api/auth/me")).status, 200);
		assert.equal((await one.get("/api/auth/me")).status, 200);
		assert.equal((await one.post("/api/auth/logout")).status, 204);
		assert.equal((await two.get("/api/auth/me")).status, 401);
		assert.equal((await refresh(new Api(org.urls[1]), one.refreshToken)).status, 401);
	});

	it("a force logout on one node ends the session on the other", async () => {
		const { username } = await createUser(company);
		const user = await signIn(org.anonymous, username);
		const onTwo = user.via(org.urls[1]);
		assert.equal((await onTwo.get("/api/auth/me")).status, 200);
		const sessionId = expectStatus(await onTwo.get("/api/auth/me"), 200).sessionId;
		assert.equal((await company.admin.delete(`/api/online/${sessionId}`)).status, 204);
		assert.equal((await onTwo.get("/api/auth/me")).status, 401);
		assert.equal((await user.get("/api/auth/me")).status, 401);
	});

	it("of two refreshes racing with the same token on two nodes, one wins and the session ends", async () => {
		const { username } = await createUser(company);
		const user = await signIn(org.anonymous, username);
		const [a, b] = await Promise.all([refresh(new Api(org.urls[0]), user.refreshToken), refresh(new Api(org.urls[1]), user.refreshToken)]);
		assert.deepEqual([a.status, b.status].sort(), [200, 401]);
		const winner = a.status === 200 ? a : b;
		assert.equal((await refresh(org.anonymous, winner.body.refreshToken)).status, 401, "the reuse revoked the session");
	});

	it("counts failed logins across nodes", async () => {
		const { username } = await createUser(company);
		for (let i = 0; i < 5; i++) assert.equal((await login(new Api(org.urls[i % 2]), username, "Wrong-pass-1")).status, 401);
		assert.equal((await login(new Api(org.urls[0]), username, PASSWORD)).status, 423);
		assert.equal((await login(new Api(org.urls[1]), username, PASSWORD)).status, 423);
	});
});

describe("security refuses to start where it cannot work", () => {
	let nats: ServerProcess & { url: string };
	before(async () => {
		nats = await startNats();
	});
	after(() => nats?.stop());

	it("in cluster mode without JWT_SECRET", async () => {
		const broker = createTestBroker({ TRANSPORTER: nats.url, NAMESPACE: unique("nosecret"), NODE_ID: unique("n") });
		broker.createService(ConfigService);
		broker.createService(SecurityService);
		try {
			await assert.rejects(broker.start(), /set JWT_SECRET on every node that runs security/);
		} finally {
			await broker.stop().catch(() => undefined);
		}
	});

	it("as a second replica without Redis", async () => {
		const namespace = unique("noredis");
		const env = { TRANSPORTER: nats.url, NAMESPACE: namespace, JWT_SECRET: "s3cret-for-the-test" };
		const first = createTestBroker({ ...env, NODE_ID: unique("first") });
		first.createService(ConfigService);
		first.createService(SecurityService);
		const second = createTestBroker({ ...env, NODE_ID: unique("second") });
		second.createService(ConfigService);
		second.createService(SecurityService);
		try {
			await first.start();
			await assert.rejects(second.start(), (err: Error & { type?: string }) => err.type === "SESSIONS_NOT_SHARED" && /set REDIS_URL/.test(err.message));
		} finally {
			await second.stop().catch(() => undefined);
			await first.stop().catch(() => undefined);
		}
	});
});
