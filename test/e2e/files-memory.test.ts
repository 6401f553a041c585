/**
 * Files many times larger than the heap: the embedded platform runs as its own process with a
 * 96 MB heap limit, and a 512 MiB file goes up (streamed multipart) and comes back down. The
 * node must neither run out of heap nor grow its resident memory with the file.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import { tempDir } from "../support/broker";
import { ClusterNode, request } from "../support/cluster";
import { randomContent, uploadFiles } from "../support/files";
import { ADMIN_PASSWORD, Api, expectStatus } from "../support/org";
import { freePort, startNats, type ServerProcess } from "../support/servers";

const MiB = 1 << 20;
const FILE_BYTES = 512 * MiB;
const HEAP_LIMIT_MB = 96;

/** Peak and current resident memory of a process, in MB (Linux). */
function memoryOf(pid: number): { peakMb: number; nowMb: number } {
	const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
	const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
	return { peakMb: kb("VmHWM") / 1024, nowMb: kb("VmRSS") / 1024 };
}

/** Signs in, uploads FILE_BYTES through `url`, downloads them, checks the bytes; answers the file's id. */
async function roundTrip(url: string): Promise<void> {
	const admin = await new Api(url).login("admin", ADMIN_PASSWORD);
	expectStatus(await admin.post("/api/companies", { name: "Big files", code: "big-files", admin: { username: "big-admin", password: "Company-admin-1", name: "A" } }), 200);
	const user = await admin.login("big-admin", "Company-admin-1");
	const sent = createHash("sha256");
	async function* counted() {
		for await (const piece of randomContent(FILE_BYTES, "memory")) {
			sent.update(piece);
			yield piece;
		}
	}
	const [file] = expectStatus(await uploadFiles(user, [{ name: "huge.bin", content: counted() }]), 200, "upload");
	assert.equal(file.size, FILE_BYTES);
	assert.equal(file.sha256, sent.digest("hex"));
	const res = await fetch(`${url}/api/files/${file.id}`, { headers: { Authorization: `Bearer ${user.token}` } });
	assert.equal(res.status, 200);
	const received = createHash("sha256");
	let bytes = 0;
	for await (const piece of res.body as unknown as AsyncIterable<Uint8Array>) {
		received.update(piece);
		bytes += piece.length;
	}
	assert.equal(bytes, FILE_BYTES);
	assert.equal(received.digest("hex"), file.sha256);
}

/** A node process whose resident memory must not grow with the file. */
function assertFlat(node: ClusterNode, baselineMb: number) {
	const { peakMb } = memoryOf(node.process!.pid);
	const growth = peakMb - baselineMb;
	console.log(`${node.nodeID} RSS: ${baselineMb.toFixed(0)} MB before, peak ${peakMb.toFixed(0)} MB`);
	assert.ok(node.process!.running, `${node.nodeID} is alive`);
	assert.ok(growth < FILE_BYTES / MiB / 3, `${node.nodeID}'s resident memory grew by ${growth.toFixed(0)} MB for a ${FILE_BYTES / MiB} MiB file`);
}

describe(`a ${FILE_BYTES / MiB} MiB file through a platform with a ${HEAP_LIMIT_MB} MB heap`, () => {
	let node: ClusterNode;
	let url: string;

	before(async () => {
		const port = await freePort();
		url = `http://127.0.0.1:${port}`;
		node = new ClusterNode("files-memory", {
			groups: [],
			env: {
				PORT: String(port),
				HOST: "127.0.0.1",
				DATA_DIR: tempDir(),
				ADMIN_PASSWORD,
				NODE_OPTIONS: `--max-old-space-size=${HEAP_LIMIT_MB}`,
				RATE_LIMIT_PER_IP: "0",
				RATE_LIMIT_PER_USER: "0",
			},
		});
		node.start();
		await node.started(async () => (await request(`${url}/api/ready`)).status === 200, "ready");
	});

	after(() => node?.stop());

	it("goes up and comes back byte for byte while the node's memory stays flat", async () => {
		const baseline = memoryOf(node.process!.pid).nowMb;
		await roundTrip(url);
		assertFlat(node, baseline);
	});
});

describe(`a ${FILE_BYTES / MiB} MiB file through a gateway node to a platform node over NATS, both with a ${HEAP_LIMIT_MB} MB heap`, () => {
	let nats: ServerProcess & { url: string };
	const nodes: ClusterNode[] = [];
	let url: string;

	before(async () => {
		nats = await startNats();
		const port = await freePort();
		url = `http://127.0.0.1:${port}`;
		const env = {
			TRANSPORTER: nats.url,
			NAMESPACE: `bigfiles-${Date.now().toString(36)}`,
			JWT_SECRET: "files-memory-secret",
			ADMIN_PASSWORD,
			NODE_OPTIONS: `--max-old-space-size=${HEAP_LIMIT_MB}`,
			RATE_LIMIT_PER_IP: "0",
			RATE_LIMIT_PER_USER: "0",
		};
		nodes.push(
			new ClusterNode("gateway-node", { groups: ["gateway"], env: { ...env, PORT: String(port), HOST: "127.0.0.1" } }),
			new ClusterNode("platform-node", { groups: ["platform", "org"], env }),
		);
		nodes.forEach(n => n.start());
		await nodes[0].started(async () => (await request(`${url}/api/ready`)).status === 200, "ready", 60_000);
	});

	after(async () => {
		await Promise.all(nodes.map(n => n.stop()));
		await nats?.stop();
	});

	it("goes up and comes back byte for byte while neither node's memory grows with it", async () => {
		const baselines = nodes.map(n => memoryOf(n.process!.pid).nowMb);
		await roundTrip(url);
		nodes.forEach((n, i) => assertFlat(n, baselines[i]));
	});
});
