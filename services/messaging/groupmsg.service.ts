import { randomUUID } from "node:crypto";
import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { MessageLogMixin, type MessageLogMethods } from "../../mixins/message-log.mixin";
import { clientMsgIdParam, contentParam, messageContent, messageTypeParam, type MessageType } from "../../lib/messaging/content";
import { idParam } from "../../lib/org/params";
import { push, room } from "../../lib/realtime/push";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";
import type { Group, GroupMember, GroupMessage } from "../../types/messaging";
import { companyMember, myGroup, type CompanyMember, type GroupAccess } from "../../lib/messaging/members";

const MessageEntity: EntityDefinition = {
	name: "group_messages",
	event: "message",
	cached: false,
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		groupId: { type: "string", required: true, max: 64 },
		seq: { type: "integer", required: true },
		senderId: { type: "string", required: true, max: 64 },
		type: { type: "string", required: true, max: 16 },
		content: { type: "json" },
		mentions: { type: "json", required: true },
		mentionAll: { type: "boolean", required: true },
		clientMsgId: { type: "string", required: true, max: 64 },
		sentAt: { type: "date", required: true },
		recalledAt: { type: "date" },
		recalledBy: { type: "string", max: 64 },
	},
	indexes: [
		{ fields: ["groupId", "seq"], unique: true },
		{ fields: ["groupId", "senderId", "clientMsgId"], unique: true },
		{ fields: ["companyId"] },
	],
};

const seqParam = { type: "number", integer: true, min: 0, max: Number.MAX_SAFE_INTEGER, convert: true };
/** `@all` (administrators only) or member ids. */
const ALL = "all";
const RECALL_WINDOW_MS = 2 * 60_000;

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;
type Me = CompanyMember;
type Svc = DbMethods &
	MessageLogMethods & {
		me(ctx: Ctx): Me;
		access(ctx: Ctx, groupId: string): Promise<GroupAccess>;
		message(ctx: Ctx, group: Group, messageId: string): Promise<GroupMessage>;
		view(doc: Doc): GroupMessage;
	};

/**
 * Group messages: numbered per group (gap-free, whichever node stores them), deduplicated by
 * `clientMsgId`, pushed to the group's room; mentions (`all` for administrators), per-member
 * read positions with receipts (who has read a message), recall by the sender within 2 minutes
 * or by the group's administrators at any time. Only members read or post.
 */
const GroupMsgService = serviceSchema({
	name: "groupmsg",
	mixins: [DbMixin(MessageEntity), MessageLogMixin("groupId")],
	settings: { rest: "/groups", app: "messaging" },

	actions: {
		send: {
			rest: "POST /:id/messages",
			permission: "group:use",
			idempotent: true,
			audit: false,
			description: "Posts a message to a group I belong to; `mentions` lists member ids, or `all` (administrators). The same `clientMsgId` twice stores one message.",
			params: {
				$$strict: true,
				id: idParam,
				type: messageTypeParam,
				content: contentParam,
				clientMsgId: clientMsgIdParam,
				mentions: { type: "array", items: idParam, max: 100, unique: true, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ id: string; type: MessageType; content: unknown; clientMsgId: string; mentions?: string[] }>) {
				const me = this.me(ctx);
				const { group, member } = await this.access(ctx, ctx.params.id);
				const mentionAll = ctx.params.mentions?.includes(ALL) ?? false;
				if (mentionAll && member.role === "member") throw clientError("Only the group's owner or administrators can mention everyone", 403, "FORBIDDEN", { field: "mentions" });
				const mentions = (ctx.params.mentions ?? []).filter(id => id !== ALL);
				if (mentions.length) {
					const members = await ctx.call<GroupMember[], object>("groupmember.list", { groupId: group.id });
					const ids = new Set(members.map(m => m.userId));
					const strangers = mentions.filter(id => !ids.has(id));
					if (strangers.length) throw clientError(`Only members can be mentioned: ${strangers.join(", ")}`, 422, "VALIDATION_ERROR", { field: "mentions", invalid: strangers });
				}
				const content = await messageContent(ctx, ctx.params.type, ctx.params.content);
				const { message, duplicate } = await this.appendMessage(ctx, group.id, {
					companyId: me.companyId, senderId: me.id, type: ctx.params.type, content, mentions, mentionAll, clientMsgId: ctx.params.clientMsgId, sentAt: new Date(), recalledAt: null, recalledBy: null,
				});
				const view = this.view(message);
				// Both idempotent: a retry completes what a dead node left undone.
				await ctx.call("group.reached", { groupId: group.id, seq: view.seq, at: view.sentAt });
				await ctx.call("groupmember.read", { groupId: group.id, userId: me.id, seq: view.seq });
				if (!duplicate) await push(ctx, { rooms: [room.group(group.id)], event: "group.message", data: view });
				return { id: view.id, groupId: group.id, seq: view.seq, sentAt: view.sentAt, duplicate };
			},
		},

		/** A message from something that is not a member (a robot: `senderId` "robot:<id>"), for the services that vouch for it. */
		post: {
			visibility: "public",
			params: {
				companyId: idParam, groupId: idParam, senderId: { type: "string", min: 1, max: 80 }, type: { type: "enum", values: ["text", "markdown"] }, content: "string",
				/** The sender's own id of the message (e.g. a bus message's id): the same one twice stores and pushes one message. Default: a new one. */
				clientMsgId: { ...clientMsgIdParam, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ companyId: string; groupId: string; senderId: string; type: "text" | "markdown"; content: string; clientMsgId?: string }>) {
				const { companyId, groupId, senderId, type } = ctx.params;
				const content = await messageContent(ctx, type, ctx.params.content);
				const { message, duplicate } = await this.appendMessage(ctx, groupId, {
					companyId, senderId, type, content, mentions: [], mentionAll: false, clientMsgId: ctx.params.clientMsgId ?? randomUUID(), sentAt: new Date(), recalledAt: null, recalledBy: null,
				});
				const view = this.view(message);
				await ctx.call("group.reached", { groupId, seq: view.seq, at: view.sentAt });
				if (!duplicate) await push(ctx, { rooms: [room.group(groupId)], event: "group.message", data: view });
				return { id: view.id, groupId, seq: view.seq, sentAt: view.sentAt };
			},
		},

		messages: {
			rest: "GET /:id/messages",
			permission: "group:use",
			description: "A group's messages: after `afterSeq` (catching up, oldest first), before `beforeSeq` (history), or the newest; at most `limit`.",
			params: {
				$$strict: true,
				id: idParam,
				afterSeq: { ...seqParam, optional: true },
				beforeSeq: { ...seqParam, optional: true },
				limit: { type: "number", integer: true, min: 1, max: 200, convert: true, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ id: string; afterSeq?: number; beforeSeq?: number; limit?: number }>) {
				const { group } = await this.access(ctx, ctx.params.id);
				const { afterSeq, beforeSeq, limit = 50 } = ctx.params;
				const page = await this.messagePage(ctx, group.id, { afterSeq, beforeSeq, limit });
				return { groupId: group.id, rows: page.rows.map(m => this.view(m)), hasMore: page.hasMore };
			},
		},

		read: {
			rest: "POST /:id/read",
			permission: "group:use",
			audit: false,
			description: "I have read the group up to `seq`: the group's members' devices get the receipt.",
			params: { $$strict: true, id: idParam, seq: { ...seqParam, min: 1 } },
			async handler(this: Svc, ctx: Ctx<{ id: string; seq: number }>) {
				const me = this.me(ctx);
				const { group } = await this.access(ctx, ctx.params.id);
				if (ctx.params.seq > group.lastSeq)
					throw clientError(`The group has no message ${ctx.params.seq} (its last is ${group.lastSeq})`, 422, "VALIDATION_ERROR", { field: "seq", lastSeq: group.lastSeq });
				const moved = await ctx.call<boolean, object>("groupmember.read", { groupId: group.id, userId: me.id, seq: ctx.params.seq });
				const receipt = { groupId: group.id, userId: me.id, seq: ctx.params.seq, readAt: new Date().toISOString() };
				if (moved) await push(ctx, { rooms: [room.group(group.id)], event: "group.receipt", data: receipt });
				return { ...receipt, moved };
			},
		},

		receipts: {
			rest: "GET /:id/messages/:msgId/receipts",
			permission: "group:use",
			description: "Who of the group's members has read a message, and who has not yet.",
			params: { $$strict: true, id: idParam, msgId: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; msgId: string }>) {
				const { group } = await this.access(ctx, ctx.params.id);
				const message = await this.message(ctx, group, ctx.params.msgId);
				const members = await ctx.call<GroupMember[], object>("groupmember.list", { groupId: group.id });
				const others = members.filter(m => m.userId !== message.from);
				const readBy = others.filter(m => m.readSeq >= message.seq).map(m => ({ userId: m.userId, readAt: m.readAt }));
				const unreadBy = others.filter(m => m.readSeq < message.seq).map(m => m.userId);
				return { messageId: message.id, seq: message.seq, readCount: readBy.length, unreadCount: unreadBy.length, readBy, unreadBy };
			},
		},

		recall: {
			rest: "POST /:id/messages/:msgId/recall",
			permission: "group:use",
			description: "Takes a message back: its sender within 2 minutes, the group's owner or administrators at any time. Every member's device is told.",
			params: { $$strict: true, id: idParam, msgId: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; msgId: string }>) {
				const me = this.me(ctx);
				const { group, member } = await this.access(ctx, ctx.params.id);
				const message = await this.message(ctx, group, ctx.params.msgId);
				if (message.recalledAt) return message;
				const moderator = member.role !== "member";
				if (message.from !== me.id && !moderator) throw clientError("Only the sender or the group's administrators can recall a message", 403, "FORBIDDEN");
				if (!moderator && Date.now() - Date.parse(message.sentAt) > RECALL_WINDOW_MS)
					throw clientError("A message can be recalled within 2 minutes of sending", 409, "RECALL_WINDOW_PASSED", { sentAt: message.sentAt });
				const recalledAt = new Date();
				const changed = await this.updateEntities(ctx, { id: message.id, recalledAt: { $exists: false } }, { recalledAt, recalledBy: me.id, content: null });
				const recalled = { ...message, content: null, recalledAt: recalledAt.toISOString(), recalledBy: me.id };
				if (changed > 0) {
					await this.emitEntityEvent(ctx, "recalled", recalled as unknown as Doc);
					await push(ctx, { rooms: [room.group(group.id)], event: "group.recall", data: { id: message.id, groupId: group.id, seq: message.seq, recalledAt: recalled.recalledAt, recalledBy: me.id } });
				}
				return recalled;
			},
		},
	},

	events: {
		async "group.group.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { groupId: ctx.params.entity.id });
		},
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		me(ctx: Ctx): Me {
			return companyMember(ctx, "Groups are for the people of a company");
		},

		access(this: Svc, ctx: Ctx, groupId: string) {
			return myGroup(ctx, this.me(ctx), groupId);
		},

		async message(this: Svc, ctx: Ctx, group: Group, messageId: string) {
			const found = await this.getEntity(ctx, messageId);
			if (!found || found.groupId !== group.id) throw clientError(`Message '${messageId}' not found`, 404, "NOT_FOUND", { id: messageId });
			return this.view(found);
		},

		view(doc: Doc): GroupMessage {
			const date = (v: unknown) => (v == null ? null : new Date(v as string).toISOString());
			return {
				id: doc.id as string,
				groupId: doc.groupId as string,
				seq: Number(doc.seq),
				from: doc.senderId as string,
				type: doc.type as MessageType,
				content: doc.recalledAt ? null : ((doc.content ?? null) as GroupMessage["content"]),
				mentions: (doc.mentions as string[]) ?? [],
				mentionAll: Boolean(doc.mentionAll),
				clientMsgId: doc.clientMsgId as string,
				sentAt: date(doc.sentAt)!,
				recalledAt: date(doc.recalledAt),
				recalledBy: (doc.recalledBy as string) ?? null,
			};
		},
	},
});

export default GroupMsgService;
