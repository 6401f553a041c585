import { Errors, type Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { ChunkStorageMixin } from "../../mixins/chunk-storage.mixin";
import type { ChunkStorage } from "../../lib/files/storage";
import { internalContext, serviceSchema } from "../../lib/service";
import type { EntityDefinition } from "../../types/entity";

/**
 * Reference counts of the stored chunks, shared by every file of every company that holds the
 * same bytes. A chunk whose count has been 0 for `gcGraceSeconds` is collected; collection first
 * marks the row `deleting` by compare-and-set (which fails if anyone took a reference meanwhile),
 * then deletes the object, then the row. Nobody can take a reference to a `deleting` chunk: they
 * wait for the row to go and start afresh, so a referenced chunk is never deleted.
 *
 * `companies` lists the companies that have held a chunk: a company is told a chunk is already
 * stored only if it held those bytes itself, so dedup never reveals another company's content.
 */
const ChunkEntity: EntityDefinition = {
	name: "file_chunks",
	cached: false,
	fields: {
		size: { type: "integer", required: true },
		refs: { type: "integer", required: true },
		state: { type: "string", required: true, max: 10 },
		companies: { type: "json", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["refs", "updatedAt"] }],
};

type ChunkRow = { id: string; size: number; refs: number; state: "live" | "deleting"; companies: string[]; updatedAt: string };
type ChunkRef = { sha256: string; size: number };
type GcConfig = { gcGraceSeconds: number; gcIntervalSeconds: number };
type Svc = DbMethods & {
	broker: Context["broker"];
	logger: { info(...a: unknown[]): void; warn(...a: unknown[]): void };
	config: GcConfig;
	storage: ChunkStorage;
	gcTimer: NodeJS.Timeout | null;
	adjust(ctx: Context, key: string, change: (row: ChunkRow | null) => Partial<ChunkRow> | null | "wait"): Promise<ChunkRow | null>;
	collect(ctx: Context, keys: string[] | null, graceSeconds: number): Promise<number>;
	scheduleGc(): void;
};

/** Compare-and-set rounds before a contended update gives up (each one lost to another writer). */
const CAS_ATTEMPTS = 100;
const pause = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

const FileChunkService = serviceSchema({
	name: "filechunk",
	mixins: [DbMixin(ChunkEntity), ChunkStorageMixin(), ConfigMixin<GcConfig>("files", { gcGraceSeconds: 3600, gcIntervalSeconds: 600 })],

	actions: {
		/**
		 * Takes one reference per distinct key for `companyId`; answers the keys this company held
		 * before *and* that are stored, i.e. the ones its client need not send.
		 */
		acquire: {
			visibility: "public",
			params: { companyId: { type: "string", max: 64 }, chunks: { type: "array", items: { type: "object", props: { sha256: { type: "string", length: 64 }, size: "number" } } } },
			async handler(this: Svc, ctx: Context<{ companyId: string; chunks: ChunkRef[] }>) {
				const { companyId } = ctx.params;
				const distinct = new Map(ctx.params.chunks.map(c => [c.sha256, c.size]));
				const known: string[] = [];
				for (const [key, size] of distinct) {
					const before = await this.adjust(ctx, key, row => {
						if (row?.state === "deleting") return "wait";
						const companies = row ? (row.companies.includes(companyId) ? row.companies : [...row.companies, companyId]) : [companyId];
						return { size, refs: (row?.refs ?? 0) + 1, state: "live", companies };
					});
					if (before?.companies.includes(companyId) && (await this.storage.has(key))) known.push(key);
				}
				return { known };
			},
		},

		/** Gives back one reference per distinct key; with `collect`, chunks nobody holds any more are deleted at once. */
		release: {
			visibility: "public",
			params: { keys: { type: "array", items: { type: "string", length: 64 } }, collect: { type: "boolean", optional: true } },
			async handler(this: Svc, ctx: Context<{ keys: string[]; collect?: boolean }>) {
				const keys = [...new Set(ctx.params.keys)];
				for (const key of keys) await this.adjust(ctx, key, row => (row && row.refs > 0 ? { refs: row.refs - 1 } : null));
				if (ctx.params.collect) await this.collect(ctx, keys, 0);
				return true;
			},
		},

		/** Collects unreferenced chunks (normally on a timer); answers how many went. */
		gc: {
			visibility: "public",
			params: { graceSeconds: { type: "number", min: 0, optional: true } },
			handler(this: Svc, ctx: Context<{ graceSeconds?: number }>) {
				return this.collect(ctx, null, ctx.params.graceSeconds ?? this.config.gcGraceSeconds);
			},
		},

		/** Referenced chunks and their bytes (counted once however many files share them), and the objects in storage. */
		stats: {
			visibility: "public",
			async handler(this: Svc, ctx: Context) {
				const rows = (await this.findEntities(ctx, {})) as unknown as ChunkRow[];
				let stored = 0;
				let storedBytes = 0;
				for await (const object of this.storage.list()) {
					stored++;
					storedBytes += object.size;
				}
				return { chunks: rows.length, bytes: rows.reduce((n, r) => n + r.size, 0), unreferenced: rows.filter(r => r.refs === 0).length, stored, storedBytes };
			},
		},
	},

	methods: {
		/**
		 * One compare-and-set update of a chunk's row (created when missing). `change` answers the
		 * new fields, null for no change, or "wait" to come back once the row has gone. Answers the
		 * row as it was before the change.
		 */
		async adjust(this: Svc, ctx: Context, key: string, change: (row: ChunkRow | null) => Partial<ChunkRow> | null | "wait") {
			for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
				const row = (await this.getEntity(ctx, key)) as ChunkRow | null;
				const next = change(row);
				if (next === null) return row;
				if (next === "wait") {
					await pause(20 + Math.random() * 30);
					continue;
				}
				const fields = { ...next, updatedAt: new Date() };
				if (!row) {
					try {
						await this.createEntity(ctx, { id: key, ...fields });
						return null;
					} catch (err) {
						if ((err as Errors.MoleculerError).code === 409) continue;
						throw err;
					}
				}
				const won = await this.updateEntities(ctx, { id: key, refs: row.refs, state: row.state }, fields);
				if (won === 1) return row;
				await pause(Math.random() * 10);
			}
			throw new Errors.MoleculerError(`Chunk ${key} is too contended to update`, 503, "CHUNK_CONTENDED");
		},

		/**
		 * Deletes chunks with no reference for `graceSeconds` (all such chunks, or only `keys`):
		 * mark `deleting` (compare-and-set on refs = 0), delete the object, remove the row.
		 */
		async collect(this: Svc, ctx: Context, keys: string[] | null, graceSeconds: number) {
			const before = new Date(Date.now() - graceSeconds * 1000);
			const query = { refs: 0, state: "live", updatedAt: { $lte: before }, ...(keys ? { id: { $in: keys } } : {}) };
			const candidates = (await this.findEntities(ctx, { query, limit: 10_000 })) as unknown as ChunkRow[];
			let removed = 0;
			for (const row of candidates) {
				const marked = await this.updateEntities(ctx, { id: row.id, refs: 0, state: "live" }, { state: "deleting", updatedAt: new Date() });
				if (marked !== 1) continue;
				try {
					await this.storage.delete(row.id);
				} catch (err) {
					// Back to live, so that nobody waits on a chunk this node failed to delete; the next run tries again.
					await this.updateEntities(ctx, { id: row.id, state: "deleting" }, { state: "live", updatedAt: new Date() });
					throw err;
				}
				await this.removeEntity(ctx, row.id);
				removed++;
			}
			// Objects that never got a row (a put whose upload failed before it took a reference), past the grace period.
			if (!keys) {
				for await (const stored of this.storage.list()) {
					if (stored.modifiedAt > before) continue;
					if (!(await this.getEntity(ctx, stored.key))) {
						await this.storage.delete(stored.key);
						removed++;
					}
				}
			}
			if (removed) this.logger.info(`Collected ${removed} unreferenced chunk(s)`);
			return removed;
		},

		scheduleGc(this: Svc) {
			if (this.gcTimer) clearInterval(this.gcTimer);
			this.gcTimer = setInterval(() => {
				const ctx = internalContext(this.broker);
				this.collect(ctx, null, this.config.gcGraceSeconds).catch(err => this.logger.warn("Chunk collection failed", err));
			}, Math.max(1, this.config.gcIntervalSeconds) * 1000);
			this.gcTimer.unref();
		},

		configChanged(this: Svc) {
			this.scheduleGc();
		},
	},

	created(this: Svc) {
		this.gcTimer = null;
	},

	started(this: Svc) {
		this.scheduleGc();
	},

	stopped(this: Svc) {
		if (this.gcTimer) clearInterval(this.gcTimer);
	},
});

export default FileChunkService;
