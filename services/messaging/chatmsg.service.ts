import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { MessageLogMixin, type MessageLogMethods } from "../../mixins/message-log.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { clientMsgIdParam, contentParam, messageContent, messageTypeParam, type MessageType } from "../../lib/messaging/content";
import { idParam } from "../../lib/org/params";
import { push, room } from "../../lib/realtime/push";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { companyMember, type CompanyMember } from "../../lib/messaging/members";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent, User } from "../../types/org";
import type { ChatMessage, ChatReceipt, ConversationState } from "../../types/messaging";

const MessageEntity: EntityDefinition = {
	name: "chat_messages",
	event: "message",
	// Messages are read by sequence, never through the cacher: skip the cache-cleaning broadcast on every send.
	cached: false,
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		conversationId: { type: "string", required: true, max: 140 },
		seq: { type: "integer", required: true },
		senderId: { type: "string", required: true, max: 64 },
		receiverId: { type: "string", required: true, max: 64 },
		type: { type: "string", required: true, max: 16 },
		content: { type: "json" },
		clientMsgId: { type: "string", required: true, max: 64 },
		sentAt: { type: "date", required: true },
		recalledAt: { type: "date" },
	},
	indexes: [
		{ fields: ["conversationId", "seq"], unique: true },
		{ fields: ["conversationId", "senderId", "clientMsgId"], unique: true },
		{ fields: ["companyId"] },
	],
};

const seqParam = { type: "number", integer: true, min: 0, max: Number.MAX_SAFE_INTEGER, convert: true };
const PAGE_DEFAULT = 50;
const PAGE_MAX = 200;

interface ChatConfig extends Record<string, unknown> {
	/** How long after sending the sender may recall a message. */
	recallWindowSeconds: number;
}

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;
type Svc = DbMethods &
	MessageLogMethods & {
		config: ChatConfig;
		caller(ctx: Ctx): CompanyMember;
		peerOf(ctx: Ctx, me: CompanyMember, peerId: string): Promise<User>;
		view(doc: Doc): ChatMessage;
	};

/** Both users' ids in a fixed order: one conversation per pair, whoever writes first. */
export function conversationIdOf(a: string, b: string): string {
	return a < b ? `${a}:${b}` : `${b}:${a}`;
}

/**
 * 1:1 chat between the users of a company. A message is stored (numbered in its conversation,
 * deduplicated by the client's `clientMsgId`) before it is acknowledged, then pushed to every
 * connected device of both users. A device that was away catches up with `afterSeq`.
 */
const ChatMsgService = serviceSchema({
	name: "chatmsg",
	mixins: [DbMixin(MessageEntity), MessageLogMixin("conversationId"), ConfigMixin<ChatConfig>("chat", { recallWindowSeconds: 120 })],
	settings: {
		rest: "/chat",
		app: "messaging",
		permissions: {
			"chat:use": { description: "Send and read 1:1 messages with the people of my company", member: true },
		},
	},

	actions: {
		send: {
			rest: "POST /messages",
			permission: "chat:use",
			// A retry stores nothing new (clientMsgId), so a call lost with a dead node is retried on another.
			idempotent: true,
			// The message is its own record; an operation log entry per message would copy every conversation into the audit log.
			audit: false,
			description: "Sends a 1:1 message; stored before the answer, then pushed to every device of both users. The same `clientMsgId` twice stores one message.",
			params: { $$strict: true, to: idParam, type: messageTypeParam, content: contentParam, clientMsgId: clientMsgIdParam },
			async handler(this: Svc, ctx: Ctx<{ to: string; type: MessageType; content: unknown; clientMsgId: string }>) {
				const me = this.caller(ctx);
				const { to, type, clientMsgId } = ctx.params;
				if (to === me.id) throw clientError("You cannot send a message to yourself", 422, "VALIDATION_ERROR", { field: "to" });
				const peer = await this.peerOf(ctx, me, to);
				if (peer.status !== "enabled") throw clientError(`User '${to}' is disabled`, 409, "USER_DISABLED", { field: "to" });
				const content = await messageContent(ctx, type, ctx.params.content);
				const conversationId = conversationIdOf(me.id, to);
				const sentAt = new Date();
				const { message, duplicate } = await this.appendMessage(ctx, conversationId, {
					companyId: me.companyId, senderId: me.id, receiverId: to, type, content, clientMsgId, sentAt, recalledAt: null,
				});
				const view = this.view(message);
				// Idempotent: a retry whose first attempt died before this point completes it.
				await ctx.call("chatconv.touch", { companyId: me.companyId, conversationId, senderId: me.id, receiverId: to, seq: view.seq, at: view.sentAt });
				// A retry was pushed the first time; devices that missed it catch up by sequence number.
				if (!duplicate) await push(ctx, { rooms: [room.user(me.id), room.user(to)], event: "chat.message", data: view });
				return { id: view.id, conversationId, seq: view.seq, sentAt: view.sentAt, duplicate };
			},
		},

		messages: {
			rest: "GET /messages",
			permission: "chat:use",
			description: "The conversation with `with`: after `afterSeq` (catching up, oldest first), before `beforeSeq` (history), or the newest; at most `limit`.",
			params: {
				$$strict: true,
				with: idParam,
				afterSeq: { ...seqParam, optional: true },
				beforeSeq: { ...seqParam, optional: true },
				limit: { type: "number", integer: true, min: 1, max: PAGE_MAX, convert: true, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ with: string; afterSeq?: number; beforeSeq?: number; limit?: number }>) {
				const me = this.caller(ctx);
				await this.peerOf(ctx, me, ctx.params.with);
				const conversationId = conversationIdOf(me.id, ctx.params.with);
				const { afterSeq, beforeSeq, limit = PAGE_DEFAULT } = ctx.params;
				const page = await this.messagePage(ctx, conversationId, { afterSeq, beforeSeq, limit });
				return { conversationId, rows: page.rows.map(m => this.view(m)), hasMore: page.hasMore };
			},
		},

		conversations: {
			rest: "GET /conversations",
			permission: "chat:use",
			description: "My conversations, most recent first, with the peer, the last message and how many messages I have not read.",
			params: {
				$$strict: true,
				limit: { type: "number", integer: true, min: 1, max: 100, convert: true, optional: true },
				offset: { type: "number", integer: true, min: 0, max: 100_000, convert: true, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ limit?: number; offset?: number }>) {
				const me = this.caller(ctx);
				const states = await ctx.call<ConversationState[], object>("chatconv.list", { userId: me.id, limit: ctx.params.limit ?? 50, offset: ctx.params.offset ?? 0 });
				if (states.length === 0) return [];
				const last = await this.findEntities(ctx, { query: { $or: states.map(s => ({ conversationId: s.conversationId, seq: s.lastSeq })) } });
				const lastById = new Map(last.map(m => [m.conversationId as string, this.view(m)]));
				const peers = await Promise.all(states.map(s => ctx.call<User | null, object>("user.byId", { id: s.peerId })));
				return states.map((s, i) => ({
					conversationId: s.conversationId,
					peer: peers[i] ? { id: peers[i]!.id, username: peers[i]!.username, name: peers[i]!.name } : { id: s.peerId, username: null, name: null },
					lastMessage: lastById.get(s.conversationId) ?? null,
					unread: Math.max(0, s.lastSeq - s.readSeq),
					readSeq: s.readSeq,
					lastSeq: s.lastSeq,
				}));
			},
		},

		read: {
			rest: "POST /read",
			permission: "chat:use",
			audit: false,
			description: "I have read the conversation with `with` up to `seq`: the read receipt goes to both users' devices.",
			params: { $$strict: true, with: idParam, seq: { ...seqParam, min: 1 } },
			async handler(this: Svc, ctx: Ctx<{ with: string; seq: number }>) {
				const me = this.caller(ctx);
				const peerId = ctx.params.with;
				await this.peerOf(ctx, me, peerId);
				const conversationId = conversationIdOf(me.id, peerId);
				const state = await ctx.call<ConversationState | null, object>("chatconv.get", { userId: me.id, peerId });
				const lastSeq = state?.lastSeq ?? 0;
				if (ctx.params.seq > lastSeq)
					throw clientError(`The conversation has no message ${ctx.params.seq} (its last is ${lastSeq})`, 422, "VALIDATION_ERROR", { field: "seq", lastSeq });
				const { moved, state: after } = await ctx.call<{ moved: boolean; state: ConversationState }, object>("chatconv.read", { userId: me.id, peerId, seq: ctx.params.seq });
				const receipt: ChatReceipt = { conversationId, userId: me.id, seq: after.readSeq, readAt: new Date().toISOString() };
				if (moved) await push(ctx, { rooms: [room.user(me.id), room.user(peerId)], event: "chat.receipt", data: receipt });
				return { ...receipt, unread: Math.max(0, after.lastSeq - after.readSeq) };
			},
		},

		recall: {
			rest: "POST /messages/:id/recall",
			permission: "chat:use",
			description: "The sender takes a message back within the recall window (2 minutes by default); both users' devices are told.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const me = this.caller(ctx);
				const found = await this.getEntity(ctx, ctx.params.id);
				if (!found || found.companyId !== me.companyId || (found.senderId !== me.id && found.receiverId !== me.id))
					throw clientError(`Message '${ctx.params.id}' not found`, 404, "NOT_FOUND", { id: ctx.params.id });
				const message = this.view(found);
				if (message.from !== me.id) throw clientError("Only the sender can recall a message", 403, "FORBIDDEN");
				if (message.recalledAt) return message;
				const windowMs = this.config.recallWindowSeconds * 1000;
				if (Date.now() - Date.parse(message.sentAt) > windowMs)
					throw clientError(`A message can be recalled within ${this.config.recallWindowSeconds} seconds of sending`, 409, "RECALL_WINDOW_PASSED", { sentAt: message.sentAt });
				const recalledAt = new Date();
				// Compare-and-set: of two concurrent recalls only one pushes.
				const changed = await this.updateEntities(ctx, { id: message.id, recalledAt: { $exists: false } }, { recalledAt, content: null });
				const recalled = { ...message, content: null, recalledAt: recalledAt.toISOString() };
				if (changed > 0) {
					await this.emitEntityEvent(ctx, "recalled", { ...recalled } as unknown as Doc);
					await push(ctx, { rooms: [room.user(message.from), room.user(message.to)], event: "chat.recall", data: { id: message.id, conversationId: message.conversationId, seq: message.seq, recalledAt: recalled.recalledAt } });
				}
				return recalled;
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		caller(ctx: Ctx) {
			return companyMember(ctx, "Chat is between the people of a company");
		},

		/** A user of my company, or 404 (another company's users do not exist for me). */
		async peerOf(ctx: Ctx, me: CompanyMember, peerId: string) {
			const peer = await ctx.call<User | null, object>("user.byId", { id: peerId });
			if (!peer || peer.companyId !== me.companyId) throw clientError(`User '${peerId}' not found`, 404, "NOT_FOUND", { id: peerId });
			return peer;
		},

		view(doc: Doc): ChatMessage {
			const date = (v: unknown) => (v == null ? null : new Date(v as string).toISOString());
			return {
				id: doc.id as string,
				conversationId: doc.conversationId as string,
				seq: Number(doc.seq),
				from: doc.senderId as string,
				to: doc.receiverId as string,
				type: doc.type as MessageType,
				content: doc.recalledAt ? null : ((doc.content ?? null) as ChatMessage["content"]),
				clientMsgId: doc.clientMsgId as string,
				sentAt: date(doc.sentAt)!,
				recalledAt: date(doc.recalledAt),
			};
		},
	},
});

export default ChatMsgService;
