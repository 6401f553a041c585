/**
 * Group robots: a group administrator adds one and gets a webhook URL and secret; signed POSTs
 * post text or markdown into the group (pushed to its members' devices); a bad, stale or
 * replayed-too-late signature, an unknown or removed robot, a bad body and a robot over its rate
 * are refused with clear errors and post nothing.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { robotSignature } from "../../services/messaging/machine.service";
import { expectStatus, replyOf, startOrg, type RunningOrg, type TestCompany } from "../support/org";
import { messagingCompany, person, type Person } from "../support/messaging";
import { socketIoDevice, type Device } from "../support/realtime";

describe("robots: group webhooks", () => {
	let org: RunningOrg;
	let company: TestCompany;
	let owner: Person, member: Person, outsider: Person;
	let groupId: string;
	let device: Device;

	before(async () => {
		org = await startOrg();
		company = await messagingCompany(org);
		[owner, member, outsider] = [await person(org, company, "owner"), await person(org, company, "member"), await person(org, company, "outsider")];
		groupId = expectStatus(await owner.api.post("/api/groups", { name: "Ops", memberIds: [member.id] }), 200).id;
		device = await socketIoDevice(org.url, (await member.login(org.url)).token!, "member");
	});
	after(async () => {
		await device?.close();
		await org?.stop();
	});

	/** POSTs to a webhook URL as a robot client would. */
	async function hook(webhookUrl: string, body: unknown, secret: string, timestamp = String(Date.now()), sign = robotSignature(secret, timestamp)) {
		const res = await fetch(`${org.url}${webhookUrl}?timestamp=${timestamp}&sign=${encodeURIComponent(sign)}`, {
			method: "POST",
			headers: { "Content-Type": "application/json" },
			body: JSON.stringify(body),
		});
		return replyOf(res);
	}
	const lastSeq = async () => expectStatus(await owner.api.get(`/api/groups/${groupId}/messages`), 200).rows.at(-1)?.seq ?? 0;

	it("posts signed text and markdown into the group, pushed to its members", async () => {
		const robot = expectStatus(await owner.api.post("/api/robots", { name: "Alerts", groupId }), 200);
		assert.match(robot.webhookUrl, /^\/api\/robots\/hooks\/[A-Za-z0-9_-]{20,}$/);
		assert.match(robot.secret, /^SEC[0-9a-f]{64}$/);
		const text = expectStatus(await hook(robot.webhookUrl, { msgtype: "text", text: { content: "disk 91% on db-1" } }, robot.secret), 200);
		assert.equal(text.errcode, 0);
		const md = expectStatus(await hook(robot.webhookUrl, { msgtype: "markdown", markdown: { title: "Deploy", text: "**v2** is live" } }, robot.secret), 200);
		assert.equal(md.seq, text.seq + 1);
		const pushed = await device.waitFor("group.message", 2);
		assert.deepEqual(pushed.map(m => [m.from, m.type, m.content]), [
			[`robot:${robot.id}`, "text", "disk 91% on db-1"],
			[`robot:${robot.id}`, "markdown", "### Deploy\n\n**v2** is live"],
		]);
		const listed = expectStatus(await owner.api.get(`/api/robots?groupId=${groupId}`), 200);
		assert.deepEqual(listed.map((r: any) => r.id), [robot.id]);
		assert.equal(listed[0].secret, undefined, "the secret is shown once");
		assert.equal(listed[0].token, undefined);
	});

	it("refuses bad, stale and foreign signatures, bad bodies and unknown robots, posting nothing", async () => {
		const robot = expectStatus(await owner.api.post("/api/robots", { name: "Strict", groupId }), 200);
		const other = expectStatus(await owner.api.post("/api/robots", { name: "Other", groupId }), 200);
		const body = { msgtype: "text", text: { content: "should not appear" } };
		const before_ = await lastSeq();
		const hourAndMore = String(Date.now() - 61 * 60_000);
		const cases: [string, Promise<Awaited<ReturnType<typeof hook>>>, number, string][] = [
			["wrong secret", hook(robot.webhookUrl, body, other.secret), 401, "INVALID_SIGNATURE"],
			["stale timestamp", hook(robot.webhookUrl, body, robot.secret, hourAndMore), 401, "SIGNATURE_EXPIRED"],
			["future timestamp", hook(robot.webhookUrl, body, robot.secret, String(Date.now() + 61 * 60_000)), 401, "SIGNATURE_EXPIRED"],
			["signature of another timestamp", hook(robot.webhookUrl, body, robot.secret, String(Date.now()), robotSignature(robot.secret, String(Date.now() - 5000))), 401, "INVALID_SIGNATURE"],
			["garbage signature", hook(robot.webhookUrl, body, robot.secret, String(Date.now()), "abc"), 401, "INVALID_SIGNATURE"],
			["unknown robot", hook("/api/robots/hooks/nope", body, robot.secret), 401, "INVALID_SIGNATURE"],
			["no timestamp", hook(robot.webhookUrl, body, robot.secret, ""), 422, "VALIDATION_ERROR"],
			["unknown msgtype", hook(robot.webhookUrl, { msgtype: "image", image: {} }, robot.secret), 422, "VALIDATION_ERROR"],
			["text without content", hook(robot.webhookUrl, { msgtype: "text", text: {} }, robot.secret), 422, "VALIDATION_ERROR"],
			["markdown without text", hook(robot.webhookUrl, { msgtype: "markdown", markdown: { title: "t" } }, robot.secret), 422, "VALIDATION_ERROR"],
			["msgtype without its part", hook(robot.webhookUrl, { msgtype: "text" }, robot.secret), 422, "VALIDATION_ERROR"],
		];
		for (const [what, reply, status, type] of cases) {
			const r = await reply;
			assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
			assert.equal(r.body.type, type, what);
			assert.ok(r.body.message, `${what} says why`);
		}
		expectStatus(await owner.api.delete(`/api/robots/${robot.id}`), 204);
		assert.equal((await hook(robot.webhookUrl, body, robot.secret)).status, 401, "a removed robot's webhook is dead");
		assert.equal(await lastSeq(), before_, "nothing was posted");
	});

	it("lets only the group's owner or administrators manage robots", async () => {
		assert.equal((await member.api.post("/api/robots", { name: "Mine", groupId })).status, 403);
		assert.equal((await outsider.api.post("/api/robots", { name: "Mine", groupId })).status, 404, "not my group: it does not exist for me");
		const stranger = await person(org, await messagingCompany(org), "stranger");
		assert.equal((await stranger.api.get(`/api/robots?groupId=${groupId}`)).status, 404);
		expectStatus(await owner.api.put(`/api/groups/${groupId}/members/${member.id}`, { role: "admin" }), 200);
		expectStatus(await member.api.post("/api/robots", { name: "Now allowed", groupId }), 200);
		for (const [body, status] of [[{}, 422], [{ name: "x" }, 422], [{ name: "", groupId }, 422], [{ name: "x", groupId, extra: 1 }, 422]] as const)
			assert.equal((await owner.api.post("/api/robots", body)).status, status, JSON.stringify(body));
	});

	it("limits each robot's rate (config robots.messagesPerMinute)", async () => {
		expectStatus(await org.admin.put("/api/config/robots", { values: { messagesPerMinute: 3 } }), 200);
		try {
			await new Promise(resolve => setTimeout(resolve, 300));
			const a = expectStatus(await owner.api.post("/api/robots", { name: "Chatty", groupId }), 200);
			const b = expectStatus(await owner.api.post("/api/robots", { name: "Quiet", groupId }), 200);
			const say = (r: any) => hook(r.webhookUrl, { msgtype: "text", text: { content: "tick" } }, r.secret);
			const statuses = [];
			for (let i = 0; i < 5; i++) statuses.push((await say(a)).status);
			assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
			assert.equal((await say(b)).status, 200, "the budget is per robot");
		} finally {
			expectStatus(await org.admin.put("/api/config/robots", { values: { messagesPerMinute: 20 } }), 200);
		}
	});
});
