import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { idParam } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";
import type { ConversationState } from "../../types/messaging";

/**
 * Each participant's view of a 1:1 conversation: how far the conversation goes (`lastSeq`) and
 * how far they have read (`readSeq`). Unread = lastSeq - readSeq, since sending a message also
 * marks everything up to it as read for the sender. Both only ever move forwards (compare-and-set).
 */
const ConversationEntity: EntityDefinition = {
	name: "chat_conversations",
	cached: false,
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		conversationId: { type: "string", required: true, max: 140 },
		userId: { type: "string", required: true, max: 64 },
		peerId: { type: "string", required: true, max: 64 },
		readSeq: { type: "integer", required: true },
		lastSeq: { type: "integer", required: true },
		lastMessageAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["userId", "peerId"], unique: true }, { fields: ["conversationId"] }, { fields: ["userId", "lastMessageAt"] }, { fields: ["companyId"] }],
};

const seqParam = { type: "number", integer: true, min: 0, max: Number.MAX_SAFE_INTEGER };

type Ctx<P = unknown> = Context<P>;
type Svc = DbMethods & { state(ctx: Ctx, userId: string, peerId: string): Promise<ConversationState | null>; advance(ctx: Ctx, query: Record<string, unknown>, field: "readSeq" | "lastSeq", seq: number, extra?: Record<string, unknown>): Promise<number> };

/** Internal to `chatmsg`: conversation positions per participant. */
const ChatConvService = serviceSchema({
	name: "chatconv",
	mixins: [DbMixin(ConversationEntity)],

	actions: {
		/** A message `seq` was stored: both sides' rows exist, the conversation reaches `seq`, and the sender has read it. */
		touch: {
			visibility: "public",
			params: { companyId: idParam, conversationId: { type: "string", max: 140 }, senderId: idParam, receiverId: idParam, seq: seqParam, at: { type: "date", convert: true } },
			async handler(this: Svc, ctx: Ctx<{ companyId: string; conversationId: string; senderId: string; receiverId: string; seq: number; at: Date }>) {
				const { companyId, conversationId, senderId, receiverId, seq, at } = ctx.params;
				// Both rows moved: the usual case, one query. Fewer: a row may be missing (a first message).
				if ((await this.advance(ctx, { conversationId }, "lastSeq", seq, { lastMessageAt: at })) < 2) {
					for (const [userId, peerId] of [[senderId, receiverId], [receiverId, senderId]]) {
						if (await this.state(ctx, userId, peerId)) continue;
						await this.createEntity(ctx, { companyId, conversationId, userId, peerId, readSeq: 0, lastSeq: 0, lastMessageAt: at }).catch(err => {
							if (err.code !== 409) throw err; // the other side's first message created it at the same time
						});
					}
					await this.advance(ctx, { conversationId }, "lastSeq", seq, { lastMessageAt: at });
				}
				await this.advance(ctx, { userId: senderId, peerId: receiverId }, "readSeq", seq);
				return true;
			},
		},

		/** The user has read up to `seq` (never backwards). Answers the state, and whether it moved. */
		read: {
			visibility: "public",
			params: { userId: idParam, peerId: idParam, seq: seqParam },
			async handler(this: Svc, ctx: Ctx<{ userId: string; peerId: string; seq: number }>) {
				const { userId, peerId, seq } = ctx.params;
				const moved = await this.advance(ctx, { userId, peerId }, "readSeq", seq);
				return { moved: moved > 0, state: await this.state(ctx, userId, peerId) };
			},
		},

		get: {
			visibility: "public",
			params: { userId: idParam, peerId: idParam },
			handler(this: Svc, ctx: Ctx<{ userId: string; peerId: string }>) {
				return this.state(ctx, ctx.params.userId, ctx.params.peerId);
			},
		},

		/** The user's conversations, most recent first. */
		list: {
			visibility: "public",
			params: { userId: idParam, limit: { type: "number", integer: true, min: 1, max: 100 }, offset: { type: "number", integer: true, min: 0 } },
			handler(this: Svc, ctx: Ctx<{ userId: string; limit: number; offset: number }>) {
				const { userId, limit, offset } = ctx.params;
				return this.findEntities(ctx, { query: { userId }, sort: ["-lastMessageAt"], limit, offset });
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		async state(this: Svc, ctx: Ctx, userId: string, peerId: string) {
			const [row] = await this.findEntities(ctx, { query: { userId, peerId }, limit: 1 });
			return (row as unknown as ConversationState) ?? null;
		},

		/** Sets `field` to `seq` where it is lower: concurrent updates can only move it forwards. */
		advance(this: Svc, ctx: Ctx, query: Record<string, unknown>, field: "readSeq" | "lastSeq", seq: number, extra: Record<string, unknown> = {}) {
			return this.updateEntities(ctx, { ...query, [field]: { $lt: seq } }, { [field]: seq, ...extra });
		},
	},
});

export default ChatConvService;
