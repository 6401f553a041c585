/**
 * Chunk storage (lib/files/storage): one contract suite run against both backends, local disk in
 * a temp folder and S3 against a real s3rver process. Each test gets its own folder or bucket, and
 * "two nodes" are two storages made from the same settings.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
	ChunkHashMismatchError,
	ChunkNotFoundError,
	ChunkStorageError,
	createChunkStorage,
	InvalidChunkKeyError,
	sha256Hex,
	type ChunkStorage,
	type ChunkStorageOptions,
	type StoredChunk,
} from "../../lib/files/storage";
import type { FileStorageSettings } from "../../types/platform";
import { startS3, type S3Server } from "../support/s3";

const MiB = 1024 * 1024;

interface Backend {
	kind: "local" | "s3";
	/** Settings of a new, empty place (folder or bucket); the storage's init() creates it. */
	freshSettings(): FileStorageSettings;
	setUp(): Promise<void>;
	tearDown(): Promise<void>;
}

function localBackend(): Backend {
	let root = "";
	let n = 0;
	return {
		kind: "local",
		freshSettings: () => ({ kind: "local", dir: path.join(root, `node-${++n}`) }),
		async setUp() {
			root = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-chunks-"));
		},
		async tearDown() {
			fs.rmSync(root, { recursive: true, force: true });
		},
	};
}

function s3Backend(): Backend {
	let s3: S3Server | null = null;
	let n = 0;
	return {
		kind: "s3",
		freshSettings: () => ({
			kind: "s3",
			endpoint: s3!.endpoint,
			bucket: `chunks-${++n}-${randomBytes(3).toString("hex")}`,
			region: s3!.region,
			accessKeyId: s3!.accessKeyId,
			secretAccessKey: s3!.secretAccessKey,
			forcePathStyle: true,
		}),
		async setUp() {
			s3 = await startS3();
		},
		async tearDown() {
			await s3?.stop();
		},
	};
}

function chunk(size: number): { key: string; data: Buffer } {
	const data = randomBytes(size);
	return { key: sha256Hex(data), data };
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
	const parts: Buffer[] = [];
	for await (const part of stream) parts.push(Buffer.from(part as Buffer));
	return Buffer.concat(parts);
}

async function listAll(storage: ChunkStorage): Promise<StoredChunk[]> {
	const out: StoredChunk[] = [];
	for await (const c of storage.list()) out.push(c);
	return out;
}

const sortedKeys = (chunks: { key: string }[]) => chunks.map(c => c.key).sort();

for (const backend of [localBackend(), s3Backend()]) {
	describe(`chunk storage: ${backend.kind}`, () => {
		const opened: ChunkStorage[] = [];

		/** A started storage (a node) on `settings`, closed after the suite. */
		async function open(settings: FileStorageSettings, options?: ChunkStorageOptions): Promise<ChunkStorage> {
			const storage = createChunkStorage(settings, options);
			opened.push(storage);
			await storage.init();
			return storage;
		}
		const fresh = (options?: ChunkStorageOptions) => open(backend.freshSettings(), options);

		before(() => backend.setUp());
		after(async () => {
			await Promise.all(opened.map(s => s.close()));
			await backend.tearDown();
		});

		it("is the backend the settings name", async () => {
			assert.equal((await fresh()).kind, backend.kind);
		});

		it("stores a chunk and gives back exactly its bytes", async () => {
			const storage = await fresh();
			const { key, data } = chunk(100_003);
			assert.equal(await storage.has(key), false);
			await storage.put(key, data);
			assert.equal(await storage.has(key), true);
			assert.deepEqual(await readAll(await storage.get(key)), data);
		});

		it("reads inclusive byte ranges: first byte, last byte, middle, whole, and an end past the chunk cut to it", async () => {
			const storage = await fresh();
			const { key, data } = chunk(10_000);
			await storage.put(key, data);
			const cases: [number, number, Buffer][] = [
				[0, 0, data.subarray(0, 1)],
				[9_999, 9_999, data.subarray(9_999)],
				[1_234, 5_678, data.subarray(1_234, 5_679)],
				[0, 9_999, data],
				[9_000, 20_000, data.subarray(9_000)],
			];
			for (const [start, end, expected] of cases) {
				assert.deepEqual(await readAll(await storage.get(key, { start, end })), expected, `range ${start}-${end}`);
			}
		});

		it("refuses ranges that are malformed or start past the chunk", async () => {
			const storage = await fresh();
			const { key, data } = chunk(100);
			await storage.put(key, data);
			await assert.rejects(storage.get(key, { start: 100, end: 200 }), RangeError);
			await assert.rejects(storage.get(key, { start: 5, end: 4 }), RangeError);
			await assert.rejects(storage.get(key, { start: -1, end: 4 }), RangeError);
			await assert.rejects(storage.get(key, { start: 0.5, end: 4 }), RangeError);
		});

		it("refuses bytes that do not hash to the key, and stores nothing", async () => {
			const storage = await fresh();
			const { key } = chunk(1_000);
			const other = randomBytes(1_000);
			await assert.rejects(storage.put(key, other), (err: unknown) => {
				assert.ok(err instanceof ChunkHashMismatchError);
				assert.equal(err.expected, key);
				assert.equal(err.actual, sha256Hex(other));
				return true;
			});
			assert.equal(await storage.has(key), false);
			assert.deepEqual(await listAll(storage), []);
		});

		it("keeps a chunk put twice, once", async () => {
			const storage = await fresh();
			const { key, data } = chunk(2_000);
			await storage.put(key, data);
			await storage.put(key, data);
			assert.deepEqual(sortedKeys(await listAll(storage)), [key]);
			assert.deepEqual(await readAll(await storage.get(key)), data);
		});

		it("says ChunkNotFoundError for a chunk it does not hold, with or without a range", async () => {
			const storage = await fresh();
			const { key } = chunk(10);
			await assert.rejects(storage.get(key), (err: unknown) => err instanceof ChunkNotFoundError && err.key === key);
			await assert.rejects(storage.get(key, { start: 0, end: 5 }), ChunkNotFoundError);
		});

		it("deletes a chunk, and deleting it again is no error", async () => {
			const storage = await fresh();
			const { key, data } = chunk(500);
			const kept = chunk(500);
			await storage.put(key, data);
			await storage.put(kept.key, kept.data);
			await storage.delete(key);
			await storage.delete(key);
			assert.equal(await storage.has(key), false);
			await assert.rejects(storage.get(key), ChunkNotFoundError);
			assert.deepEqual(sortedKeys(await listAll(storage)), [kept.key]);
		});

		it("lists exactly the chunks it holds, with their sizes", async () => {
			const storage = await fresh();
			assert.deepEqual(await listAll(storage), []);
			const chunks = [0, 1, 17, 4_096, 70_000].map(chunk);
			for (const c of chunks) await storage.put(c.key, c.data);
			const listed = await listAll(storage);
			assert.deepEqual(sortedKeys(listed), sortedKeys(chunks));
			for (const c of chunks) {
				const entry = listed.find(l => l.key === c.key)!;
				assert.equal(entry.size, c.data.length);
				assert.ok(entry.modifiedAt instanceof Date && !Number.isNaN(entry.modifiedAt.getTime()));
			}
		});

		it("lists past one page: 1,100 chunks with the default page size, 23 with pages of 5", async () => {
			const storage = await fresh();
			const chunks = Array.from({ length: 1_100 }, () => chunk(8));
			for (let i = 0; i < chunks.length; i += 50) {
				await Promise.all(chunks.slice(i, i + 50).map(c => storage.put(c.key, c.data)));
			}
			const listed = await listAll(storage);
			assert.equal(listed.length, 1_100);
			assert.deepEqual(sortedKeys(listed), sortedKeys(chunks));

			const settings = backend.freshSettings();
			const small = await open(settings, { listPageSize: 5 });
			const few = Array.from({ length: 23 }, () => chunk(8));
			for (const c of few) await small.put(c.key, c.data);
			assert.deepEqual(sortedKeys(await listAll(small)), sortedKeys(few));
		});

		it("refuses keys that are not lowercase hex SHA-256, before any I/O", async () => {
			const storage = await fresh();
			const { key, data } = chunk(10);
			const bad: unknown[] = [
				"../x",
				"../" + key.slice(3),
				key.toUpperCase(),
				key.slice(1),
				key + "0",
				key.slice(0, 63) + "g",
				key.slice(0, 60) + "/../",
				key.slice(0, 63) + "\0",
				"",
				42,
			];
			for (const k of bad) {
				const name = JSON.stringify(k);
				await assert.rejects(storage.has(k as string), InvalidChunkKeyError, `has(${name})`);
				await assert.rejects(storage.put(k as string, data), InvalidChunkKeyError, `put(${name})`);
				await assert.rejects(storage.get(k as string), InvalidChunkKeyError, `get(${name})`);
				await assert.rejects(storage.delete(k as string), InvalidChunkKeyError, `delete(${name})`);
			}
			assert.deepEqual(await listAll(storage), []);
		});

		it("leaves one intact chunk after 10 concurrent puts of the same key from two nodes", async () => {
			const settings = backend.freshSettings();
			const [a, b] = await Promise.all([open(settings), open(settings)]);
			const { key, data } = chunk(3 * MiB);
			await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).put(key, data)));
			const listed = await listAll(a);
			assert.deepEqual(listed.map(l => [l.key, l.size]), [[key, data.length]]);
			assert.deepEqual(await readAll(await b.get(key)), data);
			if (settings.kind === "local") assert.deepEqual(filesUnder(settings.dir), [chunkPath(settings.dir, key)], "no temp file left");
		});

		it("round-trips an 8 MiB chunk", async () => {
			const storage = await fresh();
			const { key, data } = chunk(8 * MiB);
			await storage.put(key, data);
			const back = await readAll(await storage.get(key));
			assert.equal(back.length, 8 * MiB);
			assert.equal(createHash("sha256").update(back).digest("hex"), key);
			const tail = await readAll(await storage.get(key, { start: 8 * MiB - 10, end: 8 * MiB - 1 }));
			assert.deepEqual(tail, data.subarray(8 * MiB - 10));
		});

		it("shares chunks between two nodes on the same settings", async () => {
			const settings = backend.freshSettings();
			const a = await open(settings);
			const b = await open(settings);
			const { key, data } = chunk(4_321);
			await a.put(key, data);
			assert.equal(await b.has(key), true);
			assert.deepEqual(await readAll(await b.get(key, { start: 100, end: 199 })), data.subarray(100, 200));
			assert.deepEqual(sortedKeys(await listAll(b)), [key]);
			await b.delete(key);
			assert.equal(await a.has(key), false);
		});

		it("initialises the same new place from several nodes at once", async () => {
			const settings = backend.freshSettings();
			const nodes = [createChunkStorage(settings), createChunkStorage(settings), createChunkStorage(settings)];
			opened.push(...nodes);
			await Promise.all(nodes.map(n => n.init()));
			await Promise.all(nodes.map(n => n.init()));
			const { key, data } = chunk(64);
			await nodes[0].put(key, data);
			assert.equal(await nodes[2].has(key), true);
		});
	});
}

function chunkPath(dir: string, key: string): string {
	return path.join(dir, "chunks", key.slice(0, 2), key.slice(2, 4), key);
}

function filesUnder(dir: string): string[] {
	return fs.readdirSync(dir, { recursive: true, withFileTypes: true })
		.filter(e => e.isFile())
		.map(e => path.join(e.parentPath ?? e.path, e.name))
		.sort();
}

describe("chunk storage: local disk specifics", () => {
	let root = "";
	const local = (name: string) => ({ kind: "local" as const, dir: path.join(root, name) });
	before(() => {
		root = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-chunks-local-"));
	});
	after(() => fs.rmSync(root, { recursive: true, force: true }));

	it("lays chunks out as chunks/<2 hex>/<2 hex>/<key>", async () => {
		const settings = local("layout");
		const storage = createChunkStorage(settings);
		await storage.init();
		const { key, data } = chunk(300);
		await storage.put(key, data);
		assert.deepEqual(filesUnder(settings.dir), [chunkPath(settings.dir, key)]);
		assert.deepEqual(fs.readFileSync(chunkPath(settings.dir, key)), data);
	});

	it("never lists temp files a crash left, and init() removes those older than an hour only", async () => {
		const settings = local("temps");
		const storage = createChunkStorage(settings);
		await storage.init();
		const { key, data } = chunk(300);
		await storage.put(key, data);
		const stale = `${chunkPath(settings.dir, key)}.tmp-1-aaaaaaaaaaaa`;
		const young = `${chunkPath(settings.dir, key)}.tmp-2-bbbbbbbbbbbb`;
		const other = chunk(10).key;
		const strayDir = path.dirname(chunkPath(settings.dir, other));
		const strayStale = path.join(strayDir, `${other}.tmp-3-cccccccccccc`);
		fs.mkdirSync(strayDir, { recursive: true });
		for (const f of [stale, young, strayStale]) fs.writeFileSync(f, "partial");
		const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
		fs.utimesSync(stale, twoHoursAgo, twoHoursAgo);
		fs.utimesSync(strayStale, twoHoursAgo, twoHoursAgo);

		assert.deepEqual(sortedKeys(await listAll(storage)), [key]);
		await createChunkStorage(settings).init();
		assert.deepEqual(filesUnder(settings.dir), [chunkPath(settings.dir, key), young].sort());
		assert.deepEqual(sortedKeys(await listAll(storage)), [key]);
	});

	it("does not list files that are not chunks in their own folder", async () => {
		const settings = local("strays");
		const storage = createChunkStorage(settings);
		await storage.init();
		const { key, data } = chunk(30);
		await storage.put(key, data);
		const misplaced = chunk(30).key;
		fs.mkdirSync(path.join(settings.dir, "chunks", "zz"), { recursive: true });
		fs.writeFileSync(path.join(settings.dir, "chunks", key.slice(0, 2), key.slice(2, 4), misplaced), "x");
		fs.writeFileSync(path.join(settings.dir, "chunks", key.slice(0, 2), key.slice(2, 4), "README"), "x");
		assert.deepEqual(sortedKeys(await listAll(storage)), [key]);
	});
});

describe("chunk storage: S3 errors", () => {
	let s3: S3Server;
	before(async () => {
		s3 = await startS3();
	});
	after(() => s3.stop());

	const settings = (over: Partial<Extract<FileStorageSettings, { kind: "s3" }>>): FileStorageSettings => ({
		kind: "s3", endpoint: s3.endpoint, bucket: s3.bucket, region: s3.region,
		accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, forcePathStyle: true, ...over,
	});

	it("says which operation, object and server failed with wrong credentials, and never shows the secret", async () => {
		const storage = createChunkStorage(settings({ accessKeyId: "WRONGKEY", secretAccessKey: "very-secret-value" }));
		const { key, data } = chunk(10);
		try {
			for (const attempt of [() => storage.has(key), () => storage.put(key, data), () => storage.get(key), () => storage.init()]) {
				await assert.rejects(attempt(), (err: unknown) => {
					assert.ok(err instanceof ChunkStorageError, String(err));
					assert.match(err.message, /^S3 \w+ of /);
					assert.match(err.message, new RegExp(`bucket '${s3.bucket}' at ${s3.endpoint}`));
					assert.match(err.message, /HTTP 403/);
					assert.doesNotMatch(err.message, /very-secret-value/);
					return true;
				});
			}
		} finally {
			await storage.close();
		}
	});

	it("points at S3_ENDPOINT when the server cannot be reached", async () => {
		const down = await startS3();
		await down.stop();
		const storage = createChunkStorage(settings({ endpoint: down.endpoint }));
		try {
			await assert.rejects(storage.has(chunk(1).key), (err: unknown) => {
				assert.ok(err instanceof ChunkStorageError, String(err));
				assert.match(err.message, /ECONNREFUSED/);
				assert.match(err.message, /S3_ENDPOINT/);
				return true;
			});
		} finally {
			await storage.close();
		}
	});
});
