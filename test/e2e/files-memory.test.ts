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
import { freePort } from "../support/servers";

const MiB = 1 << 20;
const FILE_BYTES = 512 * MiB;
const HEAP_LIMIT_MB = 96;

/** Peak and current resident memory of a process, in MB (Linux). */
function memoryOf(pid: number): { peakMb: number; nowMb: number } {
	const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
	const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
	return { peakMb: kb("VmHWM") / 1024, nowMb: kb("VmRSS") / 1024 };
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
		const admin = await new Api(url).login("admin", ADMIN_PASSWORD);
		expectStatus(await admin.post("/api/companies", { name: "Big files", code: "big-files", admin: { username: "big-admin", password: "Company-admin-1", name: "A" } }), 200);
		const user = await admin.login("big-admin", "Company-admin-1");
		const pid = node.process!.pid;
		const baseline = memoryOf(pid).nowMb;

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
		const afterUpload = memoryOf(pid);

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
		const afterDownload = memoryOf(pid);

		const growth = afterDownload.peakMb - baseline;
		console.log(`node RSS: ${baseline.toFixed(0)} MB before, peak ${afterUpload.peakMb.toFixed(0)} MB after the upload, peak ${afterDownload.peakMb.toFixed(0)} MB after the download`);
		assert.ok(node.process!.running, "the node is alive");
		assert.ok(growth < FILE_BYTES / MiB / 4, `resident memory grew by ${growth.toFixed(0)} MB for a ${FILE_BYTES / MiB} MiB file`);
	});
});
