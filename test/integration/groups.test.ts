/**
 * Groups: membership with roles and the size limit, membership changes pushed and moving
 * connections in and out of the group's room, messages with sequence numbers and mentions,
 * read positions and receipts, recall permissions, non-members shut out, other companies
 * invisible, bad input refused. Embedded, then two nodes with devices on both gateways.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { expectStatus, startOrg, startOrgCluster, type RunningOrg, type TestCompany } from "../support/org";
import { clientMsgId, messagingCompany, person, type Person } from "../support/messaging";
import { socketIoDevice, tcpDevice, tcpPortOf, type Device } from "../support/realtime";

const settle = () => new Promise(resolve => setTimeout(resolve, 400));

function scenarios(start: () => Promise<RunningOrg>) {
	let org: RunningOrg;
	let company: TestCompany;
	let owner: Person, admin: Person, member: Person, outsider: Person;
	const devices: Device[] = [];

	before(async () => {
		org = await start();
		company = await messagingCompany(org);
		[owner, admin, member, outsider] = [await person(org, company, "owner"), await person(org, company, "admin"), await person(org, company, "member"), await person(org, company, "outsider")];
	});
	after(async () => {
		for (const d of devices) await d.close();
		await org?.stop();
	});

	const last = () => org.urls.length - 1;
	async function io(p: Person, gateway: number) {
		const api = await p.login(org.urls[gateway]);
		const d = await socketIoDevice(org.urls[gateway], api.token!, `${p.username} io@${gateway}`);
		devices.push(d);
		return d;
	}
	async function tcp(p: Person, gateway: number) {
		const api = await p.login(org.urls[gateway]);
		const d = await tcpDevice(await tcpPortOf(org.brokers[gateway]), api.token!, `${p.username} tcp@${gateway}`);
		devices.push(d);
		return d;
	}
	const post = (p: Person, groupId: string, body: object) => p.api.post(`/api/groups/${groupId}/messages`, { type: "text", clientMsgId: clientMsgId(), ...body });

	it("runs a group: members and roles, messages to every member's device once, mentions, receipts, recall", async () => {
		const ownerIo = await io(owner, 0);
		const memberTcp = await tcp(member, last());
		const adminIo = await io(admin, last());
		const group = expectStatus(await owner.api.post("/api/groups", { name: "Team", memberIds: [member.id] }), 200);
		assert.equal(group.role, "owner");
		assert.equal(group.memberCount, 2);
		await memberTcp.waitFor("group.member", 1);
		assert.equal(memberTcp.received("group.member")[0].change, "created");

		// Adding someone: their already-connected device joins the room and hears it.
		const added = expectStatus(await owner.api.post(`/api/groups/${group.id}/members`, { userIds: [admin.id, member.id] }), 200);
		assert.deepEqual(added.added, [admin.id], "members already in are not added twice");
		await adminIo.waitFor("group.member", 1);
		expectStatus(await owner.api.put(`/api/groups/${group.id}/members/${admin.id}`, { role: "admin" }), 200);

		const sent = [];
		sent.push(expectStatus(await post(owner, group.id, { content: "hello" }), 200));
		sent.push(await memberTcp.call("groupmsg.send", { id: group.id, type: "text", content: "hi @admin", clientMsgId: clientMsgId(), mentions: [admin.id] }));
		sent.push(await adminIo.call("groupmsg.send", { id: group.id, type: "markdown", content: "**all** read this", clientMsgId: clientMsgId(), mentions: ["all"] }));
		assert.deepEqual(sent.map(s => s.seq), [1, 2, 3]);
		for (const d of [ownerIo, memberTcp, adminIo]) await d.waitFor("group.message", 3);
		await settle();
		for (const d of [ownerIo, memberTcp, adminIo]) assert.deepEqual(d.received("group.message").map(m => m.seq), [1, 2, 3], `${d.name}: each once, in order`);
		const pushed = ownerIo.received("group.message");
		assert.deepEqual(pushed[1].mentions, [admin.id]);
		assert.equal(pushed[2].mentionAll, true);
		const denied = await post(member, group.id, { content: "everyone!", mentions: ["all"] });
		assert.equal(denied.status, 403, "a plain member cannot mention everyone");
		assert.equal((await post(member, group.id, { content: "hey", mentions: [outsider.id] })).status, 422, "only members are mentioned");

		// Receipts: the owner reads up to 2; the member (sender of 2) has read 2 by sending; the admin has read 3.
		expectStatus(await owner.api.post(`/api/groups/${group.id}/read`, { seq: 2 }), 200);
		for (const d of [ownerIo, memberTcp, adminIo]) await d.waitFor("group.receipt", 1);
		const r2 = expectStatus(await owner.api.get(`/api/groups/${group.id}/messages/${sent[1].id}/receipts`), 200);
		assert.deepEqual(r2.readBy.map((r: any) => r.userId).sort(), [owner.id, admin.id].sort());
		assert.deepEqual(r2.unreadBy, []);
		const r3 = expectStatus(await member.api.get(`/api/groups/${group.id}/messages/${sent[2].id}/receipts`), 200);
		assert.deepEqual(r3.unreadBy.sort(), [owner.id, member.id].sort());
		const mine = expectStatus(await owner.api.get("/api/groups"), 200).find((g: any) => g.id === group.id);
		assert.equal(mine.unread, 1);

		// Recall: a plain member not someone else's message; the sender within the window; administrators any.
		assert.equal((await member.api.post(`/api/groups/${group.id}/messages/${sent[0].id}/recall`)).status, 403);
		expectStatus(await member.api.post(`/api/groups/${group.id}/messages/${sent[1].id}/recall`), 200);
		expectStatus(await admin.api.post(`/api/groups/${group.id}/messages/${sent[0].id}/recall`), 200);
		for (const d of [ownerIo, memberTcp, adminIo]) await d.waitFor("group.recall", 2);
		await settle();
		for (const d of [ownerIo, memberTcp, adminIo]) assert.deepEqual(d.received("group.recall").map(r => r.seq).sort(), [1, 2], d.name);
		const history = expectStatus(await member.api.get(`/api/groups/${group.id}/messages`), 200);
		assert.deepEqual(history.rows.map((m: any) => [m.seq, m.content === null]), [[1, true], [2, true], [3, false]]);

		// Removing the member: told, out of the room, and no longer able to read or post.
		expectStatus(await admin.api.delete(`/api/groups/${group.id}/members/${member.id}`), 204);
		await memberTcp.waitFor("group.member", 4);
		assert.equal(memberTcp.received("group.member").at(-1).change, "removed");
		expectStatus(await post(owner, group.id, { content: "after removal" }), 200);
		await ownerIo.waitFor("group.message", 4);
		await settle();
		assert.equal(memberTcp.received("group.message").length, 3, "a removed member's device gets no more messages");
		assert.equal((await member.api.get(`/api/groups/${group.id}/messages`)).status, 404);
		assert.equal((await post(member, group.id, { content: "still here?" })).status, 404);
		assert.equal((await member.api.get(`/api/groups/${group.id}`)).status, 404);
		// Administrators cannot remove the owner or each other; the owner cannot leave.
		assert.equal((await admin.api.delete(`/api/groups/${group.id}/members/${owner.id}`)).status, 409);
		assert.equal((await owner.api.delete(`/api/groups/${group.id}/members/${owner.id}`)).status, 409);
		assert.equal((await admin.api.delete(`/api/groups/${group.id}`)).status, 403, "only the owner deletes");
	});

	it("shuts out non-members and other companies, and refuses bad input without writing", async () => {
		const group = expectStatus(await owner.api.post("/api/groups", { name: "Closed", memberIds: [admin.id] }), 200);
		expectStatus(await post(owner, group.id, { content: "secret" }), 200);
		const outsiderIo = await io(outsider, 0);
		for (const reply of [
			await outsider.api.get(`/api/groups/${group.id}`),
			await outsider.api.get(`/api/groups/${group.id}/messages`),
			await post(outsider, group.id, { content: "let me in" }),
			await outsider.api.post(`/api/groups/${group.id}/read`, { seq: 1 }),
			await outsider.api.post(`/api/groups/${group.id}/members`, { userIds: [outsider.id] }),
		]) assert.equal(reply.status, 404, JSON.stringify(reply.body));
		await assert.rejects(outsiderIo.call("groupmsg.messages", { id: group.id }), (err: any) => err.code === 404);

		const other = await messagingCompany(org);
		const stranger = await person(org, other, "stranger");
		assert.equal((await stranger.api.get(`/api/groups/${group.id}`)).status, 404);
		assert.deepEqual(expectStatus(await stranger.api.get("/api/groups"), 200), []);
		const cross = await owner.api.post("/api/groups", { name: "Cross", memberIds: [stranger.id] });
		assert.equal(cross.status, 422, "another company's user cannot be a member");
		assert.equal((await owner.api.post(`/api/groups/${group.id}/members`, { userIds: [stranger.id] })).status, 422);
		await settle();
		assert.deepEqual(outsiderIo.received("group.message"), [], "nothing of a group I am not in reaches me");

		const before_ = expectStatus(await owner.api.get("/api/groups"), 200).length;
		for (const [body, status] of [
			[{}, 422],
			[{ name: "" }, 422],
			[{ name: "x", memberIds: "nope" }, 422],
			[{ name: "x", memberIds: ["no-such-user"] }, 422],
			[{ name: "x".repeat(101), memberIds: [] }, 422],
			[{ name: "x", memberIds: [], extra: true }, 422],
		] as const) assert.equal((await owner.api.post("/api/groups", body)).status, status, JSON.stringify(body));
		assert.equal(expectStatus(await owner.api.get("/api/groups"), 200).length, before_, "no group created");
		const lastSeq = expectStatus(await owner.api.get(`/api/groups/${group.id}/messages`), 200).rows.at(-1).seq;
		for (const [body, status] of [
			[{ content: "" }, 422],
			[{ type: "sticker", content: "x" }, 422],
			[{ content: "x", clientMsgId: "bad id" }, 422],
			[{ content: "x", mentions: "all" }, 422],
			[{ type: "file", content: { fileId: "missing" } }, 404],
		] as const) assert.equal((await post(owner, group.id, body)).status, status, JSON.stringify(body));
		assert.equal((await owner.api.post(`/api/groups/${group.id}/read`, { seq: 999 })).status, 422);
		assert.equal((await owner.api.get(`/api/groups/${group.id}/messages/no-such/receipts`)).status, 404);
		assert.equal(expectStatus(await owner.api.get(`/api/groups/${group.id}/messages`), 200).rows.at(-1).seq, lastSeq, "nothing stored");
	});

	it("keeps groups within the configured size, and deletes a group with its messages", async () => {
		expectStatus(await org.admin.put("/api/config/groups", { values: { maxMembers: 3 } }), 200);
		try {
			await new Promise(resolve => setTimeout(resolve, 300)); // the config change is a broadcast
			const group = expectStatus(await owner.api.post("/api/groups", { name: "Small", memberIds: [admin.id, member.id] }), 200);
			const full = await owner.api.post(`/api/groups/${group.id}/members`, { userIds: [outsider.id] });
			assert.equal(full.status, 422);
			assert.equal(full.body.type, "GROUP_FULL");
			assert.equal((await owner.api.post("/api/groups", { name: "Big", memberIds: [admin.id, member.id, outsider.id] })).status, 422);
			const ownerIo = await io(owner, 0);
			expectStatus(await post(admin, group.id, { content: "bye" }), 200);
			expectStatus(await owner.api.delete(`/api/groups/${group.id}`), 204);
			await ownerIo.waitFor("group.member", 1);
			assert.equal(ownerIo.received("group.member")[0].change, "deleted");
			assert.equal((await owner.api.get(`/api/groups/${group.id}/messages`)).status, 404);
		} finally {
			expectStatus(await org.admin.put("/api/config/groups", { values: { maxMembers: 1000 } }), 200);
		}
	});
}

describe("groups: embedded", () => scenarios(() => startOrg()));
describe("groups: two nodes over NATS, Redis and PostgreSQL", () => scenarios(() => startOrgCluster()));
