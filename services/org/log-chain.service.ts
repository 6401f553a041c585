import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { AuditChainEntity } from "../../lib/audit/record";
import { genesisHead, type ChainHead } from "../../lib/audit/chain";
import { serviceSchema } from "../../lib/service";

/**
 * The heads of the audit log's hash chains (one row per chain): the newest record's seq and
 * hash, and the retention anchor. The `log` service is the only caller; nothing is published.
 * Kept apart from the records so that removing the newest records of a chain is detected.
 */
const chainParam = { type: "string", min: 1, max: 64 };
const seqParam = { type: "number", integer: true, min: 1 };
const hashParam = { type: "string", pattern: /^[0-9a-f]{64}$/ };

type Svc = DbMethods & { headOf(ctx: Context, chain: string): Promise<ChainHead | null> };

const LogChainService = serviceSchema({
	name: "logChain",
	mixins: [DbMixin(AuditChainEntity)],
	settings: { app: "org" },

	actions: {
		get: {
			visibility: "public",
			description: "The head of a chain, or null when it has no records yet.",
			params: { $$strict: true, chain: chainParam },
			handler(this: Svc, ctx: Context<{ chain: string }>) {
				return this.headOf(ctx, ctx.params.chain);
			},
		},

		open: {
			visibility: "public",
			description: "The head of a chain, created at the genesis when missing.",
			params: { $$strict: true, chain: chainParam },
			async handler(this: Svc, ctx: Context<{ chain: string }>) {
				const { chain } = ctx.params;
				const head = await this.headOf(ctx, chain);
				if (head) return head;
				try {
					await this.createEntity(ctx, { ...genesisHead(chain), updatedAt: new Date() });
				} catch (err) {
					// Another writer opened the chain at the same moment: its head is the one.
					if ((err as { code?: number }).code !== 409) throw err;
				}
				return this.headOf(ctx, chain);
			},
		},

		list: {
			visibility: "public",
			description: "The heads of the named chains, or of every chain.",
			params: { $$strict: true, chains: { type: "array", items: chainParam, max: 1000, optional: true } },
			async handler(this: Svc, ctx: Context<{ chains?: string[] }>) {
				const query = ctx.params.chains ? { chain: { $in: ctx.params.chains } } : {};
				return (await this.findEntities(ctx, { query, sort: ["chain"] })).map(toHead);
			},
		},

		advance: {
			visibility: "public",
			description: "Moves the head forward to `seq` (never back: writers finish in any order).",
			params: { $$strict: true, chain: chainParam, seq: seqParam, hash: hashParam },
			async handler(this: Svc, ctx: Context<{ chain: string; seq: number; hash: string }>) {
				const { chain, seq, hash } = ctx.params;
				const changed = await this.updateEntities(ctx, { chain, headSeq: { $lt: seq } }, { headSeq: seq, headHash: hash, updatedAt: new Date() });
				return { advanced: changed > 0 };
			},
		},

		moveAnchor: {
			visibility: "public",
			description: "After retention: the chain now starts at `anchorSeq`. A compare-and-set on the anchor, so one purger of several wins.",
			params: { $$strict: true, chain: chainParam, expectedAnchorSeq: seqParam, anchorSeq: seqParam, anchorHash: hashParam },
			async handler(this: Svc, ctx: Context<{ chain: string; expectedAnchorSeq: number; anchorSeq: number; anchorHash: string }>) {
				const { chain, expectedAnchorSeq, anchorSeq, anchorHash } = ctx.params;
				const moved = await this.updateEntities(ctx, { chain, anchorSeq: expectedAnchorSeq }, { anchorSeq, anchorHash, updatedAt: new Date() });
				// Every record was purged: the head must not stay behind the anchor.
				if (moved > 0)
					await this.updateEntities(ctx, { chain, headSeq: { $lt: anchorSeq - 1 } }, { headSeq: anchorSeq - 1, headHash: anchorHash });
				return { moved: moved > 0 };
			},
		},
	},

	methods: {
		async headOf(this: Svc, ctx: Context, chain: string): Promise<ChainHead | null> {
			const [row] = await this.findEntities(ctx, { query: { chain }, limit: 1 });
			return row ? toHead(row) : null;
		},
	},
});

function toHead(row: Record<string, unknown>): ChainHead {
	return {
		chain: row.chain as string,
		headSeq: row.headSeq as number,
		headHash: row.headHash as string,
		anchorSeq: row.anchorSeq as number,
		anchorHash: row.anchorHash as string,
	};
}

export default LogChainService;
