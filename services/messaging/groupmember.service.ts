import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { idListParam, idParam } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";
import type { GroupMember, GroupRole } from "../../types/messaging";

/**
 * Who is in which group, with which role, and how far each member has read (`readSeq`, only
 * ever forwards). Internal to `group` and `groupmsg`; the real-time channels ask it for the
 * groups a connection joins.
 */
const MemberEntity: EntityDefinition = {
	name: "group_members",
	cached: false,
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		groupId: { type: "string", required: true, max: 64 },
		userId: { type: "string", required: true, max: 64 },
		role: { type: "string", required: true, max: 16 },
		readSeq: { type: "integer", required: true },
		readAt: { type: "date" },
		joinedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["groupId", "userId"], unique: true }, { fields: ["userId"] }, { fields: ["groupId"] }, { fields: ["companyId"] }],
};

const roleParam = { type: "enum", values: ["owner", "admin", "member"] };
const seqParam = { type: "number", integer: true, min: 0, max: Number.MAX_SAFE_INTEGER };

type Ctx<P = unknown> = Context<P>;
type Svc = DbMethods;
const asMember = (doc: Record<string, unknown> | undefined) => (doc ?? null) as unknown as GroupMember | null;

const GroupMemberService = serviceSchema({
	name: "groupmember",
	mixins: [DbMixin(MemberEntity)],

	actions: {
		/** Adds the users not yet in the group; answers the ids added. */
		add: {
			visibility: "public",
			params: { companyId: idParam, groupId: idParam, userIds: { ...idListParam, max: 10_000 }, role: roleParam, readSeq: { ...seqParam, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ companyId: string; groupId: string; userIds: string[]; role: GroupRole; readSeq?: number }>) {
				const { companyId, groupId, userIds, role, readSeq = 0 } = ctx.params;
				const present = new Set((await this.findEntities(ctx, { query: { groupId, userId: { $in: userIds } } })).map(m => m.userId as string));
				const added: string[] = [];
				const joinedAt = new Date();
				for (const userId of userIds) {
					if (present.has(userId)) continue;
					// New members start at the group's current end: what was said before they joined is not unread.
					const stored = await this.createEntity(ctx, { companyId, groupId, userId, role, readSeq, readAt: null, joinedAt }).catch(err => {
						if (err.code === 409) return null; // added at the same moment by someone else
						throw err;
					});
					if (stored) added.push(userId);
				}
				return added;
			},
		},

		remove: {
			visibility: "public",
			params: { groupId: idParam, userIds: { ...idListParam, max: 10_000, optional: true } },
			handler(this: Svc, ctx: Ctx<{ groupId: string; userIds?: string[] }>) {
				const { groupId, userIds } = ctx.params;
				return this.removeEntities(ctx, { groupId, ...(userIds ? { userId: { $in: userIds } } : {}) });
			},
		},

		setRole: {
			visibility: "public",
			params: { groupId: idParam, userId: idParam, role: roleParam },
			handler(this: Svc, ctx: Ctx<{ groupId: string; userId: string; role: GroupRole }>) {
				const { groupId, userId, role } = ctx.params;
				return this.updateEntities(ctx, { groupId, userId }, { role });
			},
		},

		get: {
			visibility: "public",
			params: { groupId: idParam, userId: idParam },
			async handler(this: Svc, ctx: Ctx<{ groupId: string; userId: string }>) {
				const [row] = await this.findEntities(ctx, { query: ctx.params, limit: 1 });
				return asMember(row);
			},
		},

		list: {
			visibility: "public",
			params: { groupId: idParam },
			async handler(this: Svc, ctx: Ctx<{ groupId: string }>) {
				return (await this.findEntities(ctx, { query: { groupId: ctx.params.groupId }, sort: ["joinedAt"] })) as unknown as GroupMember[];
			},
		},

		count: {
			visibility: "public",
			params: { groupId: idParam },
			handler(this: Svc, ctx: Ctx<{ groupId: string }>) {
				return this.countEntities(ctx, { query: { groupId: ctx.params.groupId } });
			},
		},

		/** The user's memberships (the groups a real-time connection joins). */
		ofUser: {
			visibility: "public",
			params: { userId: idParam },
			async handler(this: Svc, ctx: Ctx<{ userId: string }>) {
				return (await this.findEntities(ctx, { query: { userId: ctx.params.userId } })) as unknown as GroupMember[];
			},
		},

		groupIdsOf: {
			visibility: "public",
			params: { userId: idParam },
			async handler(this: Svc, ctx: Ctx<{ userId: string }>) {
				return (await this.findEntities(ctx, { query: { userId: ctx.params.userId } })).map(m => m.groupId as string);
			},
		},

		/** The member has read up to `seq` (never backwards); answers whether the position moved. */
		read: {
			visibility: "public",
			params: { groupId: idParam, userId: idParam, seq: seqParam },
			async handler(this: Svc, ctx: Ctx<{ groupId: string; userId: string; seq: number }>) {
				const { groupId, userId, seq } = ctx.params;
				return (await this.updateEntities(ctx, { groupId, userId, readSeq: { $lt: seq } }, { readSeq: seq, readAt: new Date() })) > 0;
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
		async "user.user.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { userId: ctx.params.entity.id });
		},
	},
});

export default GroupMemberService;
