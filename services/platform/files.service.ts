import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import contentDisposition from "content-disposition";
import parseRange from "range-parser";
import { Errors, type Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { ChunkStorageMixin } from "../../mixins/chunk-storage.mixin";
import { DEFAULT_CHUNKING } from "../../lib/files/chunker";
import { MIME_SNIFF_BYTES, sniffMime } from "../../lib/files/mime";
import { checkFileName } from "../../lib/files/names";
import { ChunkHashMismatchError, type ChunkStorage } from "../../lib/files/storage";
import { idParam, listParams, pageOf, type ListQuery } from "../../lib/org/params";
import { and, dataScopeQuery, scopeOf } from "../../lib/org/scope";
import { internalContext, serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";

/**
 * Files as ordered lists of content-addressed chunks (Seafile's model): identical bytes are
 * stored once whoever uploads them, and an interrupted upload resumes with the chunks it lacks.
 * The bytes live in a `ChunkStorage` (local disk or S3); the reference counts of the chunks in
 * the `filechunk` service. A record is `uploading` until every chunk is stored and verified,
 * then `ready`; only ready files are listed and served.
 */
const FileEntity: EntityDefinition = {
	name: "files",
	event: "file",
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		ownerId: { type: "string", required: true, max: 64 },
		deptId: { type: "string", max: 64 },
		name: { type: "string", required: true, max: 255 },
		size: { type: "number", required: true },
		sha256: { type: "string", max: 64 },
		mime: { type: "string", max: 100 },
		/** `[{ sha256, size }]` in file order. */
		chunks: { type: "json", required: true },
		status: { type: "string", required: true, max: 10 },
		expiresAt: { type: "date" },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["companyId", "status"] }, { fields: ["status", "expiresAt"] }],
	searchFields: ["name"],
};

type FilesConfig = { quotaBytes: number; maxFileBytes: number; uploadTtlSeconds: number };
const CONFIG_DEFAULTS: FilesConfig = { quotaBytes: 10 * 2 ** 30, maxFileBytes: 5 * 2 ** 30, uploadTtlSeconds: 24 * 3600 };
/** Chunks a client sends in a resumable upload: any split it likes, each at most this big. */
const MAX_CHUNK_BYTES = DEFAULT_CHUNKING.max;
const MAX_CHUNKS = 100_000;
const EXPIRE_EVERY_MS = 5 * 60_000;

type Ctx<P = unknown> = Context<P, RequestMeta & { filename?: string; $params?: Record<string, string>; $responseType?: string; $responseHeaders?: Record<string, string | number> }>;
type ChunkRef = { sha256: string; size: number };
type FileDoc = {
	id: string;
	companyId: string;
	ownerId: string;
	deptId: string | null;
	name: string;
	size: number;
	sha256: string | null;
	mime: string | null;
	chunks: ChunkRef[];
	status: "uploading" | "ready";
	expiresAt: string | null;
	createdAt: string;
};
type Svc = DbMethods &
	TenantMethods & {
		config: FilesConfig;
		storage: ChunkStorage;
		expireTimer: NodeJS.Timeout | null;
		logger: { warn(...a: unknown[]): void };
		broker: Context["broker"];
		view(file: FileDoc): Record<string, unknown>;
		usage(ctx: Ctx, companyId: string): Promise<number>;
		checkRoom(ctx: Ctx, companyId: string, size: number): Promise<void>;
		readable(ctx: Ctx, id: string, status?: FileDoc["status"]): Promise<FileDoc>;
		openUpload(ctx: Ctx, uploadId: string): Promise<FileDoc>;
		readChunks(chunks: ChunkRef[], start: number, end: number): AsyncGenerator<Buffer>;
		discard(ctx: Ctx, files: FileDoc[]): Promise<void>;
		expireUploads(): Promise<number>;
	};

const notFound = (id: string) => clientError(`File '${id}' not found`, 404, "NOT_FOUND", { id });
/** A 404 becomes null; anything else stays an error. */
const orNull = (err: Errors.MoleculerError) => {
	if (err.code === 404) return null;
	throw err;
};
const distinctKeys = (chunks: ChunkRef[]) => [...new Set(chunks.map(c => c.sha256))];

/** Reads a request body stream into one buffer, refusing more than `max` bytes. */
async function readAtMost(input: Readable, max: number): Promise<Buffer> {
	const parts: Buffer[] = [];
	let size = 0;
	for await (const part of input) {
		size += (part as Buffer).length;
		if (size > max) {
			input.resume();
			throw clientError(`The chunk is larger than declared (${max} bytes)`, 413, "CHUNK_TOO_LARGE");
		}
		parts.push(part as Buffer);
	}
	return Buffer.concat(parts, size);
}

const FilesService = serviceSchema({
	name: "files",
	mixins: [DbMixin(FileEntity), TenantMixin("File"), ChunkStorageMixin(), ConfigMixin<FilesConfig>("files", CONFIG_DEFAULTS)],
	settings: {
		rest: "/files",
		app: "files",
		permissions: {
			"file:read": { description: "List, read and download the company's files", member: true },
			"file:write": { description: "Upload and delete files", member: true },
		},
	},

	actions: {
		// --- Streamed uploads, fed chunk by chunk by `fileingest` on the gateway's node (see there).

		ingestOpen: {
			visibility: "public",
			params: { name: { type: "any" } },
			async handler(this: Svc, ctx: Ctx<{ name: unknown }>) {
				const name = checkFileName(ctx.params.name);
				const user = this.caller(ctx);
				const companyId = this.companyOf(ctx);
				const now = new Date();
				const upload = await this.createEntity(ctx, {
					companyId, ownerId: user.id, deptId: user.deptId ?? null, name, size: 0, sha256: null, mime: null, chunks: [], status: "uploading",
					expiresAt: new Date(now.getTime() + this.config.uploadTtlSeconds * 1000), createdAt: now, updatedAt: now,
				});
				return { uploadId: upload.id };
			},
		},

		/** The next chunk of a streamed upload (the stream is the params; `meta.ingest` says what it is). */
		ingestChunk: {
			visibility: "public",
			timeout: 0,
			async handler(this: Svc, ctx: Ctx & { meta: { ingest?: { uploadId: string; sha256: string; size: number } } }) {
				const input = ctx.params as unknown as Readable;
				try {
					const { uploadId, sha256, size } = ctx.meta.ingest ?? { uploadId: "", sha256: "", size: 0 };
					const upload = await this.openUpload(ctx, uploadId);
					const { maxFileBytes, quotaBytes } = this.config;
					if (upload.size + size > maxFileBytes) throw clientError(`Files may be at most ${maxFileBytes} bytes`, 413, "FILE_TOO_LARGE", { maxFileBytes });
					const used = await this.usage(ctx, upload.companyId);
					if (used + size > quotaBytes) throw clientError(`The company's storage quota (${quotaBytes} bytes) would be exceeded`, 413, "QUOTA_EXCEEDED", { quotaBytes, usedBytes: used });
					const data = await readAtMost(input, size);
					const ref = { sha256, size };
					// One reference per distinct chunk of a file, taken when the chunk first appears in it.
					const fresh = !upload.chunks.some(c => c.sha256 === sha256);
					if (fresh) {
						const { known } = await ctx.call<{ known: string[] }, object>("filechunk.acquire", { companyId: upload.companyId, chunks: [ref] });
						try {
							if (!known.length) await this.storage.put(sha256, data);
						} catch (err) {
							await ctx.call("filechunk.release", { keys: [sha256], collect: true });
							throw err;
						}
					}
					const appended = await this.updateEntities(ctx, { id: upload.id, size: upload.size, status: "uploading" }, { chunks: [...upload.chunks, ref], size: upload.size + size, updatedAt: new Date() });
					if (appended !== 1) {
						if (fresh) await ctx.call("filechunk.release", { keys: [sha256], collect: true });
						throw clientError("The upload changed meanwhile", 409, "CONFLICT");
					}
					return { size: upload.size + size };
				} finally {
					input.resume();
				}
			},
		},

		ingestFinish: {
			visibility: "public",
			params: { uploadId: idParam, sha256: { type: "string", pattern: /^[0-9a-f]{64}$/ } },
			async handler(this: Svc, ctx: Ctx<{ uploadId: string; sha256: string }>) {
				const upload = await this.openUpload(ctx, ctx.params.uploadId);
				if (upload.size === 0) {
					await this.discard(ctx, [upload]);
					throw clientError(`The file '${upload.name}' is empty`, 422, "EMPTY_FILE");
				}
				let head = Buffer.alloc(0);
				for await (const part of this.readChunks(upload.chunks, 0, Math.min(upload.size, MIME_SNIFF_BYTES) - 1)) head = Buffer.concat([head, part]);
				await this.updateEntities(ctx, { id: upload.id, status: "uploading" }, { status: "ready", sha256: ctx.params.sha256, mime: await sniffMime(head, upload.name), expiresAt: null, updatedAt: new Date() });
				return this.view(await this.readable(ctx, upload.id));
			},
		},

		/** Drops a streamed upload that failed on the way, and its chunks. */
		ingestAbort: {
			visibility: "public",
			params: { uploadId: idParam },
			async handler(this: Svc, ctx: Ctx<{ uploadId: string }>) {
				const upload = await this.openUpload(ctx, ctx.params.uploadId).catch(orNull);
				if (upload) await this.discard(ctx, [upload]);
				return Boolean(upload);
			},
		},

		list: {
			rest: "GET /",
			permission: "file:read",
			description: "My company's files, paged, sorted and searched by name.",
			params: { $$strict: true, ...listParams, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<ListQuery & { companyId?: string }>) {
				const query = and(this.tenantQuery(ctx, { status: "ready" }, ctx.params.companyId), dataScopeQuery(this.caller(ctx), { dept: "deptId", owner: "ownerId" }));
				const page = await this.listEntities(ctx, { query, ...pageOf(ctx.params, "-createdAt") });
				return { ...page, rows: page.rows.map(f => this.view(f as unknown as FileDoc)) };
			},
		},

		meta: {
			rest: "GET /:id/meta",
			permission: "file:read",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.view(await this.readable(ctx, ctx.params.id));
			},
		},

		download: {
			rest: "GET /:id",
			permission: "file:read",
			timeout: 0,
			description: "The file's bytes; honours Range (206, 416), If-None-Match (304) and names the file in Content-Disposition.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const file = await this.readable(ctx, ctx.params.id);
				const etag = `"${file.sha256}"`;
				const http = ctx.meta.http ?? {};
				if (http.ifNoneMatch && http.ifNoneMatch.split(",").some(tag => tag.trim().replace(/^W\//, "") === etag)) {
					ctx.meta.$responseHeaders = { ETag: etag };
					ctx.meta.$statusCode = 304;
					return null;
				}
				let start = 0;
				let end = file.size - 1;
				let partial = false;
				if (http.range) {
					const ranges = parseRange(file.size, http.range, { combine: true });
					if (ranges === -1) {
						ctx.meta.$responseHeaders = { "Content-Range": `bytes */${file.size}` };
						throw clientError(`The range '${http.range.slice(0, 100)}' is outside the file (${file.size} bytes)`, 416, "RANGE_NOT_SATISFIABLE", { size: file.size });
					}
					// A malformed header is ignored (the whole file), as is a request for several ranges.
					if (ranges !== -2 && ranges.type === "bytes" && ranges.length === 1) {
						({ start, end } = ranges[0]);
						partial = true;
					}
				}
				ctx.meta.$responseType = file.mime ?? "application/octet-stream";
				ctx.meta.$responseHeaders = {
					ETag: etag,
					"Accept-Ranges": "bytes",
					"Content-Length": end - start + 1,
					"Content-Disposition": contentDisposition(file.name),
					"X-Content-Type-Options": "nosniff",
					"Cache-Control": "private, no-cache",
					...(partial ? { "Content-Range": `bytes ${start}-${end}/${file.size}` } : {}),
				};
				if (partial) ctx.meta.$statusCode = 206;
				return Readable.from(this.readChunks(file.chunks, start, end), { objectMode: false });
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: "file:write",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const file = await this.readable(ctx, ctx.params.id);
				await this.discard(ctx, [file]);
				return this.view(file);
			},
		},

		beginUpload: {
			rest: "POST /uploads",
			permission: "file:write",
			description: "Start (or resume) a resumable upload: the server answers which chunks it lacks.",
			params: {
				$$strict: true,
				name: { type: "string", min: 1, max: 1024 },
				size: { type: "number", integer: true, min: 1 },
				chunks: {
					type: "array",
					min: 1,
					max: MAX_CHUNKS,
					items: { type: "object", strict: true, props: { sha256: { type: "string", pattern: /^[0-9a-f]{64}$/ }, size: { type: "number", integer: true, min: 1, max: MAX_CHUNK_BYTES } } },
				},
			},
			async handler(this: Svc, ctx: Ctx<{ name: string; size: number; chunks: ChunkRef[] }>) {
				const name = checkFileName(ctx.params.name);
				const { size, chunks } = ctx.params;
				const declared = chunks.reduce((n, c) => n + c.size, 0);
				if (declared !== size) throw clientError(`The chunks add up to ${declared} bytes, not the declared ${size}`, 422, "VALIDATION_ERROR", { field: "chunks" });
				const user = this.caller(ctx);
				const companyId = this.companyOf(ctx);
				await this.checkRoom(ctx, companyId, size);
				const now = new Date();
				const upload = (await this.createEntity(ctx, {
					companyId, ownerId: user.id, deptId: user.deptId ?? null, name, size, sha256: null, mime: null, chunks, status: "uploading",
					expiresAt: new Date(now.getTime() + this.config.uploadTtlSeconds * 1000), createdAt: now, updatedAt: now,
				})) as unknown as FileDoc;
				const { known } = await ctx.call<{ known: string[] }, object>("filechunk.acquire", { companyId, chunks });
				const missing = chunks.map((c, i) => (known.includes(c.sha256) ? -1 : i)).filter(i => i >= 0);
				return { uploadId: upload.id, missing, expiresAt: upload.expiresAt };
			},
		},

		putChunk: {
			rest: { method: "PUT", path: "/uploads/:uploadId/chunks/:index", type: "stream" },
			permission: "file:write",
			audit: false,
			timeout: 0,
			description: "One chunk's raw bytes (application/octet-stream); checked against the hash declared for it.",
			async handler(this: Svc, ctx: Ctx) {
				const input = ctx.params as unknown as Readable;
				try {
					const { uploadId = "", index: rawIndex = "" } = ctx.meta.$params ?? {};
					const upload = await this.openUpload(ctx, uploadId);
					const index = Number(rawIndex);
					if (!/^\d{1,6}$/.test(rawIndex) || index >= upload.chunks.length)
						throw clientError(`Chunk index '${rawIndex.slice(0, 20)}' is not one of 0..${upload.chunks.length - 1}`, 422, "VALIDATION_ERROR", { field: "index" });
					const chunk = upload.chunks[index];
					const data = await readAtMost(input, chunk.size);
					if (data.length !== chunk.size) throw clientError(`Chunk ${index} has ${data.length} bytes, ${chunk.size} were declared`, 422, "CHUNK_SIZE_MISMATCH", { index });
					try {
						await this.storage.put(chunk.sha256, data);
					} catch (err) {
						if (err instanceof ChunkHashMismatchError) throw clientError(`Chunk ${index} does not match the SHA-256 declared for it`, 422, "CHUNK_HASH_MISMATCH", { index });
						throw err;
					}
					return { uploadId, index, sha256: chunk.sha256, size: chunk.size };
				} finally {
					input.resume();
				}
			},
		},

		completeUpload: {
			rest: "POST /uploads/:uploadId/complete",
			permission: "file:write",
			timeout: 0,
			description: "Finish a resumable upload: every chunk and the whole file are verified; 409 when a chunk is missing or wrong.",
			params: { $$strict: true, uploadId: idParam },
			async handler(this: Svc, ctx: Ctx<{ uploadId: string }>) {
				const upload = await this.openUpload(ctx, ctx.params.uploadId);
				const missing: number[] = [];
				const stored = new Map<string, boolean>();
				for (const [i, c] of upload.chunks.entries()) {
					if (!stored.has(c.sha256)) stored.set(c.sha256, await this.storage.has(c.sha256));
					if (!stored.get(c.sha256)) missing.push(i);
				}
				if (missing.length) throw clientError(`${missing.length} chunk(s) have not been uploaded`, 409, "CHUNKS_MISSING", { missing: missing.slice(0, 1000) });

				// Read everything back once: every chunk against its hash, and the whole file's hash.
				const whole = createHash("sha256");
				let head = Buffer.alloc(0);
				for (const [i, c] of upload.chunks.entries()) {
					const hash = createHash("sha256");
					for await (const part of this.readChunks([c], 0, c.size - 1)) {
						hash.update(part);
						whole.update(part);
						if (head.length < MIME_SNIFF_BYTES) head = Buffer.concat([head, part.subarray(0, MIME_SNIFF_BYTES - head.length)]);
					}
					if (hash.digest("hex") !== c.sha256) throw clientError(`Chunk ${i} is corrupt: upload it again`, 409, "CHUNK_HASH_MISMATCH", { missing: [i] });
				}
				const ready = { status: "ready", sha256: whole.digest("hex"), mime: await sniffMime(head, upload.name), expiresAt: null, updatedAt: new Date() };
				// Two completions racing: one wins, the other answers the same record.
				await this.updateEntities(ctx, { id: upload.id, status: "uploading" }, ready);
				return this.view(await this.readable(ctx, upload.id));
			},
		},

		usage: {
			rest: "GET /usage",
			permission: "file:read",
			description: "My company's stored bytes against its quota.",
			params: { $$strict: true },
			async handler(this: Svc, ctx: Ctx) {
				const companyId = this.companyOf(ctx);
				return { usedBytes: await this.usage(ctx, companyId), quotaBytes: this.config.quotaBytes, maxFileBytes: this.config.maxFileBytes };
			},
		},

		/** Drops uploads past their expiry (normally on a timer); answers how many. */
		expireUploads: {
			visibility: "public",
			handler(this: Svc) {
				return this.expireUploads();
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			const files = (await this.findEntities(ctx, { query: { companyId: ctx.params.entity.id } })) as unknown as FileDoc[];
			await this.discard(ctx as Ctx, files);
		},
	},

	methods: {
		view(file: FileDoc) {
			const { id, name, size, mime, sha256, ownerId, createdAt, status } = file;
			return { id, name, size, mime, sha256, ownerId, createdAt, status, chunks: file.chunks.length };
		},

		/** Bytes the company holds (its files and the uploads in progress), as it is billed: shared chunks count for each file. */
		async usage(this: Svc, ctx: Ctx, companyId: string) {
			const files = await this.findEntities(ctx, { query: { companyId } });
			return files.reduce((n, f) => n + Number(f.size), 0);
		},

		async checkRoom(this: Svc, ctx: Ctx, companyId: string, size: number) {
			const { maxFileBytes, quotaBytes } = this.config;
			if (size > maxFileBytes) throw clientError(`Files may be at most ${maxFileBytes} bytes`, 413, "FILE_TOO_LARGE", { maxFileBytes });
			const used = await this.usage(ctx, companyId);
			if (used + size > quotaBytes)
				throw clientError(`The company's storage quota (${quotaBytes} bytes) would be exceeded: ${used} bytes are used`, 413, "QUOTA_EXCEEDED", { quotaBytes, usedBytes: used });
		},

		/** A file of the caller's company and data scope, or 404. */
		async readable(this: Svc, ctx: Ctx, id: string, status: FileDoc["status"] = "ready") {
			const file = (await this.getOwned(ctx, id).catch(orNull)) as FileDoc | null;
			const user = this.caller(ctx);
			const scope = scopeOf(user);
			const inScope = file && (scope.all || (scope.self && file.ownerId === user.id) || scope.deptIds.includes(file.deptId ?? ""));
			if (!file || file.status !== status || !inScope) throw notFound(id);
			return file;
		},

		/** An upload in progress that the caller started, or 404 (unknown, finished, expired or someone else's). */
		async openUpload(this: Svc, ctx: Ctx, uploadId: string) {
			const upload = (await this.getOwned(ctx, uploadId).catch(orNull)) as FileDoc | null;
			const expired = upload?.expiresAt && Date.parse(upload.expiresAt) < Date.now();
			if (!upload || upload.status !== "uploading" || upload.ownerId !== this.caller(ctx).id || expired)
				throw clientError(`Upload '${uploadId}' not found (unknown, finished or expired)`, 404, "UPLOAD_NOT_FOUND", { uploadId });
			return upload;
		},

		/** The bytes [start, end] of a file, chunk after chunk, each read only when the previous one is consumed. */
		async *readChunks(this: Svc, chunks: ChunkRef[], start: number, end: number) {
			let offset = 0;
			for (const chunk of chunks) {
				const chunkEnd = offset + chunk.size - 1;
				if (chunkEnd >= start && offset <= end) {
					const from = Math.max(start, offset) - offset;
					const to = Math.min(end, chunkEnd) - offset;
					const stream = await this.storage.get(chunk.sha256, { start: from, end: to });
					for await (const part of stream) yield part as Buffer;
				}
				offset += chunk.size;
				if (offset > end) break;
			}
		},

		/** Removes file records and gives their chunks back (collected at once when nobody else holds them). */
		async discard(this: Svc, ctx: Ctx, files: FileDoc[]) {
			for (const file of files) {
				await this.removeEntity(ctx, file.id);
				await ctx.call("filechunk.release", { keys: distinctKeys(file.chunks), collect: true });
			}
		},

		async expireUploads(this: Svc) {
			const ctx = internalContext<Ctx>(this.broker);
			const expired = (await this.findEntities(ctx, { query: { status: "uploading", expiresAt: { $lt: new Date() } }, limit: 1000 })) as unknown as FileDoc[];
			await this.discard(ctx, expired);
			return expired.length;
		},
	},

	created(this: Svc) {
		this.expireTimer = null;
	},

	started(this: Svc) {
		this.expireTimer = setInterval(() => this.expireUploads().catch(err => this.logger.warn("Expiring uploads failed", err)), EXPIRE_EVERY_MS);
		this.expireTimer.unref();
	},

	stopped(this: Svc) {
		if (this.expireTimer) clearInterval(this.expireTimer);
	},
});

export default FilesService;
