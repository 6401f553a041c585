/**
 * Presence through the gateway: who is online in my company within my data scope, real-time
 * connections announced by the channels, last seen, force logout; embedded, then two nodes
 * sharing Redis.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { PresenceStore } from "../../lib/presence";
import OnlineService from "../../services/org/online.service";
import { createTestBroker } from "../support/broker";
import { Api, createCompany, expectStatus, startOrg, startOrgCluster, unique, type RunningOrg, type TestCompany } from "../support/org";
import { startNats, type ServerProcess } from "../support/servers";

const PASSWORD = "Member-pass-1";

async function roomyCompany(org: RunningOrg): Promise<TestCompany> {
	const licence = expectStatus(
		await org.admin.post("/api/licenses", {
			licensee: "Online tests", type: "enterprise", edition: "commercial", seats: 100, features: [],
			expiresAt: new Date(Date.now() + 365 * 24 * 3600 * 1000).toISOString(),
		}),
		200,
		"issue licence",
	);
	return createCompany(org, { licenseKey: licence.key });
}

async function createUser(company: TestCompany, fields: Record<string, unknown> = {}) {
	const username = unique(`${company.code}-u`);
	const user = expectStatus(await company.admin.post("/api/users", { username, password: PASSWORD, name: "Member", ...fields }), 200, "create user");
	return { id: user.id as string, username };
}

const sessionIdOf = async (api: Api) => expectStatus(await api.get("/api/auth/me"), 200).sessionId as string;
const sessionIds = (rows: { sessionId: string }[]) => rows.map(r => r.sessionId).sort();

describe("online: presence through the gateway", () => {
	let org: RunningOrg;
	let company: TestCompany;
	let other: TestCompany;
	let deptA: string;
	let inA: { id: string; username: string; api: Api; sid: string };
	let inB: { id: string; username: string; api: Api; sid: string };
	let deptWatcher: { api: Api; sid: string };
	let selfWatcher: { id: string; api: Api; sid: string };

	before(async () => {
		org = await startOrg();
		company = await roomyCompany(org);
		other = await roomyCompany(org);
		deptA = expectStatus(await company.admin.post("/api/depts", { name: "A" }), 200).id;
		const deptB = expectStatus(await company.admin.post("/api/depts", { name: "B" }), 200).id;
		const deptRole = expectStatus(await company.admin.post("/api/roles", { name: "Dept watcher", code: unique("dw"), permissions: ["online:read"], dataScope: "dept" }), 200).id;
		const selfRole = expectStatus(await company.admin.post("/api/roles", { name: "Self watcher", code: unique("sw"), permissions: ["online:read"], dataScope: "self" }), 200).id;

		const signed = async (fields: Record<string, unknown>) => {
			const user = await createUser(company, fields);
			const api = await org.anonymous.login(user.username, PASSWORD, `device-${user.username}`);
			return { ...user, api, sid: await sessionIdOf(api) };
		};
		inA = await signed({ deptId: deptA });
		inB = await signed({ deptId: deptB });
		deptWatcher = await signed({ deptId: deptA, roleIds: [deptRole] });
		selfWatcher = await signed({ deptId: deptB, roleIds: [selfRole] });
	});
	after(() => org?.stop());

	it("lists my company's sessions with device, address and times, and nobody else's", async () => {
		const rows = expectStatus(await company.admin.get("/api/online"), 200);
		const ids = sessionIds(rows);
		for (const s of [inA, inB, deptWatcher, selfWatcher]) assert.ok(ids.includes(s.sid), s.sid);
		assert.ok(ids.includes(await sessionIdOf(company.admin)));
		assert.equal(ids.includes(await sessionIdOf(other.admin)), false, "another company's session");
		const row = rows.find((r: any) => r.sessionId === inA.sid);
		assert.equal(row.userId, inA.id);
		assert.equal(row.username, inA.username);
		assert.equal(row.device, `device-${inA.username}`);
		assert.equal(row.ip, "127.0.0.1");
		assert.ok(Date.parse(row.since) > 0 && Date.parse(row.lastSeenAt) >= Date.parse(row.since));
		assert.deepEqual(row.channels, []);
	});

	it("honours the data scope: a department's sessions, or only my own", async () => {
		const dept = sessionIds(expectStatus(await deptWatcher.api.get("/api/online"), 200));
		assert.deepEqual(dept, [inA.sid, deptWatcher.sid].sort());
		const self = sessionIds(expectStatus(await selfWatcher.api.get("/api/online"), 200));
		assert.deepEqual(self, [selfWatcher.sid]);
		assert.equal((await selfWatcher.api.get(`/api/online/users/${inA.id}`)).status, 404, "a user outside my scope");
		assert.equal((await inA.api.get("/api/online")).status, 403, "without online:read");
	});

	it("lets the platform administrator see every company, or the one named; nobody else may name one", async () => {
		const all = sessionIds(expectStatus(await org.admin.get("/api/online"), 200));
		assert.ok(all.includes(inA.sid) && all.includes(await sessionIdOf(other.admin)));
		const named = expectStatus(await org.admin.get(`/api/online?companyId=${other.id}`), 200);
		assert.deepEqual(sessionIds(named), [await sessionIdOf(other.admin)]);
		assert.equal((await company.admin.get(`/api/online?companyId=${other.id}`)).status, 403);
	});

	it("shows real-time connections announced by the channels, and when the user was last seen", async () => {
		const nodeID = org.broker.nodeID;
		await org.broker.call("online.connected", { sessionId: inB.sid, connectionId: "ws-1", channel: "websocket", nodeID });
		await org.broker.call("online.connected", { sessionId: inB.sid, connectionId: "tcp-1", channel: "tcp", nodeID });
		const row = expectStatus(await company.admin.get("/api/online"), 200).find((r: any) => r.sessionId === inB.sid);
		assert.deepEqual(row.channels.map((c: any) => `${c.channel}:${c.connectionId}:${c.nodeID}`).sort(), [`tcp:tcp-1:${nodeID}`, `websocket:ws-1:${nodeID}`]);

		const user = expectStatus(await company.admin.get(`/api/online/users/${inB.id}`), 200);
		assert.equal(user.userId, inB.id);
		assert.equal(user.online, true);
		assert.deepEqual(sessionIds(user.sessions), [inB.sid]);
		assert.equal(user.sessions[0].channels.length, 2);
		assert.ok(Date.parse(user.lastSeenAt) > 0);

		assert.equal(await org.broker.call("online.disconnected", { connectionId: "ws-1" }), true);
		assert.equal(await org.broker.call("online.disconnected", { connectionId: "ws-1" }), false, "already gone");
		const after = expectStatus(await company.admin.get(`/api/online/users/${inB.id}`), 200);
		assert.deepEqual(after.sessions[0].channels.map((c: any) => c.connectionId), ["tcp-1"]);

		await assert.rejects(org.broker.call("online.connected", { sessionId: "no-such-session", connectionId: "ws-x", channel: "websocket", nodeID }), { code: 404 });
		await assert.rejects(org.broker.call("online.connected", { sessionId: inB.sid, connectionId: "ws-y", channel: "pigeon", nodeID }), { code: 422 });
	});

	it("forgets the connections of a node that left", async () => {
		const sid = await sessionIdOf(company.admin);
		await org.broker.call("online.connected", { sessionId: sid, connectionId: "ghost-1", channel: "websocket", nodeID: "ghost-node" });
		const channels = async () => expectStatus(await company.admin.get("/api/online"), 200).find((r: any) => r.sessionId === sid).channels;
		assert.equal((await channels()).length, 1);
		await org.broker.broadcastLocal("$node.disconnected", { node: { id: "ghost-node" }, unexpected: true });
		assert.deepEqual(await channels(), []);
	});

	it("answers a user of another company, or an unknown one, with 404", async () => {
		const stranger = await createUser(other);
		assert.equal((await company.admin.get(`/api/online/users/${stranger.id}`)).status, 404);
		assert.equal((await company.admin.get("/api/online/users/nobody")).status, 404);
		const offline = await createUser(company);
		const body = expectStatus(await company.admin.get(`/api/online/users/${offline.id}`), 200);
		assert.deepEqual(body, { userId: offline.id, online: false, lastSeenAt: null, sessions: [] });
	});

	it("force-logs-out a session of my company: its tokens stop working and its presence goes", async () => {
		const victim = await createUser(company, { deptId: deptA });
		const api = await org.anonymous.login(victim.username, PASSWORD);
		const sid = await sessionIdOf(api);
		await org.broker.call("online.connected", { sessionId: sid, connectionId: "ws-victim", channel: "websocket", nodeID: org.broker.nodeID });

		assert.equal((await other.admin.delete(`/api/online/${sid}`)).status, 404, "another company's administrator");
		assert.equal((await deptWatcher.api.delete(`/api/online/${sid}`)).status, 403, "without online:kick");
		assert.equal((await api.get("/api/auth/me")).status, 200);

		assert.equal((await company.admin.delete(`/api/online/${sid}`)).status, 204);
		assert.equal((await api.get("/api/auth/me")).status, 401);
		assert.equal((await org.anonymous.post("/api/auth/refresh", { refreshToken: api.refreshToken })).status, 401);
		assert.equal(sessionIds(expectStatus(await company.admin.get("/api/online"), 200)).includes(sid), false);
		const presence = (org.broker.getLocalService("online") as unknown as { presence: PresenceStore }).presence;
		assert.equal((await presence.connections([sid])).size, 0, "the session's connections were dropped");
		assert.equal((await company.admin.delete(`/api/online/${sid}`)).status, 404, "already ended");
	});

	it("refuses bad input with a 4xx", async () => {
		assert.equal((await company.admin.get(`/api/online?companyId=${"x".repeat(65)}`)).status, 422);
		assert.equal((await company.admin.get("/api/online?unexpected=1")).status, 422);
		assert.equal((await company.admin.delete(`/api/online/${"x".repeat(65)}`)).status, 422);
		assert.equal((await org.anonymous.get("/api/online")).status, 401);
	});
});

describe("online across two nodes (NATS, Redis)", () => {
	let org: RunningOrg;
	let company: TestCompany;
	before(async () => {
		org = await startOrgCluster();
		company = await roomyCompany(org);
	});
	after(() => org?.stop());

	it("shows a connection held by one node on the other node's gateway, and drops it on force logout", async () => {
		const user = await createUser(company);
		const api = await org.anonymous.login(user.username, PASSWORD);
		const sid = await sessionIdOf(api);
		const [one, two] = org.brokers;
		await one.call("online.connected", { sessionId: sid, connectionId: "ws-cluster", channel: "websocket", nodeID: one.nodeID });
		const adminOnTwo = company.admin.via(org.urls[1]);
		const row = expectStatus(await adminOnTwo.get("/api/online"), 200).find((r: any) => r.sessionId === sid);
		assert.deepEqual(row.channels.map((c: any) => [c.connectionId, c.nodeID]), [["ws-cluster", one.nodeID]]);

		assert.equal((await adminOnTwo.delete(`/api/online/${sid}`)).status, 204);
		assert.equal((await api.get("/api/auth/me")).status, 401, "on the first node's gateway");
		const presence = (two.getLocalService("online") as unknown as { presence: PresenceStore }).presence;
		assert.equal((await presence.connections([sid])).size, 0);
	});
});

describe("online refuses a second replica without Redis", () => {
	let nats: ServerProcess & { url: string };
	before(async () => {
		nats = await startNats();
	});
	after(() => nats?.stop());

	it("because presence in memory would be split between the nodes", async () => {
		const env = { TRANSPORTER: nats.url, NAMESPACE: unique("presence") };
		const first = createTestBroker({ ...env, NODE_ID: unique("first") });
		first.createService(OnlineService);
		const second = createTestBroker({ ...env, NODE_ID: unique("second") });
		second.createService(OnlineService);
		try {
			await first.start();
			await assert.rejects(second.start(), (err: Error & { type?: string }) => err.type === "PRESENCE_NOT_SHARED" && /set REDIS_URL/.test(err.message));
		} finally {
			await second.stop().catch(() => undefined);
			await first.stop().catch(() => undefined);
		}
	});
});
