import { createHash, randomUUID } from "node:crypto";
import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { withDescendants } from "../../lib/org/dept-tree";
import { idListParam, idParam, listParams } from "../../lib/org/params";
import { push, room } from "../../lib/realtime/push";
import { internalContext, serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition, Query } from "../../types/entity";
import type { Dept, EntityEvent, Role } from "../../types/org";
import type { AppMessage, AppMessageCreated, AppMessageInput, AppMessageSender, AppMessageSent } from "../../types/messaging";

/**
 * Application and platform notifications to users, departments, roles or a whole company.
 *
 * Fan-out on write: one inbox row per recipient, holding the message and its read state, so a
 * user's inbox, unread list and "mark read" are single indexed queries on `userId`. The rows of a
 * message are written `pending` (invisible) and shown together by one `UPDATE … WHERE messageId`:
 * the stores have no transactions across rows, so a send that fails midway is removed again, and
 * one whose node died before that is swept after PENDING_GRACE_MS. Row ids are derived from the
 * message and the recipient, so writing a row twice (a retry) stores it once.
 */
const InboxEntity: EntityDefinition = {
	name: "app_messages",
	// Nothing here is cached: skip the cache-cleaning broadcast on each of the rows of a send.
	cached: false,
	// No `event`: DbMixin would emit one per inbox row; `appmsg.message.created` goes once per message (see send).
	fields: {
		messageId: { type: "string", required: true, max: 64 },
		companyId: { type: "string", required: true, max: 64 },
		userId: { type: "string", required: true, max: 64 },
		app: { type: "string", required: true, max: 32 },
		title: { type: "string", required: true, max: 200 },
		content: { type: "text", required: true },
		sender: { type: "json" },
		status: { type: "string", required: true, max: 10 },
		sentAt: { type: "date", required: true },
		readAt: { type: "date" },
	},
	indexes: [{ fields: ["userId", "readAt", "sentAt"] }, { fields: ["messageId"] }, { fields: ["companyId"] }, { fields: ["status", "sentAt"] }],
};

const MAX_TITLE = 200;
const MAX_CONTENT = 4000;
/** Rows written at once: a company-wide send must not take every connection of the node's pool. */
const INSERT_CONCURRENCY = 16;
/** Rooms per push event: a huge send goes out as several events of bounded size. */
const PUSH_ROOMS = 1000;
const PENDING_GRACE_MS = 60 * 60_000;
const SWEEP_EVERY_MS = 10 * 60_000;

const inputParams = {
	app: { type: "string", pattern: /^[a-z][a-z0-9-]{1,31}$/, messages: { stringPattern: "'app' must be 2-32 characters of a-z, 0-9 or '-', starting with a letter" } },
	title: { type: "string", trim: true, min: 1, max: MAX_TITLE },
	content: { type: "string", max: MAX_CONTENT },
	to: {
		type: "object",
		strict: true,
		props: {
			userIds: { ...idListParam, max: 1000, optional: true },
			deptIds: { ...idListParam, optional: true },
			roleIds: { ...idListParam, optional: true },
			company: { type: "boolean", optional: true },
		},
	},
};

interface AppMsgConfig extends Record<string, unknown> {
	/** Most recipients one message may reach. */
	maxRecipients: number;
}

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;
type Svc = DbMethods &
	TenantMethods & {
		config: AppMsgConfig;
		sweepTimer: NodeJS.Timeout | null;
		logger: { warn(...a: unknown[]): void };
		broker: Context["broker"];
		sendMessage(ctx: Ctx, companyId: string, input: AppMessageInput): Promise<AppMessageSent>;
		recipientsOf(ctx: Ctx, companyId: string, to: AppMessageInput["to"]): Promise<string[]>;
		writeRows(ctx: Ctx, rows: Doc[]): Promise<void>;
		view(row: Doc): AppMessage;
		sweepPending(): Promise<number>;
	};

const notFound = (id: string) => clientError(`App message '${id}' not found`, 404, "NOT_FOUND", { id });
const badTarget = (field: string, what: string, ids: string[]) =>
	clientError(`${what} '${ids[0]}' not found`, 422, "VALIDATION_ERROR", { field: `to.${field}`, value: ids });
const rowId = (messageId: string, userId: string) => createHash("sha256").update(`${messageId}\n${userId}`).digest("base64url").slice(0, 32);

const AppMsgService = serviceSchema({
	name: "appmsg",
	mixins: [DbMixin(InboxEntity), TenantMixin("App message"), ConfigMixin<AppMsgConfig>("appmsg", { maxRecipients: 10_000 })],
	settings: {
		rest: "/app-messages",
		app: "messaging",
		permissions: {
			"appmsg:send": { description: "Send app messages to users, departments, roles or the whole company" },
			"appmsg:read": { description: "Read my app messages and mark them read", member: true },
		},
	},

	actions: {
		create: {
			rest: "POST /",
			permission: "appmsg:send",
			// One row per recipient: a company-wide send may outlast the default request timeout.
			timeout: 60_000,
			description:
				"Sends an app message to the union of `to.userIds`, the users of `to.deptIds` (with their sub-departments), the users holding `to.roleIds`, or everyone (`to.company`); disabled users are left out. Answers the message id and how many received it.",
			params: { $$strict: true, ...inputParams, companyId: companyIdParam },
			handler(this: Svc, ctx: Ctx<AppMessageInput & { companyId?: string }>) {
				const { companyId, ...input } = ctx.params;
				return this.sendMessage(ctx, this.companyOf(ctx, companyId), input);
			},
		},

		list: {
			rest: "GET /",
			permission: "appmsg:read",
			description: "My app messages, newest first; `unread=true` only the unread ones, `unread=false` only the read ones.",
			params: { $$strict: true, page: listParams.page, pageSize: listParams.pageSize, unread: { type: "boolean", convert: true, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ page?: number; pageSize?: number; unread?: boolean }>) {
				const { page, pageSize, unread } = ctx.params;
				const query: Query = { userId: this.caller(ctx).id, status: "sent" };
				if (unread !== undefined) query.readAt = { $exists: !unread };
				const result = await this.listEntities(ctx, { query, sort: ["-sentAt"], page, pageSize });
				return { ...result, rows: result.rows.map(row => this.view(row)) };
			},
		},

		read: {
			rest: "POST /:id/read",
			permission: "appmsg:read",
			// A read receipt, not an operation worth an audit record.
			audit: false,
			idempotent: true,
			description: "Marks one of my app messages read (a second time changes nothing); another user's message is 404.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const [row] = await this.findEntities(ctx, { query: { messageId: ctx.params.id, userId: this.caller(ctx).id, status: "sent" }, limit: 1 });
				if (!row) throw notFound(ctx.params.id);
				if (row.readAt) return this.view(row);
				// Compare-and-set: of two marks racing, the first time stays.
				await this.updateEntities(ctx, { id: row.id, readAt: { $exists: false } }, { readAt: new Date() });
				return this.view((await this.getEntity(ctx, row.id as string)) ?? row);
			},
		},

		readAll: {
			rest: "POST /read-all",
			permission: "appmsg:read",
			audit: false,
			idempotent: true,
			description: "Marks all my unread app messages read; answers how many changed.",
			params: { $$strict: true },
			async handler(this: Svc, ctx: Ctx) {
				const updated = await this.updateEntities(ctx, { userId: this.caller(ctx).id, status: "sent", readAt: { $exists: false } }, { readAt: new Date() });
				return { updated };
			},
		},

		// --- Internal: the platform and apps (robots, alerts) send with it.

		send: {
			visibility: "public",
			timeout: 60_000,
			params: { $$strict: true, ...inputParams, companyId: idParam },
			handler(this: Svc, ctx: Ctx<AppMessageInput & { companyId: string }>) {
				const { companyId, ...input } = ctx.params;
				return this.sendMessage(ctx, companyId, input);
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},

		/** A deleted user's inbox goes with them. */
		async "user.user.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { userId: ctx.params.entity.id });
		},
	},

	methods: {
		async sendMessage(this: Svc, ctx: Ctx, companyId: string, input: AppMessageInput): Promise<AppMessageSent> {
			const recipients = await this.recipientsOf(ctx, companyId, input.to);
			const id = randomUUID();
			if (recipients.length === 0) return { id, recipients: 0 };

			const user = ctx.meta.user;
			const sender: AppMessageSender | null = user ? { id: user.id, username: user.username, name: user.name ?? null } : null;
			const sentAt = new Date();
			const message = { messageId: id, companyId, app: input.app, title: input.title, content: input.content, sender, sentAt, readAt: null };
			try {
				await this.writeRows(ctx, recipients.map(userId => ({ ...message, id: rowId(id, userId), userId, status: "pending" })));
				// One statement shows every row at once: no recipient sees a message others lack.
				await this.updateEntities(ctx, { messageId: id, status: "pending" }, { status: "sent" });
			} catch (err) {
				await this.removeEntities(ctx, { messageId: id }).catch(e => this.logger.warn(`App message ${id}: removing a failed send failed (swept later)`, e));
				throw err;
			}

			const view: AppMessage = { id, app: input.app, title: input.title, content: input.content, sentAt: sentAt.toISOString(), readAt: null, sender };
			const created: AppMessageCreated = { id, companyId, app: view.app, title: view.title, content: view.content, sentAt: view.sentAt, sender, recipients: recipients.length };
			const event: EntityEvent<AppMessageCreated> = { entity: created, user: user ? { id: user.id, username: user.username, companyId: user.companyId } : null };
			await ctx.emit("appmsg.message.created", event);
			// The inbox is the record; a push lost now is seen at the next list.
			try {
				for (let i = 0; i < recipients.length; i += PUSH_ROOMS)
					await push(ctx, { rooms: recipients.slice(i, i + PUSH_ROOMS).map(room.user), event: "app.message", data: view });
			} catch (err) {
				this.logger.warn(`App message ${id}: push failed`, err);
			}
			return { id, recipients: recipients.length };
		},

		/**
		 * The enabled users the targets name, each once. Every named user, department and role must
		 * be the company's (422 naming the first that is not, before anything is written).
		 */
		async recipientsOf(this: Svc, ctx: Ctx, companyId: string, to: AppMessageInput["to"]): Promise<string[]> {
			const userIds = to.userIds ?? [];
			const deptIds = to.deptIds ?? [];
			const roleIds = to.roleIds ?? [];
			if (!userIds.length && !deptIds.length && !roleIds.length && to.company !== true)
				throw clientError("Name at least one recipient: to.userIds, to.deptIds, to.roleIds or to.company", 422, "VALIDATION_ERROR", { field: "to" });

			if (userIds.length) {
				const found = new Set(await ctx.call<string[], object>("user.idsOf", { companyId, ids: userIds }));
				const missing = userIds.filter(u => !found.has(u));
				if (missing.length) throw badTarget("userIds", "User", missing);
			}
			let allDepts: string[] = [];
			if (deptIds.length) {
				const depts = await ctx.call<Dept[], object>("dept.all", { companyId });
				const known = new Set(depts.map(d => d.id));
				const missing = deptIds.filter(d => !known.has(d));
				if (missing.length) throw badTarget("deptIds", "Department", missing);
				allDepts = withDescendants(depts, deptIds);
			}
			if (roleIds.length) {
				const found = new Set((await ctx.call<Role[], object>("role.byIds", { companyId, ids: roleIds })).map(r => r.id));
				const missing = roleIds.filter(r => !found.has(r));
				if (missing.length) throw badTarget("roleIds", "Role", missing);
			}

			const max = Math.max(1, Number(this.config.maxRecipients) || 10_000);
			// One past the cap is enough to know it is passed, without reading a huge company.
			const ids = await ctx.call<string[], object>("user.idsOf", {
				companyId, ids: userIds, deptIds: allDepts, roleIds, all: to.company === true, status: "enabled", limit: max + 1,
			});
			if (ids.length > max)
				throw clientError(`A message may reach at most ${max} recipients; these targets name more`, 422, "TOO_MANY_RECIPIENTS", { field: "to", max });
			return ids;
		},

		/** Writes the rows a few at a time; a row already there (a retried write that had landed) counts as written. */
		async writeRows(this: Svc, ctx: Ctx, rows: Doc[]) {
			const writeOne = async (row: Doc, attempt = 1): Promise<void> => {
				try {
					await this.createEntity(ctx, row);
				} catch (err) {
					if ((err as { code?: number }).code === 409) return;
					if (attempt >= 2) throw err;
					await writeOne(row, attempt + 1);
				}
			};
			for (let i = 0; i < rows.length; i += INSERT_CONCURRENCY) {
				// allSettled: nothing may still be writing when a failed send is removed.
				const results = await Promise.allSettled(rows.slice(i, i + INSERT_CONCURRENCY).map(row => writeOne(row)));
				const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
				if (failed) throw failed.reason;
			}
		},

		view(row: Doc): AppMessage {
			const { messageId, app, title, content, sentAt, readAt, sender } = row as Record<string, never>;
			return { id: messageId, app, title, content, sentAt, readAt, sender };
		},

		/** Removes the rows of sends that never completed (their node died between writing and showing them). */
		sweepPending(this: Svc) {
			return this.removeEntities(internalContext<Ctx>(this.broker), { status: "pending", sentAt: { $lt: new Date(Date.now() - PENDING_GRACE_MS) } });
		},
	},

	created(this: Svc) {
		this.sweepTimer = null;
	},

	started(this: Svc) {
		this.sweepTimer = setInterval(() => this.sweepPending().catch(err => this.logger.warn("Sweeping unfinished app messages failed", err)), SWEEP_EVERY_MS);
		this.sweepTimer.unref();
	},

	stopped(this: Svc) {
		if (this.sweepTimer) clearInterval(this.sweepTimer);
	},
});

export default AppMsgService;
