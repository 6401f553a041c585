import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { serviceSchema } from "../../lib/service";
import { ChainVerifier, chainOf, recordHash, type AuditRecord, type ChainHead, type ChainReport, type RecordKind } from "../../lib/audit/chain";
import { AuditLogEntity, loginFields, operationFields, type RecordFields } from "../../lib/audit/record";
import { parseIsoDate, timeRange } from "../../lib/audit/query";
import { and, dataScopeQuery } from "../../lib/org/scope";
import { optionalId } from "../../lib/org/params";
import type { LoginAttemptedEvent, OperationPerformedEvent } from "../../types/audit";
import type { RequestMeta } from "../../types/context";
import type { Page, Query } from "../../types/entity";

/**
 * The audit log: operations (recorded by the audit middleware's events) and login attempts
 * (`security`'s events), hash-chained per company (see lib/audit/chain.ts). No route changes or
 * removes a record; only retention removes the oldest, moving the chain's anchor.
 */
type LogConfig = { retentionDays: number };
type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;

/** Writers of one chain race for the next seq; the losers read the new tail and try again. */
const CONFLICT_ATTEMPTS = 50;
const FAILURE_ATTEMPTS = 3;
/** Records read at a time by verification and retention. */
const BATCH = 500;
const PURGE_EVERY_MS = 60 * 60 * 1000;
const DAY_MS = 86_400_000;

const dateParam = { type: "string", min: 1, max: 40, optional: true };
const pageParams = {
	page: { type: "number", integer: true, min: 1, optional: true, convert: true },
	pageSize: { type: "number", integer: true, min: 1, max: 100, optional: true, convert: true },
	from: dateParam,
	to: dateParam,
	sort: { type: "enum", values: ["-at", "at"], optional: true },
	companyId: companyIdParam,
};

interface ListParams {
	page?: number;
	pageSize?: number;
	from?: string;
	to?: string;
	sort?: "-at" | "at";
	companyId?: string;
	userId?: string;
	[filter: string]: unknown;
}

type Svc = DbMethods & TenantMethods & {
	config: LogConfig;
	chainQueues: Map<string, Promise<unknown>>;
	purgeTimer: NodeJS.Timeout | null;
	logger: { info(...a: unknown[]): void; warn(...a: unknown[]): void; error(...a: unknown[]): void };
	broker: { call<T>(action: string, params?: unknown): Promise<T> };
	record(ctx: Ctx, fields: RecordFields): Promise<void>;
	append(ctx: Ctx, fields: RecordFields): Promise<AuditRecord>;
	serialised<T>(chain: string, work: () => Promise<T>): Promise<T>;
	listRecords(ctx: Ctx<ListParams>, kind: RecordKind, filters: Query): Promise<Page<Doc>>;
	eachRecord(ctx: Ctx, chain: string, fromSeq: number, toSeq: number | null, visit: (record: AuditRecord) => boolean): Promise<void>;
	verifyChain(ctx: Ctx, chain: string, head: ChainHead | null): Promise<ChainReport>;
	chainsWithoutHead(ctx: Ctx, known: string[]): Promise<string[]>;
	purgeChain(ctx: Ctx, head: ChainHead, before: Date): Promise<PurgeReport>;
};

interface PurgeReport {
	chain: string;
	removed: number;
	anchorSeq?: number;
	problem?: string;
}

const LogService = serviceSchema({
	name: "log",
	mixins: [DbMixin(AuditLogEntity), TenantMixin("Log record"), ConfigMixin<LogConfig>("log", { retentionDays: 180 })],
	dependencies: ["logChain"],
	settings: {
		rest: "/logs",
		app: "org",
		permissions: {
			"log:read": { description: "Read the operation and login logs of the company (within the data scope)" },
			"log:verify": { description: "Check that the company's audit log is intact" },
		},
	},

	actions: {
		operations: {
			rest: "GET /operations",
			permission: "log:read",
			idempotent: true,
			description: "Operations newest first, filtered by user, service, action, result and time (`from`/`to`, ISO 8601, inclusive).",
			params: {
				$$strict: true,
				...pageParams,
				userId: optionalId,
				service: { type: "string", min: 1, max: 64, optional: true },
				action: { type: "string", min: 1, max: 128, optional: true },
				result: { type: "enum", values: ["ok", "error"], optional: true },
			},
			handler(this: Svc, ctx: Ctx<ListParams>) {
				const { userId, service, action, result } = ctx.params;
				return this.listRecords(ctx, "operation", { userId, service, action, result });
			},
		},

		logins: {
			rest: "GET /logins",
			permission: "log:read",
			idempotent: true,
			description: "Login attempts newest first, filtered by user, username, result and time (`from`/`to`, ISO 8601, inclusive).",
			params: {
				$$strict: true,
				...pageParams,
				userId: optionalId,
				username: { type: "string", min: 1, max: 128, optional: true },
				result: { type: "enum", values: ["ok", "failure", "locked", "disabled"], optional: true },
			},
			handler(this: Svc, ctx: Ctx<ListParams>) {
				const { userId, username, result } = ctx.params;
				return this.listRecords(ctx, "login", { userId, username, result });
			},
		},

		verify: {
			rest: "GET /verify",
			permission: "log:verify",
			// Reads whole chains: more time than a usual call, and no retries (a timed-out check would run again in full).
			timeout: 60_000,
			description: "Whether the audit chain of my company (the platform administrator: every chain, or `companyId`'s) is intact, and where it first breaks.",
			params: { $$strict: true, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<{ companyId?: string }>) {
				const user = this.caller(ctx);
				const named = user.platformAdmin ? (ctx.params.companyId ? [ctx.params.companyId] : null) : [this.companyOf(ctx, ctx.params.companyId)];
				const heads = await ctx.call<ChainHead[], { chains?: string[] }>("logChain.list", named ? { chains: named } : {});
				const byChain = new Map(heads.map(h => [h.chain, h]));
				const chains = named ?? [...byChain.keys()];
				if (!named) chains.push(...(await this.chainsWithoutHead(ctx, chains)));
				const reports: ChainReport[] = [];
				for (const chain of chains) reports.push(await this.verifyChain(ctx, chain, byChain.get(chain) ?? null));
				return { intact: reports.every(r => r.intact), chains: reports };
			},
		},

		purge: {
			visibility: "public",
			timeout: 300_000,
			description: "Retention: removes the records older than `before` (default: `retentionDays` of the `log` namespace) from the start of every chain.",
			params: { $$strict: true, before: dateParam },
			async handler(this: Svc, ctx: Ctx<{ before?: string }>) {
				const days = Number(this.config.retentionDays);
				const before = ctx.params.before
					? parseIsoDate("before", ctx.params.before).date
					: days > 0 ? new Date(Date.now() - days * DAY_MS) : null;
				if (!before) return { before: null, removed: 0, chains: [] };
				const reports: PurgeReport[] = [];
				for (const head of await ctx.call<ChainHead[], object>("logChain.list", {})) {
					const report = await this.purgeChain(ctx, head, before);
					if (report.removed > 0 || report.problem) reports.push(report);
				}
				const removed = reports.reduce((sum, r) => sum + r.removed, 0);
				if (removed > 0) this.logger.info(`Retention removed ${removed} audit records older than ${before.toISOString()}`);
				return { before: before.toISOString(), removed, chains: reports };
			},
		},
	},

	events: {
		"audit.operation.performed"(this: Svc, ctx: Ctx<Partial<OperationPerformedEvent>>) {
			return this.record(ctx, operationFields(ctx.params ?? {}));
		},
		"security.login.attempted"(this: Svc, ctx: Ctx<Partial<LoginAttemptedEvent>>) {
			return this.record(ctx, loginFields(ctx.params ?? {}));
		},
	},

	methods: {
		/** An event handler: a record that cannot be written is logged, never thrown back at the emitter. */
		async record(this: Svc, ctx: Ctx, fields: RecordFields) {
			try {
				await this.append(ctx, fields);
			} catch (err) {
				this.logger.error(`Audit record lost (${fields.kind} ${fields.service ?? ""}.${fields.action ?? ""}, request ${fields.requestId ?? "-"}): ${(err as Error).message}`);
			}
		},

		/**
		 * Appends to the record's chain at seq = last + 1, where last is the newest of the tail
		 * record, the head and the anchor (so a removed newest record stays a visible gap). The
		 * unique key (chain, seq) lets one of several concurrent writers win; the others retry.
		 */
		append(this: Svc, ctx: Ctx, fields: RecordFields): Promise<AuditRecord> {
			const chain = chainOf(fields.companyId);
			return this.serialised(chain, async () => {
				for (let attempt = 1, failures = 0; ; attempt++) {
					try {
						const head = await ctx.call<ChainHead, { chain: string }>("logChain.open", { chain });
						const [tail] = (await this.findEntities(ctx, { query: { chain }, sort: ["-seq"], limit: 1 })) as unknown as AuditRecord[];
						let last = { seq: head.anchorSeq - 1, hash: head.anchorHash };
						if (head.headSeq > last.seq) last = { seq: head.headSeq, hash: head.headHash };
						if (tail && tail.seq > last.seq) last = { seq: tail.seq, hash: tail.hash };
						const unsealed = { ...fields, chain, seq: last.seq + 1, prevHash: last.hash };
						const record: AuditRecord = { ...unsealed, hash: recordHash(unsealed) };
						await this.createEntity(ctx, record as unknown as Doc);
						await ctx.call("logChain.advance", { chain, seq: record.seq, hash: record.hash });
						return record;
					} catch (err) {
						const conflict = (err as { code?: number }).code === 409;
						if (!conflict) failures++;
						if (attempt >= CONFLICT_ATTEMPTS || failures >= FAILURE_ATTEMPTS) throw err;
						// Spread the losers out a little so that they do not collide again at once.
						await new Promise(resolve => setTimeout(resolve, Math.random() * (conflict ? 5 * Math.min(attempt, 10) : 200 * failures)));
					}
				}
			});
		},

		/** One write at a time per chain on this node: the race for a seq is then only between nodes. */
		serialised<T>(this: Svc, chain: string, work: () => Promise<T>): Promise<T> {
			const previous = this.chainQueues.get(chain) ?? Promise.resolve();
			const next = previous.catch(() => undefined).then(work);
			this.chainQueues.set(chain, next);
			const forget = () => {
				if (this.chainQueues.get(chain) === next) this.chainQueues.delete(chain);
			};
			next.then(forget, forget);
			return next;
		},

		async listRecords(this: Svc, ctx: Ctx<ListParams>, kind: RecordKind, filters: Query): Promise<Page<Doc>> {
			const { page = 1, pageSize = 20, from, to, sort = "-at", companyId } = ctx.params;
			const range = timeRange(from, to);
			const tenant = this.tenantQuery(ctx, {}, companyId);
			const given = Object.fromEntries(Object.entries(filters).filter(([, v]) => v !== undefined));
			const query: Query = and({ ...tenant, ...given, ...range, kind }, dataScopeQuery(this.caller(ctx), { dept: "deptId", owner: "userId" }));
			const tieBreak = sort === "-at" ? "-seq" : "seq";
			return this.listEntities(ctx, { query, sort: [sort, tieBreak], page, pageSize });
		},

		/** Visits the records of a chain in seq order from `fromSeq` (up to `toSeq`), until `visit` answers false. */
		async eachRecord(this: Svc, ctx: Ctx, chain: string, fromSeq: number, toSeq: number | null, visit: (record: AuditRecord) => boolean) {
			for (let cursor = fromSeq; ;) {
				const seq: Query = toSeq === null ? { $gte: cursor } : { $gte: cursor, $lte: toSeq };
				const batch = (await this.findEntities(ctx, { query: { chain, seq }, sort: ["seq"], limit: BATCH })) as unknown as AuditRecord[];
				for (const record of batch) if (!visit(record)) return;
				if (batch.length < BATCH) return;
				cursor = batch[batch.length - 1].seq + 1;
			}
		},

		async verifyChain(this: Svc, ctx: Ctx, chain: string, head: ChainHead | null): Promise<ChainReport> {
			const fromSeq = head?.anchorSeq ?? 1;
			const verifier = new ChainVerifier(chain, head);
			await this.eachRecord(ctx, chain, fromSeq, null, record => verifier.feed(record));
			const report = verifier.finish(await this.countEntities(ctx, { query: { chain, seq: { $gte: fromSeq } } }));
			if (report.intact || !head) return report;
			// A purge that moved the anchor meanwhile looks like missing records: look again at the new state.
			const now = await ctx.call<ChainHead | null, { chain: string }>("logChain.get", { chain });
			return now && now.anchorSeq !== head.anchorSeq ? this.verifyChain(ctx, chain, now) : report;
		},

		/** Chains that have records but no head (its row was removed): broken, and listed so. */
		async chainsWithoutHead(this: Svc, ctx: Ctx, known: string[]): Promise<string[]> {
			const found: string[] = [];
			for (let i = 0; i < 1000; i++) {
				const seen = [...known, ...found];
				const [orphan] = await this.findEntities(ctx, { query: seen.length ? { chain: { $nin: seen } } : {}, limit: 1 });
				if (!orphan) break;
				found.push(orphan.chain as string);
			}
			return found;
		},

		/**
		 * Removes the chain's records before the first one at or after `before`. The part removed
		 * is checked first: a broken chain is not purged, so the evidence stays for someone to see.
		 * The anchor moves before the records go, so verification holds at every moment.
		 */
		async purgeChain(this: Svc, ctx: Ctx, head: ChainHead, before: Date): Promise<PurgeReport> {
			const { chain, anchorSeq } = head;
			// Records below the anchor are left over from a purge that stopped half-way.
			let removed = await this.removeEntities(ctx, { chain, seq: { $lt: anchorSeq } });
			const kept = { chain, seq: { $gte: anchorSeq } };
			const [firstNew] = await this.findEntities(ctx, { query: { ...kept, at: { $gte: before } }, sort: ["seq"], limit: 1 });
			const [lastOld] = firstNew ? [] : await this.findEntities(ctx, { query: { ...kept, at: { $lt: before } }, sort: ["-seq"], limit: 1 });
			const keepFrom = firstNew ? (firstNew.seq as number) : lastOld ? (lastOld.seq as number) + 1 : anchorSeq;
			if (keepFrom <= anchorSeq) return { chain, removed };

			const verifier = new ChainVerifier(chain, { ...head, headSeq: 0 });
			let last: AuditRecord | null = null;
			await this.eachRecord(ctx, chain, anchorSeq, keepFrom - 1, record => {
				last = record;
				return verifier.feed(record);
			});
			const lastSeq = (last as AuditRecord | null)?.seq ?? anchorSeq - 1;
			if (!verifier.intact || lastSeq !== keepFrom - 1) {
				const report = verifier.finish(0);
				const problem = report.problem ?? `record ${lastSeq + 1} is missing`;
				this.logger.error(`Audit chain '${chain}' is broken (${problem}): retention leaves it as it is`);
				return { chain, removed, problem };
			}
			const { moved } = await ctx.call<{ moved: boolean }, object>("logChain.moveAnchor", {
				chain, expectedAnchorSeq: anchorSeq, anchorSeq: keepFrom, anchorHash: (last as unknown as AuditRecord).hash,
			});
			if (!moved) return { chain, removed }; // another replica purged it first
			removed += await this.removeEntities(ctx, { chain, seq: { $lt: keepFrom } });
			return { chain, removed, anchorSeq: keepFrom };
		},
	},

	created(this: Svc) {
		this.chainQueues = new Map();
		this.purgeTimer = null;
	},

	started(this: Svc) {
		// Every replica purges; the anchor's compare-and-set keeps them from doing it twice.
		this.purgeTimer = setInterval(() => {
			this.broker.call("log.purge", {}).catch(err => this.logger.warn(`Audit retention failed: ${(err as Error).message}`));
		}, PURGE_EVERY_MS);
		this.purgeTimer.unref();
	},

	async stopped(this: Svc) {
		if (this.purgeTimer) clearInterval(this.purgeTimer);
		// Records being written finish before the store closes.
		await Promise.allSettled([...this.chainQueues.values()]);
	},
});

export default LogService;
