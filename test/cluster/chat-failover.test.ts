/**
 * 1:1 chat when a `chatmsg` node dies mid-burst, with real processes.
 *
 * The cluster: the two in-process full nodes of startOrgCluster (NATS, Redis, PostgreSQL, S3),
 * two `messaging`-only nodes started by scripts/node.sh on the built files, and a dedicated
 * gateway-only node (in-process) in front. The gateway runs no `chatmsg` of its own, so
 * `registry.preferLocal` cannot keep its calls at home: they are balanced over the four
 * `chatmsg` instances, two of which are the processes.
 *
 * Carol sends Dave 1,000 messages, 20 at a time, each with its own clientMsgId and a client-side
 * retry (same clientMsgId) on 5xx and network errors, as a real client does. After 300
 * acknowledgements one messaging process is SIGKILLed. Every message must end acknowledged with
 * its own sequence number; Dave's device that was offline catches up over TCP by `afterSeq` with
 * no gap and no duplicate; his socket.io device that stayed online got each message at most once,
 * and only a message whose push died with the node may be missing (catching up recovers it).
 */
import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import { createTestBroker } from "../support/broker";
import { ClusterNode } from "../support/cluster";
import { clientMsgId, messagingCompany, person, type Person } from "../support/messaging";
import { ADMIN_PASSWORD, Api, expectStatus, LICENSE_KEYS, ROOT, startOrgCluster, type RunningOrg } from "../support/org";
import { socketIoDevice, tcpDevice, tcpPortOf, type Device } from "../support/realtime";
import { freePort, waitFor } from "../support/servers";

const BURST = 1_000;
const CONCURRENCY = 20;
const KILL_AFTER = 300;
const CLIENT_ATTEMPTS = 5;
const PAGE = 200;

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

interface Ack {
	/** Position in the burst (its content is `burst <index>`). */
	index: number;
	clientMsgId: string;
	id: string;
	conversationId: string;
	seq: number;
	duplicate: boolean;
	/** Client-side attempts it took (1 = the first answer was the acknowledgement). */
	attempts: number;
	/** Acknowledged after the SIGKILL was sent. */
	afterKill: boolean;
	/** When the acknowledgement arrived (ms since epoch). */
	at: number;
}

/** The moment of the SIGKILL. */
interface KillState {
	/** `chatmsg.send` calls the victim had served. */
	servedBefore: number;
	survivorBefore: number;
	/** Client sends waiting for an answer. */
	inFlight: number;
	acked: number;
	at: number;
}

interface ClientFailure {
	index: number;
	attempt: number;
	/** 0 = network error. */
	status: number;
	body: unknown;
}

/** Nodes that serve `chatmsg`, as `observer` sees them. */
function chatmsgNodes(observer: ServiceBroker): string[] {
	return observer.registry
		.getServiceList({ onlyAvailable: true, skipInternal: true })
		.filter(s => s.name === "chatmsg")
		.map(s => s.nodeID)
		.sort();
}

/** The sum over `chatmsg.send` of one of a node's metrics (asked through `observer`). */
async function sendMetric(observer: ServiceBroker, nodeID: string, metric: string): Promise<number> {
	const metrics = (await observer.call("$node.metrics", { includes: [metric] }, { nodeID })) as {
		values: { labels: { action?: string }; value: number }[];
	}[];
	return metrics.flatMap(m => m.values).filter(v => v.labels.action === "chatmsg.send").reduce((n, v) => n + v.value, 0);
}

function countBy<T>(items: T[], key: (item: T) => string | number): Map<string | number, number> {
	const counts = new Map<string | number, number>();
	for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
	return counts;
}

/** Every key of `items` that occurs more than once, with its count. */
const repeated = <T>(items: T[], key: (item: T) => string | number) => [...countBy(items, key)].filter(([, n]) => n > 1);

describe("chat: a chatmsg node SIGKILLed mid-burst", () => {
	let org: RunningOrg;
	let gateway: ServiceBroker;
	let gatewayUrl: string;
	const messagingNodes: ClusterNode[] = [];
	const devices: Device[] = [];

	before(async () => {
		org = await startOrgCluster();
		// What startOrgCluster gives its own nodes beside the shared environment.
		const env: Record<string, string> = {};
		for (const [k, v] of Object.entries({
			...org.env,
			ADMIN_PASSWORD,
			LICENSE_PUBLIC_KEY: LICENSE_KEYS.publicKey,
			LICENSE_PRIVATE_KEY: LICENSE_KEYS.privateKey,
			RATE_LIMIT_PER_IP: "0",
			RATE_LIMIT_PER_USER: "0",
		}))
			if (v !== undefined) env[k] = v;
		const ns = env.NAMESPACE;
		messagingNodes.push(new ClusterNode(`${ns}-msg-a`, { groups: ["messaging"], env }), new ClusterNode(`${ns}-msg-b`, { groups: ["messaging"], env }));
		messagingNodes.forEach(n => n.start());

		const port = await freePort();
		gatewayUrl = `http://127.0.0.1:${port}`;
		gateway = createTestBroker({ ...env, NODE_ID: `${ns}-gw`, PORT: String(port), HOST: "127.0.0.1" });
		gateway.loadServices(path.join(ROOT, "services", "gateway"), "**/*.service.ts");
		await gateway.start();
		assert.ok(!gateway.registry.getServiceList({ onlyLocal: true }).some(s => s.name === "chatmsg"), "the gateway node runs no chatmsg of its own");

		const expected = [org.brokers[0].nodeID, org.brokers[1].nodeID, ...messagingNodes.map(n => n.nodeID)].sort();
		for (const node of messagingNodes)
			await node.started(async () => chatmsgNodes(gateway).includes(node.nodeID) && chatmsgNodes(org.broker).includes(node.nodeID), "chatmsg in the registry", 60_000);
		assert.deepEqual(chatmsgNodes(gateway), expected, "four chatmsg instances, two of them processes");
		await waitFor(async () => (await fetch(`${gatewayUrl}/api/ready`)).status === 200, "the dedicated gateway ready");
	});

	after(async () => {
		for (const d of devices) await d.close().catch(() => undefined);
		// The processes first, while NATS is still there for them to say goodbye.
		await Promise.all(messagingNodes.map(n => n.stop()));
		await gateway?.stop().catch(() => undefined);
		await org?.stop();
	});

	it("every message of a 1,000-message burst is acknowledged once with its own seq; an offline device catches up with no gap and no duplicate", { timeout: 180_000 }, async () => {
		const company = await messagingCompany(org);
		const carol: Person = await person(org, company, "carol");
		const dave: Person = await person(org, company, "dave");
		const carolApi: Api = await carol.login(gatewayUrl, "carol-http");
		// The gateway's routes follow the registry: wait until chat is routed there.
		await waitFor(async () => (await carolApi.get("/api/chat/conversations")).status === 200, "chat routed on the dedicated gateway");

		const tcpPort = await tcpPortOf(gateway);
		const daveTcp = await tcpDevice(tcpPort, (await dave.login(gatewayUrl, "dave-tcp")).token!, "dave tcp (goes offline)");
		// The online device on another gateway: pushes cross nodes through socket.io's Redis adapter.
		const daveIo = await socketIoDevice(org.urls[1], (await dave.login(org.urls[1], "dave-io")).token!, "dave socket.io");
		devices.push(daveTcp, daveIo);

		// A few messages before the burst, seen by both devices; then the TCP device goes away.
		const before_: Ack[] = [];
		for (let i = 0; i < 3; i++)
			before_.push(expectStatus(await carolApi.post("/api/chat/messages", { to: dave.id, type: "text", content: `before ${i}`, clientMsgId: clientMsgId() }), 200, "send before"));
		await daveTcp.waitFor("chat.message", before_.length);
		await daveIo.waitFor("chat.message", before_.length);
		const lastSeen = Math.max(...daveTcp.received("chat.message").map(m => m.seq));
		assert.equal(lastSeen, before_[before_.length - 1].seq);
		await daveTcp.close();
		await waitFor(() => daveTcp.closed(), "dave's TCP device closed");

		// --- The burst.
		const [victim, survivor] = messagingNodes;
		const acks: (Ack | undefined)[] = new Array(BURST);
		const msgIds = Array.from({ length: BURST }, () => clientMsgId());
		const failures: ClientFailure[] = [];
		const givenUp: ClientFailure[] = [];
		let next = 0;
		let inFlight = 0;
		let acked = 0;
		let killed = false;
		let kill: Promise<KillState> | null = null;

		const sendOne = async (index: number): Promise<void> => {
			const body = { to: dave.id, type: "text", content: `burst ${index}`, clientMsgId: msgIds[index] };
			for (let attempt = 1; attempt <= CLIENT_ATTEMPTS; attempt++) {
				let status = 0;
				let answer: unknown;
				try {
					const reply = await carolApi.post("/api/chat/messages", body);
					status = reply.status;
					answer = reply.body;
				} catch (err) {
					answer = String(err);
				}
				if (status === 200) {
					const a = answer as Ack;
					acks[index] = { index, clientMsgId: msgIds[index], id: a.id, conversationId: a.conversationId, seq: a.seq, duplicate: a.duplicate, attempts: attempt, afterKill: killed, at: Date.now() };
					acked++;
					return;
				}
				const failure = { index, attempt, status, body: answer };
				// A 4xx is the client's fault: a real client would not retry it either.
				if (status >= 400 && status < 500) return void givenUp.push(failure);
				failures.push(failure);
				if (attempt === CLIENT_ATTEMPTS) return void givenUp.push(failure);
				await sleep(200 * attempt);
			}
		};

		const killVictim = async (): Promise<KillState> => {
			const servedBefore = await sendMetric(org.broker, victim.nodeID, "moleculer.request.total");
			const survivorBefore = await sendMetric(org.broker, survivor.nodeID, "moleculer.request.total");
			const state = { servedBefore, survivorBefore, inFlight, acked, at: Date.now() };
			killed = true;
			await victim.kill();
			return state;
		};

		const t0 = Date.now();
		const retriesBefore = await sendMetric(gateway, gateway.nodeID, "moleculer.request.retry.attempts.total");
		await Promise.all(
			Array.from({ length: CONCURRENCY }, async () => {
				while (next < BURST) {
					const index = next++;
					inFlight++;
					try {
						await sendOne(index);
					} finally {
						inFlight--;
					}
					if (!kill && acked >= KILL_AFTER) kill = killVictim();
				}
			}),
		);
		const burstMs = Date.now() - t0;
		// (Assigned in the workers, which TypeScript's flow analysis does not follow.)
		const killing = kill as Promise<KillState> | null;
		assert.ok(killing, "the victim was killed during the burst");
		const killState = await killing;
		const retries = (await sendMetric(gateway, gateway.nodeID, "moleculer.request.retry.attempts.total")) - retriesBefore;

		// The node is gone from the registry, the cluster carries on without it.
		await waitFor(() => !chatmsgNodes(gateway).includes(victim.nodeID), "the killed node to leave the gateway's registry", 30_000);
		const survivorServed = await sendMetric(org.broker, survivor.nodeID, "moleculer.request.total");
		const inProcessServed = await Promise.all(org.brokers.map(b => sendMetric(org.broker, b.nodeID, "moleculer.request.total")));

		const done = acks.filter((a): a is Ack => a !== undefined);
		// The longest time with no acknowledgement at all: sends piled up on the dead node until it was declared dead.
		const ackTimes = [t0, ...done.map(a => a.at).sort((a, b) => a - b)];
		const longestStallMs = Math.max(...ackTimes.slice(1).map((at, i) => at - ackTimes[i]));
		const stats = {
			burstMs,
			kill: { ...killState, atMs: killState.at - t0 },
			longestStallMs,
			gatewayRetries: retries,
			clientFailures: failures.length,
			clientFailureStatuses: Object.fromEntries(countBy(failures, f => f.status)),
			clientRetriedMessages: done.filter(a => a.attempts > 1).length,
			duplicateAcks: done.filter(a => a.duplicate).length,
			ackedAfterKill: done.filter(a => a.afterKill).length,
			servedBy: { [victim.nodeID]: `${killState.servedBefore} (before the kill)`, [survivor.nodeID]: survivorServed, ...Object.fromEntries(org.brokers.map((b, i) => [b.nodeID, inProcessServed[i]])) },
		};
		console.log(`chat failover burst: ${JSON.stringify(stats)}`);

		assert.deepEqual(givenUp.slice(0, 5), [], `${givenUp.length} messages were never acknowledged`);
		assert.equal(done.length, BURST, "every message acknowledged");
		assert.ok(killState.servedBefore > 0, `the killed node served sends before it died (${killState.servedBefore})`);
		assert.ok(killState.inFlight > 0, "sends were in flight when the node was killed");
		assert.ok(stats.ackedAfterKill > 0 && stats.ackedAfterKill >= BURST - killState.acked - CONCURRENCY, `sends went on after the kill (${stats.ackedAfterKill})`);
		assert.ok(survivorServed > killState.survivorBefore, "the surviving messaging process served sends after the kill");
		assert.ok(retries > 0, "calls lost with the killed node were retried by the gateway");

		// Acknowledgements: one conversation, 1,000 distinct messages, 1,000 distinct seqs right after the ones before.
		const expectedSeqs = Array.from({ length: BURST }, (_, i) => lastSeen + 1 + i);
		assert.deepEqual(repeated(done, a => a.id), [], "no message acknowledged under two clientMsgIds");
		assert.deepEqual(repeated(done, a => a.seq), [], "no seq acknowledged twice");
		assert.deepEqual(done.map(a => a.seq).sort((a, b) => a - b), expectedSeqs, "the acknowledged seqs follow on with no gap");
		assert.equal(new Set(done.map(a => a.conversationId)).size, 1);

		// --- Dave's device comes back and catches up over TCP, page by page.
		const back = await tcpDevice(tcpPort, (await dave.login(gatewayUrl, "dave-tcp-2")).token!, "dave tcp (back)");
		devices.push(back);
		const caughtUp: any[] = [];
		let afterSeq = lastSeen;
		for (let pages = 0; ; pages++) {
			assert.ok(pages <= BURST / PAGE + 1, "catching up ends");
			const page = await back.call("chatmsg.messages", { with: carol.id, afterSeq, limit: PAGE });
			caughtUp.push(...page.rows);
			if (page.rows.length) afterSeq = page.rows[page.rows.length - 1].seq;
			if (!page.hasMore) break;
		}
		assert.equal(caughtUp.length, BURST, "exactly the burst after the last seen message");
		assert.deepEqual(caughtUp.map(m => m.seq), expectedSeqs, "contiguous from the last seen + 1: no gap, no duplicate");
		assert.deepEqual(new Set(caughtUp.map(m => m.id)), new Set(done.map(a => a.id)), "exactly the acknowledged messages");
		const ackById = new Map(done.map(a => [a.id, a]));
		for (const m of caughtUp) {
			const ack = ackById.get(m.id)!;
			assert.equal(m.seq, ack.seq, `message ${m.id}: the seq acknowledged is the seq stored`);
			assert.equal(m.clientMsgId, ack.clientMsgId, `message ${m.id}: stored under its clientMsgId`);
			assert.equal(m.content, `burst ${ack.index}`, `message ${m.id}: its own content`);
		}
		// The whole conversation from the start: the messages before the burst, then the burst.
		const all: any[] = [];
		afterSeq = 0;
		for (;;) {
			const page = await back.call("chatmsg.messages", { with: carol.id, afterSeq, limit: PAGE });
			all.push(...page.rows);
			if (page.rows.length) afterSeq = page.rows[page.rows.length - 1].seq;
			if (!page.hasMore) break;
		}
		assert.deepEqual(all.map(m => m.seq), Array.from({ length: lastSeen + BURST }, (_, i) => i + 1), "the whole conversation: 1 … n");
		assert.deepEqual(all.slice(0, lastSeen).map(m => m.id), before_.map(a => a.id));
		const conv = (await back.call("chatmsg.conversations", {})).find((c: any) => c.peer.id === carol.id);
		assert.equal(conv.lastSeq, lastSeen + BURST, "the conversation's position counts every message");
		assert.equal(conv.unread, lastSeen + BURST, "Dave has read none of them");

		// --- The device that stayed online: each message at most once; a missing one only if its push died with the node.
		const burstIds = new Set(done.map(a => a.id));
		const pushedBurst = () => daveIo.received("chat.message").filter(m => burstIds.has(m.id));
		let seen = -1;
		let stableSince = Date.now();
		await waitFor(() => {
			const n = pushedBurst().length;
			if (n !== seen) [seen, stableSince] = [n, Date.now()];
			return n >= BURST || Date.now() - stableSince > 3_000;
		}, "the online device's pushes to settle", 60_000);
		await sleep(500);
		const pushed = daveIo.received("chat.message");
		assert.deepEqual(repeated(pushed, m => m.id), [], "no message pushed twice to the online device");
		assert.deepEqual(repeated(pushed, m => m.seq), [], "no seq pushed twice to the online device");
		const known = new Map([...before_, ...done].map(a => [a.id, a.seq]));
		for (const m of pushed) assert.equal(m.seq, known.get(m.id), `pushed ${m.id}: an acknowledged message with its acknowledged seq`);
		const pushedIds = new Set(pushed.map(m => m.id));
		const missing = done.filter(a => !pushedIds.has(a.id));
		console.log(`chat failover pushes: ${pushedBurst().length} of ${BURST} burst messages pushed to the online device, ${missing.length} missing (seqs ${missing.map(a => a.seq).join(",") || "none"})`);
		const caughtUpIds = new Set(caughtUp.map(m => m.id));
		assert.deepEqual(missing.filter(a => !caughtUpIds.has(a.id)), [], "every message missing on the online device is recovered by catching up");
		// A push is skipped only by an answer with `duplicate: true`, i.e. when an earlier attempt stored it (and died).
		assert.deepEqual(missing.filter(a => !a.duplicate), [], "only messages stored by an attempt lost with the node may miss their push");
		assert.deepEqual(daveTcp.received("chat.message").map(m => m.id), before_.map(a => a.id), "the offline device got nothing while away");
	});
});
