/**
 * 1:1 chat end to end: two users, each with a socket.io and a TCP device, every message,
 * receipt and recall reaching every device of both sides exactly once; catching up after a
 * burst of 1,000 messages; clientMsgId retries; tenancy; bad input on every route, socket call
 * and TCP frame. Embedded first, then two full nodes over real NATS, Redis and PostgreSQL with
 * each user's devices on different gateways.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { expectStatus, startOrg, startOrgCluster, type RunningOrg, type TestCompany } from "../support/org";
import { clientMsgId, messagingCompany, person, type Person } from "../support/messaging";
import { socketIoDevice, tcpDevice, tcpPortOf, type Device } from "../support/realtime";
import { uploadFiles } from "../support/files";
import { waitFor } from "../support/servers";

/** A real 1×1 PNG. */
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "base64");

/** Long enough for a stray duplicate push to arrive, where a test asserts that none does. */
const SETTLE_MS = 400;
const settle = () => new Promise(resolve => setTimeout(resolve, SETTLE_MS));

function countBy<T>(items: T[], key: (item: T) => string): Map<string, number> {
	const counts = new Map<string, number>();
	for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
	return counts;
}

/** Every device got each id exactly once, and nothing else. */
function assertExactlyOnce(devices: Device[], event: string, ids: string[], idOf: (data: any) => string) {
	for (const device of devices) {
		const counts = countBy(device.received(event), idOf);
		assert.deepEqual([...counts.keys()].sort(), [...ids].sort(), `${device.name}: the ${event} events it got`);
		for (const [id, n] of counts) assert.equal(n, 1, `${device.name}: ${event} ${id} arrived ${n} times`);
	}
}

function scenarios(start: () => Promise<RunningOrg>) {
	let org: RunningOrg;
	let company: TestCompany;
	let alice: Person;
	let bob: Person;
	const devices: Device[] = [];

	before(async () => {
		org = await start();
		company = await messagingCompany(org);
		alice = await person(org, company, "alice");
		bob = await person(org, company, "bob");
	});
	after(async () => {
		for (const d of devices) await d.close();
		await org?.stop();
	});

	/** Alice: socket.io on the first gateway, TCP on the last; Bob the other way round. */
	async function connectAll() {
		const [first, last] = [0, org.urls.length - 1];
		const tcp = async (i: number) => tcpPortOf(org.brokers[i]);
		const device = async (p: Person, kind: "io" | "tcp", i: number) => {
			const api = await p.login(org.urls[i], `${p.username}-${kind}`);
			return kind === "io" ? socketIoDevice(org.urls[i], api.token!, `${p.username} socket.io@${i}`) : tcpDevice(await tcp(i), api.token!, `${p.username} tcp@${i}`);
		};
		const set = [await device(alice, "io", first), await device(alice, "tcp", last), await device(bob, "io", last), await device(bob, "tcp", first)];
		devices.push(...set);
		return set;
	}

	it("delivers every message, receipt and recall to every device of both sides exactly once", async () => {
		const all = await connectAll();
		const [aliceIo, aliceTcp, bobIo, bobTcp] = all;
		const sent: { id: string; seq: number }[] = [];
		// Each way in: HTTP, a socket.io call, a TCP call; from both sides.
		for (let i = 0; i < 3; i++) {
			sent.push(expectStatus(await alice.api.post("/api/chat/messages", { to: bob.id, type: "text", content: `http ${i}`, clientMsgId: clientMsgId() }), 200));
			sent.push(await aliceIo.call("chatmsg.send", { to: bob.id, type: "text", content: `io ${i}`, clientMsgId: clientMsgId() }));
			sent.push(await bobTcp.call("chatmsg.send", { to: alice.id, type: "markdown", content: `**tcp** ${i}`, clientMsgId: clientMsgId() }));
		}
		assert.deepEqual(sent.map(s => s.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9], "one sequence for the conversation, in order of sending");
		for (const d of all) await d.waitFor("chat.message", sent.length);
		await settle();
		assertExactlyOnce(all, "chat.message", sent.map(s => s.id), m => m.id);
		const pushed = aliceTcp.received("chat.message").find(m => m.id === sent[2].id);
		assert.equal(pushed.from, bob.id);
		assert.equal(pushed.content, "**tcp** 0");
		assert.equal(pushed.type, "markdown");

		// Sending reads: Bob has read everything (his message 9 is the last), Alice not Bob's 9 (her last is 8).
		const unread = async (p: Person, peer: Person) => expectStatus(await p.api.get("/api/chat/conversations"), 200).find((c: any) => c.peer.id === peer.id);
		assert.equal((await unread(alice, bob)).unread, 1);
		assert.equal((await unread(alice, bob)).lastMessage.seq, 9);
		assert.equal((await unread(bob, alice)).unread, 0);

		// Alice reads up to the last message: one receipt on each device.
		const read = await aliceIo.call("chatmsg.read", { with: bob.id, seq: 9 });
		assert.equal(read.unread, 0);
		for (const d of all) await d.waitFor("chat.receipt", 1);
		// Reading an earlier position changes nothing and pushes nothing.
		await aliceTcp.call("chatmsg.read", { with: bob.id, seq: 3 });
		await settle();
		for (const d of all) assert.deepEqual(d.received("chat.receipt").map(r => [r.userId, r.seq]), [[alice.id, 9]], d.name);
		assert.equal((await unread(alice, bob)).unread, 0);

		// Alice recalls her socket.io message: pushed once everywhere, content gone for both.
		const recalled = await aliceTcp.call("chatmsg.recall", { id: sent[1].id });
		assert.equal(recalled.content, null);
		for (const d of all) await d.waitFor("chat.recall", 1);
		await aliceIo.call("chatmsg.recall", { id: sent[1].id }); // twice: nothing new
		await settle();
		assertExactlyOnce(all, "chat.recall", [sent[1].id], r => r.id);
		const history = expectStatus(await bob.api.get(`/api/chat/messages?with=${alice.id}`), 200);
		assert.deepEqual(history.rows.map((m: any) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
		assert.equal(history.rows[1].content, null);
		assert.ok(history.rows[1].recalledAt);
		await assert.rejects(bobIo.call("chatmsg.recall", { id: sent[0].id }), (err: any) => err.code === 403, "only the sender recalls");

	});

	it("a device away during 1,000 messages catches up by sequence number with no gap and no duplicate", async () => {
		const carol = await person(org, company, "carol");
		const dave = await person(org, company, "dave");
		const acked: { id: string; seq: number }[] = [];
		const first = expectStatus(await carol.api.post("/api/chat/messages", { to: dave.id, type: "text", content: "before", clientMsgId: clientMsgId() }), 200);
		const lastSeen = first.seq;
		// Dave's device is offline now; Carol sends 1,000 messages, 20 at a time, through every gateway.
		const apis = await Promise.all(org.urls.map(url => carol.login(url)));
		for (let batch = 0; batch < 50; batch++) {
			const replies = await Promise.all(
				Array.from({ length: 20 }, (_, i) => apis[(batch + i) % apis.length].post("/api/chat/messages", { to: dave.id, type: "text", content: `burst ${batch * 20 + i}`, clientMsgId: clientMsgId() })),
			);
			for (const r of replies) acked.push(expectStatus(r, 200));
		}
		const caughtUp: any[] = [];
		let after_ = lastSeen;
		for (;;) {
			const page = expectStatus(await dave.api.get(`/api/chat/messages?with=${carol.id}&afterSeq=${after_}&limit=200`), 200);
			caughtUp.push(...page.rows);
			if (page.rows.length) after_ = page.rows[page.rows.length - 1].seq;
			if (!page.hasMore) break;
		}
		assert.equal(caughtUp.length, 1000);
		assert.deepEqual(caughtUp.map(m => m.seq), Array.from({ length: 1000 }, (_, i) => lastSeen + 1 + i), "no gap, no duplicate");
		assert.deepEqual(new Set(caughtUp.map(m => m.id)), new Set(acked.map(a => a.id)), "exactly the acknowledged messages");
		const conv = expectStatus(await dave.api.get("/api/chat/conversations"), 200).find((c: any) => c.peer.id === carol.id);
		assert.equal(conv.unread, 1001);
	});

	it("sends images and files the sender may read, described from the file store", async () => {
		const [png, doc] = expectStatus(await uploadFiles(alice.api, [
			{ name: "photo.png", content: PNG },
			{ name: "notes.txt", content: Buffer.from("meeting notes") },
		]), 200);
		const image = expectStatus(await alice.api.post("/api/chat/messages", { to: bob.id, type: "image", content: { fileId: png.id }, clientMsgId: clientMsgId() }), 200);
		const file = expectStatus(await alice.api.post("/api/chat/messages", { to: bob.id, type: "file", content: { fileId: doc.id }, clientMsgId: clientMsgId() }), 200);
		const rows = expectStatus(await bob.api.get(`/api/chat/messages?with=${alice.id}&afterSeq=${image.seq - 1}`), 200).rows;
		assert.deepEqual(rows.map((m: any) => [m.type, m.content]), [
			["image", { fileId: png.id, name: "photo.png", size: PNG.length, mime: "image/png" }],
			["file", { fileId: doc.id, name: "notes.txt", size: 13, mime: doc.mime }],
		]);
		assert.equal(rows[1].seq, file.seq);
		const notImage = await alice.api.post("/api/chat/messages", { to: bob.id, type: "image", content: { fileId: doc.id }, clientMsgId: clientMsgId() });
		assert.equal(notImage.status, 422, "a text file is no image");
		const voice = await alice.api.post("/api/chat/messages", { to: bob.id, type: "voice", content: { fileId: png.id, durationMs: 1000 }, clientMsgId: clientMsgId() });
		assert.equal(voice.status, 422, "an image is no voice message");
		// Another company's file does not exist for the sender.
		const other = await person(org, await messagingCompany(org), "mallory");
		const [theirs] = expectStatus(await uploadFiles(other.api, [{ name: "theirs.png", content: PNG }]), 200);
		assert.equal((await alice.api.post("/api/chat/messages", { to: bob.id, type: "image", content: { fileId: theirs.id }, clientMsgId: clientMsgId() })).status, 404);
	});

	it("registers every connection with presence, on the node that holds it", async () => {
		const seen = expectStatus(await company.admin.get(`/api/online/users/${alice.id}`), 200);
		const channels = seen.sessions.flatMap((s: any) => s.channels.map((c: any) => c.channel)).sort();
		assert.ok(channels.includes("websocket") && channels.includes("tcp"), JSON.stringify(channels));
		assert.equal(seen.online, true);
		const nodes = new Set(seen.sessions.flatMap((s: any) => s.channels.map((c: any) => c.nodeID)));
		assert.equal(nodes.size, org.brokers.length, "one device on each gateway node");

		// Colleagues' devices hear a user come online and go offline.
		const watcher = devices.find(d => d.name.startsWith(bob.username))!;
		const erin = await person(org, company, "erin");
		const erinDevice = await tcpDevice(await tcpPortOf(org.brokers[org.brokers.length - 1]), (await erin.login(org.urls[org.urls.length - 1])).token!, "erin");
		await waitFor(() => watcher.received("presence").some(p => p.userId === erin.id && p.online && p.connections === 1), "erin online", 10_000);
		await erinDevice.close();
		await waitFor(() => watcher.received("presence").some(p => p.userId === erin.id && !p.online && p.connections === 0), "erin offline", 10_000);
	});

	it("stores a retried send once (same clientMsgId), concurrently too", async () => {
		const id = clientMsgId();
		const body = { to: bob.id, type: "text", content: "once", clientMsgId: id };
		const answers = await Promise.all(org.urls.flatMap(url => [alice.api.via(url).post("/api/chat/messages", body), alice.api.via(url).post("/api/chat/messages", body)]));
		const ids = new Set(answers.map(a => expectStatus(a, 200).id));
		assert.equal(ids.size, 1, "one message");
		assert.equal(answers.filter(a => a.body.duplicate === false).length, 1, "one of them stored it");
		const rows = expectStatus(await bob.api.get(`/api/chat/messages?with=${alice.id}&limit=200`), 200).rows;
		assert.equal(rows.filter((m: any) => m.clientMsgId === id).length, 1);
	});

	it("keeps companies apart", async () => {
		const other = await messagingCompany(org);
		const eve = await person(org, other, "eve");
		const to = await eve.api.post("/api/chat/messages", { to: alice.id, type: "text", content: "hi", clientMsgId: clientMsgId() });
		assert.equal(to.status, 404, "another company's user does not exist for me");
		assert.equal((await eve.api.get(`/api/chat/messages?with=${alice.id}`)).status, 404);
		const [aliceMsg] = expectStatus(await alice.api.get(`/api/chat/messages?with=${bob.id}&limit=1`), 200).rows;
		assert.equal((await eve.api.post(`/api/chat/messages/${aliceMsg.id}/recall`)).status, 404);
		assert.deepEqual(expectStatus(await eve.api.get("/api/chat/conversations"), 200), []);
		const eveIo = await socketIoDevice(org.url, eve.api.token!, "eve");
		devices.push(eveIo);
		await alice.api.post("/api/chat/messages", { to: bob.id, type: "text", content: "private", clientMsgId: clientMsgId() });
		await settle();
		assert.deepEqual(eveIo.events, [], "no push of another company reaches me");
	});

	it("answers bad input with a clear 4xx on every route, socket call and TCP frame, and stores nothing", async () => {
		const before_ = expectStatus(await alice.api.get(`/api/chat/messages?with=${bob.id}&limit=1`), 200).rows[0].seq;
		const bad: [object, number][] = [
			[{}, 422],
			[{ to: bob.id, type: "text", content: "x" }, 422], // no clientMsgId
			[{ to: bob.id, type: "gif", content: "x", clientMsgId: clientMsgId() }, 422],
			[{ to: bob.id, type: "text", content: "", clientMsgId: clientMsgId() }, 422],
			[{ to: bob.id, type: "text", content: "   ", clientMsgId: clientMsgId() }, 422],
			[{ to: bob.id, type: "text", content: "x".repeat(5001), clientMsgId: clientMsgId() }, 422],
			[{ to: bob.id, type: "text", content: { fileId: "nope" }, clientMsgId: clientMsgId() }, 422],
			[{ to: bob.id, type: "image", content: "not an object", clientMsgId: clientMsgId() }, 422],
			[{ to: bob.id, type: "image", content: { fileId: "no-such-file" }, clientMsgId: clientMsgId() }, 404],
			[{ to: bob.id, type: "text", content: "x", clientMsgId: "has spaces" }, 422],
			[{ to: bob.id, type: "text", content: "x", clientMsgId: clientMsgId(), extra: 1 }, 422],
			[{ to: alice.id, type: "text", content: "me", clientMsgId: clientMsgId() }, 422],
			[{ to: "no-such-user", type: "text", content: "x", clientMsgId: clientMsgId() }, 404],
		];
		const io = devices.find(d => d.kind === "socket.io" && d.name.startsWith(alice.username))!;
		const tcp = devices.find(d => d.kind === "tcp" && d.name.startsWith(alice.username))!;
		for (const [body, status] of bad) {
			const reply = await alice.api.post("/api/chat/messages", body);
			assert.equal(reply.status, status, `HTTP ${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(reply.body)}`);
			assert.ok(reply.body.message, "says what was wrong");
			for (const device of [io, tcp]) {
				await assert.rejects(device.call("chatmsg.send", body), (err: any) => err.code === status && typeof err.message === "string", `${device.kind} ${JSON.stringify(body).slice(0, 60)}`);
			}
		}
		for (const [path, status] of [
			[`/api/chat/messages?with=${bob.id}&afterSeq=-1`, 422],
			[`/api/chat/messages?with=${bob.id}&limit=1000`, 422],
			["/api/chat/messages", 422],
		] as const) assert.equal((await alice.api.get(path)).status, status, path);
		assert.equal((await alice.api.post("/api/chat/read", { with: bob.id, seq: 1_000_000 })).status, 422, "reading past the end");
		assert.equal((await alice.api.post("/api/chat/messages/no-such-id/recall")).status, 404);
		// Channel-level refusals: not whitelisted, internal, Moleculer's own, no action at all.
		for (const device of [io, tcp]) {
			for (const action of ["$node.options", "chatconv.touch", "user.credentials", "security.resolveToken", "websocket.call", "no.such"])
				await assert.rejects(device.call(action, {}), (err: any) => err.code === 404, `${device.kind} ${action}`);
			await assert.rejects(device.call("chatmsg.messages", [1, 2] as unknown as object), (err: any) => err.code === 400);
		}
		const after_ = expectStatus(await alice.api.get(`/api/chat/messages?with=${bob.id}&limit=1`), 200).rows[0].seq;
		assert.equal(after_, before_, "nothing stored");
		assert.ok(!io.closed() && !tcp.closed(), "bad calls do not cost the connection");
	});

	it("refuses a connection without a valid token, and closes it when the session is revoked", async () => {
		await assert.rejects(socketIoDevice(org.url, null), (err: any) => err.data?.code === 401);
		await assert.rejects(socketIoDevice(org.url, "not-a-token"), (err: any) => err.data?.code === 401);
		await assert.rejects(tcpDevice(await tcpPortOf(org.broker), "not-a-token"), (err: any) => err.code === 401);
		const api = await bob.login(org.urls[org.urls.length - 1], "to-be-revoked");
		const io = await socketIoDevice(org.url, api.token!, "revoked io");
		const tcp = await tcpDevice(await tcpPortOf(org.brokers[org.brokers.length - 1]), api.token!, "revoked tcp");
		devices.push(io, tcp);
		expectStatus(await api.post("/api/auth/logout"), 204);
		for (const d of [io, tcp]) {
			await d.waitFor("session.revoked", 1);
			await waitFor(() => d.closed(), `${d.name} closed`, 10_000);
		}
		await assert.rejects(socketIoDevice(org.url, api.token!), (err: any) => err.data?.code === 401, "the revoked token is refused");
	});

	it("lets one TCP connection sign in once, and limits connections waiting to sign in", async () => {
		const port = await tcpPortOf(org.broker);
		const [a, b] = [await alice.login(org.url), await bob.login(org.url)];
		const lines = await rawTcp(port, [{ id: 1, type: "auth", token: a.token }, { id: 2, type: "auth", token: b.token }], 2);
		const byId = new Map(lines.map(l => [l.id, l]));
		assert.equal(byId.get(1).type, "result");
		assert.equal(byId.get(2).type, "error", "a second sign-in on the same connection is refused");
		assert.equal(byId.get(2).error.code, 409);

		const waiting: net.Socket[] = [];
		try {
			for (let i = 0; i < 50; i++) waiting.push(await connected(port));
			const refused = await rawTcp(port, [], 1);
			assert.equal(refused[0].error.type, "TOO_MANY_CONNECTIONS");
		} finally {
			waiting.forEach(s => s.destroy());
		}
	});

	it("answers 503, naming no internal service, when a service a call needs is down", async () => {
		const files = org.brokers.map(b => b.getLocalService("files")).filter(Boolean);
		for (const [i, b] of org.brokers.entries()) if (files[i]) await b.destroyService(files[i]!);
		await waitFor(() => org.brokers.every(b => !(b.registry as any).hasService("files")), "files gone", 10_000);
		const reply = await alice.api.post("/api/chat/messages", { to: bob.id, type: "image", content: { fileId: "any" }, clientMsgId: clientMsgId() });
		assert.equal(reply.status, 503, JSON.stringify(reply.body));
		assert.doesNotMatch(JSON.stringify(reply.body), /files/);
	});
}

function connected(port: number): Promise<net.Socket> {
	return new Promise((resolve, reject) => {
		const socket = net.connect({ host: "127.0.0.1", port }, () => resolve(socket));
		socket.once("error", reject);
	});
}

/** Writes `frames` on a fresh TCP connection and answers the first `count` frames the server sends. */
async function rawTcp(port: number, frames: object[], count: number): Promise<any[]> {
	const socket = await connected(port);
	const received: any[] = [];
	let buffer = "";
	socket.on("data", chunk => {
		buffer += chunk.toString("utf8");
		let nl;
		while ((nl = buffer.indexOf("\n")) >= 0) {
			received.push(JSON.parse(buffer.slice(0, nl)));
			buffer = buffer.slice(nl + 1);
		}
	});
	socket.write(frames.map(f => JSON.stringify(f) + "\n").join(""));
	try {
		await waitFor(() => received.length >= count, `${count} frame(s) from the server`, 10_000);
		return received;
	} finally {
		socket.destroy();
	}
}


describe("chat: embedded", () => scenarios(() => startOrg()));
describe("chat: two nodes over NATS, Redis and PostgreSQL", () => scenarios(() => startOrgCluster()));
