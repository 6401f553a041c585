/**
 * The files service through the gateway, the same assertions on local disk and on a real S3
 * server process (s3rver): streamed multipart uploads, dedup, resumable uploads, ranges, ETags,
 * names, quotas, tenancy and bad input that leaves nothing behind.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import FileChunkService from "../../services/platform/filechunk.service";
import { createTestBroker } from "../support/broker";
import { createCompany, expectStatus, startOrg, type RunningOrg, type TestCompany } from "../support/org";
import { startNats, testPostgres } from "../support/servers";
import { startS3 } from "../support/s3";
import { collect, download, fixedChunks, putChunk, randomContent, sha256, uploadFiles } from "../support/files";

const MiB = 1 << 20;
const PNG = Buffer.from("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201d0d2ae9d0000000049454e44ae426082", "hex");

type Stats = { chunks: number; bytes: number; unreferenced: number; stored: number; storedBytes: number };

for (const backend of ["local disk", "S3"] as const) {
	describe(`files on ${backend}`, () => {
		let org: RunningOrg;
		let s3: Awaited<ReturnType<typeof startS3>> | null = null;
		let a: TestCompany;
		let b: TestCompany;
		const stats = () => org.broker.call<Stats>("filechunk.stats");

		before(async () => {
			if (backend === "S3") s3 = await startS3();
			org = await startOrg(s3?.env ?? {});
			a = await createCompany(org);
			b = await createCompany(org);
		});
		after(async () => {
			await org?.stop();
			await s3?.stop();
		});

		it("uploads several files in one streamed multipart request and serves them back byte for byte", async () => {
			const big = await collect(randomContent(20 * MiB, `${backend}-big`));
			const text = Buffer.from("plain text, nothing more\n");
			const res = await uploadFiles(a.admin, [
				{ name: "big.bin", content: big },
				{ name: "notes.txt", content: text },
			]);
			const [bigFile, textFile] = expectStatus(res, 200);
			assert.deepEqual({ name: bigFile.name, size: bigFile.size, sha256: bigFile.sha256 }, { name: "big.bin", size: big.length, sha256: sha256(big) });
			assert.ok(bigFile.chunks >= 3 && bigFile.chunks <= 20, `content-defined chunks of 1-8 MiB: ${bigFile.chunks}`);
			assert.equal(textFile.mime, "text/plain; charset=utf-8");

			const got = await download(a.admin, bigFile.id);
			assert.equal(got.status, 200);
			assert.equal(sha256(got.body), sha256(big));
			assert.equal(got.headers.get("content-length"), String(big.length));
			assert.equal(expectStatus(await a.admin.get(`/api/files/${textFile.id}/meta`), 200).sha256, sha256(text));
			const listed = expectStatus(await a.admin.get("/api/files?search=notes"), 200);
			assert.deepEqual(listed.rows.map((f: { id: string }) => f.id), [textFile.id]);
		});

		it("sniffs the type from the content, not from the name or the client", async () => {
			const [png, html] = expectStatus(await uploadFiles(a.admin, [
				{ name: "photo.txt", content: PNG, type: "text/plain" },
				{ name: "page.html", content: Buffer.from("<html><script>alert(1)</script></html>"), type: "text/html" },
			]), 200);
			assert.equal(png.mime, "image/png");
			assert.equal(html.mime, "text/plain; charset=utf-8", "client HTML is never served as active content");
			const got = await download(a.admin, html.id);
			assert.equal(got.headers.get("x-content-type-options"), "nosniff");
		});

		it("stores the same content once, whoever uploads it, and keeps it while anyone holds it", async () => {
			const content = await collect(randomContent(6 * MiB, `${backend}-shared`));
			const before = await stats();
			const [first] = expectStatus(await uploadFiles(a.admin, [{ name: "one.bin", content }]), 200);
			const afterFirst = await stats();
			const [second] = expectStatus(await uploadFiles(b.admin, [{ name: "two.bin", content }]), 200);
			const [third] = expectStatus(await uploadFiles(a.admin, [{ name: "three.bin", content }]), 200);
			const afterAll = await stats();
			assert.equal(afterFirst.storedBytes - before.storedBytes, content.length, "the first upload stores the bytes");
			assert.equal(afterAll.storedBytes, afterFirst.storedBytes, "the second and third store nothing new");

			expectStatus(await a.admin.delete(`/api/files/${first.id}`), 200);
			expectStatus(await b.admin.delete(`/api/files/${second.id}`), 200);
			assert.equal(sha256((await download(a.admin, third.id)).body), sha256(content), "the last holder's file is intact");
			expectStatus(await a.admin.delete(`/api/files/${third.id}`), 200);
			const end = await stats();
			assert.equal(end.storedBytes, before.storedBytes, "once nobody holds the chunks they are gone");
			assert.equal(end.bytes, before.bytes);
		});

		it("resumes an interrupted upload by sending only the chunks the server lacks, then verifies everything", async () => {
			const content = await collect(randomContent(12 * MiB + 12345, `${backend}-resume`));
			const chunks = fixedChunks(content, 4 * MiB);
			const declared = { name: "resumed.bin", size: content.length, chunks: chunks.map(({ sha256, size }) => ({ sha256, size })) };
			const started = expectStatus(await a.admin.post("/api/files/uploads", declared), 200);
			assert.deepEqual(started.missing, [0, 1, 2, 3]);
			for (const i of [0, 1]) expectStatus(await putChunk(a.admin, started.uploadId, i, chunks[i].data), 200);

			// The client went away; a new session for the same content asks only for the rest.
			const again = expectStatus(await a.admin.post("/api/files/uploads", declared), 200);
			assert.deepEqual(again.missing, [2, 3]);
			const early = await a.admin.post(`/api/files/uploads/${again.uploadId}/complete`);
			assert.equal(early.status, 409);
			assert.equal(early.body.type, "CHUNKS_MISSING");
			assert.deepEqual(early.body.data.missing, [2, 3]);
			for (const i of [2, 3]) expectStatus(await putChunk(a.admin, again.uploadId, i, chunks[i].data), 200);
			const file = expectStatus(await a.admin.post(`/api/files/uploads/${again.uploadId}/complete`), 200);
			assert.equal(file.sha256, sha256(content));
			assert.equal(file.size, content.length);
			assert.equal(sha256((await download(a.admin, file.id)).body), sha256(content));
			// The abandoned session can still be finished: every chunk is there.
			expectStatus(await a.admin.post(`/api/files/uploads/${started.uploadId}/complete`), 200);
		});

		it("answers ranges (also across chunks), ETags and UTF-8 names", async () => {
			const content = await collect(randomContent(9 * MiB, `${backend}-range`));
			const chunks = fixedChunks(content, 4 * MiB);
			const name = "报告 ü \"quoted\".bin";
			const started = expectStatus(await a.admin.post("/api/files/uploads", { name, size: content.length, chunks: chunks.map(({ sha256, size }) => ({ sha256, size })) }), 200);
			for (const i of started.missing) expectStatus(await putChunk(a.admin, started.uploadId, i, chunks[i].data), 200);
			const file = expectStatus(await a.admin.post(`/api/files/uploads/${started.uploadId}/complete`), 200);

			const cases: [string, number, number][] = [
				["bytes=0-0", 0, 0],
				["bytes=-1", content.length - 1, content.length - 1],
				[`bytes=${4 * MiB - 10}-${4 * MiB + 9}`, 4 * MiB - 10, 4 * MiB + 9],
				[`bytes=${4 * MiB - 5}-${8 * MiB + 5}`, 4 * MiB - 5, 8 * MiB + 5],
				[`bytes=${8 * MiB}-`, 8 * MiB, content.length - 1],
			];
			for (const [range, start, end] of cases) {
				const got = await download(a.admin, file.id, { Range: range });
				assert.equal(got.status, 206, range);
				assert.equal(got.headers.get("content-range"), `bytes ${start}-${end}/${content.length}`);
				assert.ok(got.body.equals(content.subarray(start, end + 1)), `bytes of ${range}`);
			}
			const outside = await download(a.admin, file.id, { Range: `bytes=${content.length}-` });
			assert.equal(outside.status, 416);
			assert.equal(outside.headers.get("content-range"), `bytes */${content.length}`);

			const full = await download(a.admin, file.id);
			assert.equal(full.headers.get("etag"), `"${sha256(content)}"`);
			assert.equal(full.headers.get("accept-ranges"), "bytes");
			assert.match(full.headers.get("content-disposition")!, /filename\*=UTF-8''%E6%8A%A5%E5%91%8A%20%C3%BC%20%22quoted%22\.bin/);
			const cached = await download(a.admin, file.id, { "If-None-Match": full.headers.get("etag")! });
			assert.equal(cached.status, 304);
			assert.equal(cached.body.length, 0);
			assert.equal((await download(a.admin, file.id, { "If-None-Match": '"other"' })).status, 200);
		});

		it("keeps each company's files to itself", async () => {
			const [mine] = expectStatus(await uploadFiles(a.admin, [{ name: "private.txt", content: Buffer.from("A's secret") }]), 200);
			const started = expectStatus(await a.admin.post("/api/files/uploads", { name: "x.bin", size: 3, chunks: [{ sha256: sha256(Buffer.from("abc")), size: 3 }] }), 200);
			for (const [method, path] of [["GET", `/api/files/${mine.id}`], ["GET", `/api/files/${mine.id}/meta`], ["DELETE", `/api/files/${mine.id}`], ["POST", `/api/files/uploads/${started.uploadId}/complete`]] as const)
				assert.equal((await b.admin.call(method, path, method === "POST" ? {} : undefined)).status, 404, `${method} ${path}`);
			assert.equal((await putChunk(b.admin, started.uploadId, 0, Buffer.from("abc"))).status, 404);
			assert.ok(!JSON.stringify(expectStatus(await b.admin.get("/api/files?pageSize=100"), 200)).includes(mine.id));
			assert.equal(sha256((await download(a.admin, mine.id)).body), sha256(Buffer.from("A's secret")), "A's file is untouched");
			// Dedup does not reveal B's content to A: A is asked for bytes only B holds.
			const [theirs] = expectStatus(await uploadFiles(b.admin, [{ name: "b.txt", content: Buffer.from("only B has these bytes") }]), 200);
			const probe = expectStatus(await a.admin.post("/api/files/uploads", { name: "probe.txt", size: theirs.size, chunks: [{ sha256: theirs.sha256, size: theirs.size }] }), 200);
			assert.deepEqual(probe.missing, [0]);
		});

		it("refuses files beyond the company's quota or the size limit, and stores nothing of them", async () => {
			const before = await stats();
			const used = expectStatus(await a.admin.get("/api/files/usage"), 200).usedBytes;
			expectStatus(await org.admin.put("/api/config/files", { values: { quotaBytes: used + 2 * MiB } }), 200);
			try {
				await waitUntil(async () => expectStatus(await a.admin.get("/api/files/usage"), 200).quotaBytes === used + 2 * MiB);
				const over = await uploadFiles(a.admin, [{ name: "over.bin", content: randomContent(3 * MiB, `${backend}-over`) }]);
				assert.equal(over.status, 413);
				assert.equal(over.body.type, "QUOTA_EXCEEDED");
				const declared = await a.admin.post("/api/files/uploads", { name: "over.bin", size: 3 * MiB, chunks: [{ sha256: "0".repeat(64), size: 3 * MiB }] });
				assert.equal(declared.status, 413);
				expectStatus(await uploadFiles(a.admin, [{ name: "fits.bin", content: Buffer.from("small") }]), 200);
			} finally {
				expectStatus(await org.admin.put("/api/config/files", { values: {} }), 200);
			}
			const after = await stats();
			assert.equal(after.storedBytes - before.storedBytes, 5, "only the file that fitted is stored");
			assert.equal(after.bytes - before.bytes, 5);
		});

		it("collects only chunks nobody holds, also while uploads run, and expired uploads give theirs back", async () => {
			const before = await stats();
			const content = await collect(randomContent(3 * MiB, `${backend}-gc`));
			const chunks = fixedChunks(content, MiB);
			const declared = { name: "gc.bin", size: content.length, chunks: chunks.map(({ sha256, size }) => ({ sha256, size })) };
			const running = expectStatus(await a.admin.post("/api/files/uploads", declared), 200);
			expectStatus(await putChunk(a.admin, running.uploadId, 0, chunks[0].data), 200);
			// A collection with no grace at all, mid-upload: the upload's chunk is referenced, so it stays.
			await org.broker.call("filechunk.gc", { graceSeconds: 0 });
			for (const i of [1, 2]) expectStatus(await putChunk(a.admin, running.uploadId, i, chunks[i].data), 200);
			const file = expectStatus(await a.admin.post(`/api/files/uploads/${running.uploadId}/complete`), 200);
			assert.equal(sha256((await download(a.admin, file.id)).body), sha256(content));

			// An upload left unfinished past its lifetime gives its chunks back, and they go.
			expectStatus(await org.admin.put("/api/config/files", { values: { uploadTtlSeconds: 1 } }), 200);
			try {
				const other = await collect(randomContent(MiB, `${backend}-abandoned`));
				await waitUntil(async () => {
					const res = await a.admin.post("/api/files/uploads", { name: "abandoned.bin", size: other.length, chunks: [{ sha256: sha256(other), size: other.length }] });
					if (res.status !== 200) return false;
					const expiresIn = Date.parse(res.body.expiresAt) - Date.now();
					if (expiresIn > 1500) return false;
					expectStatus(await putChunk(a.admin, res.body.uploadId, 0, other), 200);
					return true;
				});
				assert.equal((await stats()).storedBytes - before.storedBytes, content.length + other.length);
				await new Promise(r => setTimeout(r, 1100));
				assert.ok((await org.broker.call<number>("files.expireUploads")) >= 1);
			} finally {
				expectStatus(await org.admin.put("/api/config/files", { values: {} }), 200);
			}
			expectStatus(await a.admin.delete(`/api/files/${file.id}`), 200);
			const after = await stats();
			assert.equal(after.storedBytes, before.storedBytes, "the abandoned upload's and the deleted file's chunks are gone");
			assert.equal(after.chunks, before.chunks);
		});

		it("answers bad input with a clear 4xx and leaves no record or chunk behind", async () => {
			const before = await stats();
			const files = expectStatus(await a.admin.get("/api/files?pageSize=100"), 200).total;
			for (const name of ["../etc/passwd", "a\\b", "..", "bad\u0001name", "x".repeat(300)]) {
				const res = await uploadFiles(a.admin, [{ name, content: Buffer.from("content") }]);
				assert.equal(res.status, 422, `${JSON.stringify(name)}: ${JSON.stringify(res.body)}`);
				assert.equal(res.body.type, "INVALID_FILE_NAME");
			}
			const empty = await uploadFiles(a.admin, [{ name: "empty.txt", content: Buffer.alloc(0) }]);
			assert.equal(empty.status, 422);
			assert.equal(empty.body.type, "EMPTY_FILE");

			const data = Buffer.from("0123456789");
			const good = { name: "c.bin", size: 10, chunks: [{ sha256: sha256(data), size: 10 }] };
			for (const body of [
				{},
				{ ...good, size: 11 },
				{ ...good, chunks: [] },
				{ ...good, chunks: [{ sha256: "xyz", size: 10 }] },
				{ ...good, chunks: [{ sha256: sha256(data), size: 0 }] },
				{ ...good, name: "../../x" },
				{ ...good, extra: true },
				{ ...good, size: "10" },
			]) {
				const res = await a.admin.post("/api/files/uploads", body);
				assert.ok(res.status >= 400 && res.status < 500 && res.body.message, `${JSON.stringify(body)}: ${res.status}`);
			}
			const started = expectStatus(await a.admin.post("/api/files/uploads", good), 200);
			const wrong = await putChunk(a.admin, started.uploadId, 0, Buffer.from("9876543210"));
			assert.equal(wrong.status, 422);
			assert.equal(wrong.body.type, "CHUNK_HASH_MISMATCH");
			assert.equal((await putChunk(a.admin, started.uploadId, 0, Buffer.from("01234567890"))).status, 413);
			assert.equal((await putChunk(a.admin, started.uploadId, 0, Buffer.from("012345678"))).status, 422);
			assert.equal((await putChunk(a.admin, started.uploadId, 1, data)).status, 422);
			assert.equal((await putChunk(a.admin, started.uploadId, "x", data)).status, 422);
			assert.equal((await putChunk(a.admin, "no-such-upload", 0, data)).status, 404);
			assert.equal((await a.admin.post("/api/files/uploads/no-such-upload/complete")).status, 404);
			assert.equal((await a.admin.get("/api/files/no-such-file")).status, 404);
			assert.equal((await a.admin.get("/api/files?pageSize=1000")).status, 422);
			assert.equal((await stats()).stored, before.stored, "no refused chunk was stored");

			// The upload still completes with the right bytes; deleted, everything is as before.
			expectStatus(await putChunk(a.admin, started.uploadId, 0, data), 200);
			const file = expectStatus(await a.admin.post(`/api/files/uploads/${started.uploadId}/complete`), 200);
			expectStatus(await a.admin.delete(`/api/files/${file.id}`), 200);
			assert.equal(expectStatus(await a.admin.get("/api/files?pageSize=100"), 200).total, files, "no file record was left");
			assert.deepEqual(await stats(), before, "no chunk reference or stored object was left");
		});
	});
}

async function waitUntil(check: () => Promise<boolean>, timeoutMs = 5000) {
	const deadline = Date.now() + timeoutMs;
	while (!(await check())) {
		if (Date.now() > deadline) throw new Error("timed out");
		await new Promise(r => setTimeout(r, 50));
	}
}

describe("files refuses a second replica on local disk", () => {
	it("because each node's disk would hold different chunks", async () => {
		const nats = await startNats();
		const pg = await testPostgres();
		// A shared database, so that only the chunks' local disk stands in the way.
		const env = { TRANSPORTER: nats.url, NAMESPACE: `files-${Date.now().toString(36)}`, DATABASE_URL: await pg.createDatabase(`files_replica_${Date.now().toString(36)}`) };
		const first = createTestBroker({ ...env, NODE_ID: "files-first" });
		first.createService(FileChunkService);
		const second = createTestBroker({ ...env, NODE_ID: "files-second" });
		second.createService(FileChunkService);
		try {
			await first.start();
			await assert.rejects(second.start(), (err: Error & { type?: string }) => err.type === "FILES_NOT_SHARED" && /set S3_BUCKET/.test(err.message));
		} finally {
			await second.stop().catch(() => undefined);
			await first.stop().catch(() => undefined);
			await nats.stop();
			if (pg.owned) await pg.stop();
		}
	});
});
