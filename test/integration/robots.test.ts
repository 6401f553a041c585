/**
 * Group robots: a group administrator adds one and gets a webhook URL and secret; signed POSTs
 * post text or markdown into the group (pushed to its members' devices); a bad, stale or
 * replayed-too-late signature, an unknown or removed robot, a bad body and a robot over its rate
 * are refused with clear errors and post nothing. Robots that follow bus topics post what
 * arrives, once per message, within their rate: embedded, and over two nodes on Redis Streams.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import { robotSignature } from "../../services/messaging/machine.service";
import { busChannel } from "../../lib/bus/names";
import { MAX_MARKDOWN_CHARS } from "../../lib/messaging/content";
import { Api, expectStatus, replyOf, startOrg, startOrgCluster, type RunningOrg, type TestCompany } from "../support/org";
import { messagingCompany, person, type Person } from "../support/messaging";
import { socketIoDevice, type Device } from "../support/realtime";
import { waitFor } from "../support/servers";

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

	it("limits each robot's rate (config robots.messagesPerWindow)", async () => {
		expectStatus(await org.admin.put("/api/config/robots", { values: { messagesPerWindow: 3 } }), 200);
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
			expectStatus(await org.admin.put("/api/config/robots", { values: { messagesPerWindow: 20 } }), 200);
		}
	});
});

/** The topic and payload of a robot's post of a bus message (`### <topic>` and a fenced JSON block). */
function postedMessage(content: string): { topic: string; payload: any } {
	const match = /^### ([a-z0-9._-]+)\n\n(`{3,})json\n([\s\S]*)\n\2$/.exec(content);
	assert.ok(match, `not a posted bus message: ${content.slice(0, 200)}`);
	return { topic: match[1], payload: JSON.parse(match[3]) };
}

/** The group's messages posted by a robot, oldest first. */
async function postsOf(api: Api, groupId: string, robotId: string): Promise<any[]> {
	return expectStatus(await api.get(`/api/groups/${groupId}/messages?limit=200`), 200).rows.filter((m: any) => m.from === `robot:${robotId}`);
}

const consumersOn = async (org: RunningOrg, nodeID = org.broker.nodeID) =>
	(await org.broker.call<{ consumers: string[] }, object>("machine.consumers", {}, { nodeID })).consumers;

describe("robots: bus topics (embedded)", () => {
	let org: RunningOrg;
	let company: TestCompany, other: TestCompany;
	let owner: Person, member: Person;
	let groupId: string;
	let device: Device;
	let watcher: any;

	before(async () => {
		org = await startOrg();
		[company, other] = [await messagingCompany(org), await messagingCompany(org)];
		[owner, member] = [await person(org, company, "owner"), await person(org, company, "member")];
		groupId = expectStatus(await owner.api.post("/api/groups", { name: "Alerts", memberIds: [member.id] }), 200).id;
		device = await socketIoDevice(org.url, (await member.login(org.url)).token!, "member");
	});
	after(async () => {
		await device?.close();
		await org?.stop();
	});

	const publish = async (api: Api, topic: string, body: object) => expectStatus(await api.post(`/api/bus/topics/${topic}`, body), 202, `publish on ${topic}`);

	it("posts what arrives on a followed topic into the group as markdown, pushed to its members; never another company's", async () => {
		watcher = expectStatus(await owner.api.post("/api/robots", { name: "Watcher", groupId, topics: ["alerts", "alerts"] }), 200);
		assert.deepEqual(watcher.topics, ["alerts"]);
		assert.deepEqual(await consumersOn(org), [`${watcher.id} alerts`]);
		const listed = expectStatus(await owner.api.get(`/api/robots?groupId=${groupId}`), 200);
		assert.deepEqual(listed.map((r: any) => [r.id, r.topics]), [[watcher.id, ["alerts"]]]);
		// The other company's 'alerts' first: had it crossed companies, it would be posted before A's.
		await publish(other.admin, "alerts", { from: "the other company" });
		const published = await publish(company.admin, "alerts", { host: "db-1", disk: 91, hint: "no ``` fence breaks this" });
		const [pushed] = await device.waitFor("group.message", 1);
		assert.equal(pushed.from, `robot:${watcher.id}`);
		assert.equal(pushed.type, "markdown");
		assert.equal(pushed.clientMsgId, published.id, "the bus message's id");
		assert.deepEqual(postedMessage(pushed.content), { topic: "alerts", payload: { host: "db-1", disk: 91, hint: "no ``` fence breaks this" } });
		await new Promise(resolve => setTimeout(resolve, 300));
		assert.deepEqual((await postsOf(owner.api, groupId, watcher.id)).map(m => m.clientMsgId), [published.id]);
	});

	it("posts a message delivered twice once, and cuts a payload too long for a markdown message", async () => {
		const message = { id: randomUUID(), companyId: company.id, topic: "alerts", payload: { again: true }, publishedAt: new Date().toISOString(), source: { kind: "service", name: "test", userId: null } };
		const send = (org.broker as unknown as { sendToChannel(channel: string, payload: unknown): Promise<void> }).sendToChannel;
		await send.call(org.broker, busChannel(company.id, "alerts"), message);
		await send.call(org.broker, busChannel(company.id, "alerts"), message);
		const big = await publish(company.admin, "alerts", { blob: "x".repeat(30_000) });
		await waitFor(async () => (await postsOf(owner.api, groupId, watcher.id)).some(m => m.clientMsgId === big.id), "the big message posted");
		const posts = await postsOf(owner.api, groupId, watcher.id);
		assert.equal(posts.filter(m => m.clientMsgId === message.id).length, 1, "posted once");
		assert.equal(device.received("group.message").filter(m => m.clientMsgId === message.id).length, 1, "pushed once");
		const cut = posts.find(m => m.clientMsgId === big.id).content as string;
		assert.ok(cut.length <= MAX_MARKDOWN_CHARS, `${cut.length} characters`);
		assert.match(cut, /^### alerts\n\n```json\n\{\n {2}"blob": "x{1000,}\n```\n\n_Truncated: the first \d+ of (\d+) characters of the payload\._$/);
		assert.equal(Number(/of (\d+) characters/.exec(cut)![1]), JSON.stringify({ blob: "x".repeat(30_000) }, null, 2).length);
	});

	it("refuses bad topics (422) and non-administrators (403), changing nothing", async () => {
		const refused: [object, number][] = [
			[{ topics: ["Bad Topic"] }, 422], [{ topics: ["-alerts"] }, 422], [{ topics: ["alerts", 5] }, 422], [{ topics: ["a".repeat(101)] }, 422],
			[{ topics: Array.from({ length: 21 }, (_, i) => `t${i}`) }, 422], [{ topics: "alerts" }, 422], [{}, 422], [{ topics: [], extra: 1 }, 422],
		];
		for (const [body, status] of refused) {
			const reply = await owner.api.put(`/api/robots/${watcher.id}/topics`, body);
			assert.equal(reply.status, status, `${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(reply.body)}`);
			assert.ok(reply.body.message);
		}
		assert.match(JSON.stringify((await owner.api.put(`/api/robots/${watcher.id}/topics`, { topics: ["ok", "Not OK"] })).body), /Not OK/, "names the bad topic");
		assert.equal((await owner.api.post("/api/robots", { name: "Bad", groupId, topics: ["Bad Topic"] })).status, 422);
		assert.equal((await member.api.put(`/api/robots/${watcher.id}/topics`, { topics: [] })).status, 403, "a member who does not administer the group");
		assert.equal((await other.admin.put(`/api/robots/${watcher.id}/topics`, { topics: [] })).status, 404, "another company's robot");
		const listed = expectStatus(await owner.api.get(`/api/robots?groupId=${groupId}`), 200);
		assert.deepEqual(listed.map((r: any) => [r.name, r.topics]), [["Watcher", ["alerts"]]]);
		assert.deepEqual(await consumersOn(org), [`${watcher.id} alerts`]);
	});

	it("stops posting once unsubscribed (PUT topics [])", async () => {
		const witness = expectStatus(await owner.api.post("/api/robots", { name: "Witness", groupId, topics: ["alerts"] }), 200);
		const changed = expectStatus(await owner.api.put(`/api/robots/${watcher.id}/topics`, { topics: [] }), 200);
		assert.deepEqual(changed.topics, []);
		assert.deepEqual(await consumersOn(org), [`${witness.id} alerts`]);
		const before_ = (await postsOf(owner.api, groupId, watcher.id)).length;
		const published = await publish(company.admin, "alerts", { after: "unsubscribing" });
		// The witness follows the same topic: once it posted, the message has gone through.
		await waitFor(async () => (await postsOf(owner.api, groupId, witness.id)).some(m => m.clientMsgId === published.id), "the witness's post");
		assert.equal((await postsOf(owner.api, groupId, watcher.id)).length, before_);
		expectStatus(await owner.api.put(`/api/robots/${watcher.id}/topics`, { topics: ["alerts", "deploys.prod"] }), 200);
		assert.deepEqual(await consumersOn(org), [`${witness.id} alerts`, `${watcher.id} alerts`, `${watcher.id} deploys.prod`].sort());
	});

	it("drops the consumers of a removed robot and of the robots of a removed group", async () => {
		expectStatus(await owner.api.delete(`/api/robots/${watcher.id}`), 204);
		assert.ok(!(await consumersOn(org)).some(key => key.startsWith(watcher.id)));
		const doomed = expectStatus(await owner.api.post("/api/groups", { name: "Doomed", memberIds: [member.id] }), 200).id;
		const robot = expectStatus(await owner.api.post("/api/robots", { name: "Doomed", groupId: doomed, topics: ["alerts"] }), 200);
		assert.ok((await consumersOn(org)).includes(`${robot.id} alerts`));
		expectStatus(await owner.api.delete(`/api/groups/${doomed}`), 204);
		await waitFor(async () => !(await consumersOn(org)).includes(`${robot.id} alerts`), "the removed group's robot dropped");
	});
});

describe("robots: bus topics over two nodes (Redis Streams)", () => {
	let org: RunningOrg;
	let company: TestCompany;
	let owner: Person;
	let groupId: string;

	before(async () => {
		org = await startOrgCluster({ CHANNELS: "redis" });
		const machines = (broker: ServiceBroker) => (broker.registry as unknown as { getServiceList(o: object): { name: string }[] }).getServiceList({ onlyAvailable: true }).filter(s => s.name === "machine").length;
		await waitFor(() => org.brokers.every(b => machines(b) === 2), "machine known on both nodes");
		company = await messagingCompany(org);
		owner = await person(org, company, "owner");
		groupId = expectStatus(await owner.api.post("/api/groups", { name: "Feeds", memberIds: [] }), 200).id;
	});
	after(async () => {
		await org?.stop();
	});

	const publish = async (url: string, topic: string, body: object) => expectStatus(await company.admin.via(url).post(`/api/bus/topics/${topic}`, body), 202, `publish on ${topic}`);

	it("posts each message once although both nodes consume the topic", async () => {
		const robot = expectStatus(await owner.api.via(org.urls[1]).post("/api/robots", { name: "Orders", groupId, topics: ["orders.new"] }), 200);
		for (const broker of org.brokers) assert.deepEqual(await consumersOn(org, broker.nodeID), [`${robot.id} orders.new`], broker.nodeID);
		const ids: string[] = [];
		for (let i = 0; i < 8; i++) ids.push((await publish(org.urls[i % 2], "orders.new", { n: i })).id);
		await waitFor(async () => (await postsOf(owner.api, groupId, robot.id)).length >= ids.length, "every message posted");
		await new Promise(resolve => setTimeout(resolve, 500));
		const posts = await postsOf(owner.api, groupId, robot.id);
		assert.deepEqual(posts.map(m => m.clientMsgId).sort(), [...ids].sort(), "each once");
		assert.deepEqual(posts.map(m => postedMessage(m.content).payload.n).sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
	});

	it("holds messages over the robot's rate and posts them in later windows, none lost (robots.rateWindowSeconds)", async () => {
		const set = expectStatus(await org.admin.put("/api/config/robots", { values: { messagesPerWindow: 2, rateWindowSeconds: 3 } }), 200);
		await waitFor(() => org.brokers.every(b => ((b.getLocalService("machine") as unknown as { configVersion: number }).configVersion ?? 0) >= set.version), "the rate on both nodes");
		const robot = expectStatus(await owner.api.post("/api/robots", { name: "Bursty", groupId, topics: ["bursts"] }), 200);
		const ids: string[] = [];
		for (let i = 0; i < 5; i++) ids.push((await publish(org.urls[i % 2], "bursts", { n: i })).id);
		await waitFor(async () => (await postsOf(owner.api, groupId, robot.id)).length >= 2, "the first window's posts");
		await new Promise(resolve => setTimeout(resolve, 1000));
		assert.equal((await postsOf(owner.api, groupId, robot.id)).length, 2, "the others wait for the next window");
		await waitFor(async () => (await postsOf(owner.api, groupId, robot.id)).length >= ids.length, "every message posted in later windows", 20_000);
		await new Promise(resolve => setTimeout(resolve, 500));
		const posts = await postsOf(owner.api, groupId, robot.id);
		assert.deepEqual(posts.map(m => m.clientMsgId).sort(), [...ids].sort(), "none lost, none twice");
		const at = posts.map(m => Date.parse(m.sentAt));
		assert.ok(at[2] - at[0] >= 2500, `the third waited for the next window (${at[2] - at[0]} ms)`);
		assert.ok(at[4] - at[0] >= 5500, `the fifth for the one after (${at[4] - at[0]} ms)`);
	});
});
