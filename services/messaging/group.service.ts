import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { TenantMixin, type TenantMethods } from "../../mixins/tenant.mixin";
import { idListParam, idParam, nameParam } from "../../lib/org/params";
import { changeRooms, push, room } from "../../lib/realtime/push";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { companyMember, requireRole, type CompanyMember, type GroupAccess } from "../../lib/messaging/members";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";
import type { Group, GroupMember, GroupMemberEvent, GroupRole } from "../../types/messaging";

const GroupEntity: EntityDefinition = {
	name: "groups",
	event: "group",
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		name: { type: "string", required: true, max: 100 },
		ownerId: { type: "string", required: true, max: 64 },
		lastSeq: { type: "integer", required: true },
		lastMessageAt: { type: "date" },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["companyId"] }],
};

interface GroupConfig extends Record<string, unknown> {
	/** Most members a group may have, the owner included. */
	maxMembers: number;
}

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Me = CompanyMember;
type Svc = DbMethods &
	TenantMethods & {
		config: GroupConfig;
		me(ctx: Ctx): Me;
		access(ctx: Ctx, groupId: string, userId: string, roles?: GroupRole[]): Promise<GroupAccess>;
		lookup(ctx: Ctx, groupId: string, userId: string, companyId: string): Promise<GroupAccess>;
		colleagues(ctx: Ctx, me: Me, userIds: string[]): Promise<void>;
		announce(ctx: Ctx, event: GroupMemberEvent, extraUserIds?: string[]): Promise<void>;
	};

const notFound = (id: string) => clientError(`Group '${id}' not found`, 404, "NOT_FOUND", { id });

/**
 * Groups of a company's people: an owner, administrators and members, within a size limit
 * (config namespace `groups`, `maxMembers`). Every membership change reaches the members'
 * devices (`group.member`) and moves their connections into or out of the group's room.
 * Messages are `groupmsg`'s; memberships and read positions `groupmember`'s.
 */
const GroupService = serviceSchema({
	name: "group",
	mixins: [DbMixin(GroupEntity), TenantMixin("Group"), ConfigMixin<GroupConfig>("groups", { maxMembers: 1000 })],
	settings: {
		rest: "/groups",
		app: "messaging",
		permissions: {
			"group:use": { description: "Create groups, and take part in the groups I belong to", member: true },
		},
	},

	actions: {
		list: {
			rest: "GET /",
			permission: "group:use",
			description: "The groups I belong to, most recently active first, with my role and how many messages I have not read.",
			params: { $$strict: true },
			async handler(this: Svc, ctx: Ctx) {
				const me = this.me(ctx);
				const memberships = await ctx.call<GroupMember[], object>("groupmember.ofUser", { userId: me.id });
				if (memberships.length === 0) return [];
				const groups = (await this.findEntities(ctx, { query: { id: { $in: memberships.map(m => m.groupId) } } })) as unknown as Group[];
				const byGroup = new Map(memberships.map(m => [m.groupId, m]));
				return groups
					.map(g => ({ ...g, role: byGroup.get(g.id)!.role, readSeq: byGroup.get(g.id)!.readSeq, unread: Math.max(0, g.lastSeq - byGroup.get(g.id)!.readSeq) }))
					.sort((a, b) => String(b.lastMessageAt ?? b.createdAt).localeCompare(String(a.lastMessageAt ?? a.createdAt)));
			},
		},

		create: {
			rest: "POST /",
			permission: "group:use",
			description: "Creates a group owned by me, with the people of my company in `memberIds`.",
			params: { $$strict: true, name: nameParam, memberIds: { ...idListParam, max: 1000 } },
			async handler(this: Svc, ctx: Ctx<{ name: string; memberIds: string[] }>) {
				const me = this.me(ctx);
				const memberIds = ctx.params.memberIds.filter(id => id !== me.id);
				if (memberIds.length + 1 > this.config.maxMembers)
					throw clientError(`A group has at most ${this.config.maxMembers} members`, 422, "GROUP_FULL", { maxMembers: this.config.maxMembers });
				await this.colleagues(ctx, me, memberIds);
				const now = new Date();
				const group = (await this.createEntity(ctx, { companyId: me.companyId, name: ctx.params.name, ownerId: me.id, lastSeq: 0, lastMessageAt: null, createdAt: now, updatedAt: now })) as unknown as Group;
				try {
					await ctx.call("groupmember.add", { companyId: me.companyId, groupId: group.id, userIds: [me.id], role: "owner" });
					await ctx.call("groupmember.add", { companyId: me.companyId, groupId: group.id, userIds: memberIds, role: "member" });
				} catch (err) {
					// No group without its members: undo, so that a failed create leaves nothing behind.
					await ctx.call("groupmember.remove", { groupId: group.id }).catch(() => undefined);
					await this.removeEntity(ctx, group.id);
					throw err;
				}
				await this.announce(ctx, { groupId: group.id, change: "created", userIds: [me.id, ...memberIds], name: group.name, by: me.id });
				return { ...group, role: "owner", memberCount: memberIds.length + 1 };
			},
		},

		get: {
			rest: "GET /:id",
			permission: "group:use",
			description: "A group I belong to, with its members and their roles.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const me = this.me(ctx);
				const { group, member } = await this.access(ctx, ctx.params.id, me.id);
				const members = await ctx.call<GroupMember[], object>("groupmember.list", { groupId: group.id });
				return { ...group, role: member.role, members: members.map(m => ({ userId: m.userId, role: m.role, joinedAt: m.joinedAt, readSeq: m.readSeq })) };
			},
		},

		update: {
			rest: "PUT /:id",
			permission: "group:use",
			description: "Renames a group (its owner or administrators).",
			params: { $$strict: true, id: idParam, name: nameParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; name: string }>) {
				const me = this.me(ctx);
				const { group } = await this.access(ctx, ctx.params.id, me.id, ["owner", "admin"]);
				const updated = await this.updateEntity(ctx, group.id, { name: ctx.params.name, updatedAt: new Date() });
				await this.announce(ctx, { groupId: group.id, change: "renamed", userIds: [], name: ctx.params.name, by: me.id });
				return updated;
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: "group:use",
			description: "Deletes a group with its messages (its owner).",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const me = this.me(ctx);
				const { group } = await this.access(ctx, ctx.params.id, me.id, ["owner"]);
				const members = await ctx.call<GroupMember[], object>("groupmember.list", { groupId: group.id });
				// Told while they are still in the room; then the room empties.
				await this.announce(ctx, { groupId: group.id, change: "deleted", userIds: [], by: me.id });
				await changeRooms(ctx, { userIds: members.map(m => m.userId), leave: [room.group(group.id)] });
				await ctx.call("groupmember.remove", { groupId: group.id });
				await this.removeEntity(ctx, group.id); // groupmsg drops the messages on group.group.removed
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		addMembers: {
			rest: "POST /:id/members",
			permission: "group:use",
			description: "Adds people of my company to a group (its owner or administrators), within the size limit.",
			params: { $$strict: true, id: idParam, userIds: { ...idListParam, min: 1, max: 1000 } },
			async handler(this: Svc, ctx: Ctx<{ id: string; userIds: string[] }>) {
				const me = this.me(ctx);
				const { group } = await this.access(ctx, ctx.params.id, me.id, ["owner", "admin"]);
				const members = new Set((await ctx.call<GroupMember[], object>("groupmember.list", { groupId: group.id })).map(m => m.userId));
				const newcomers = ctx.params.userIds.filter(id => !members.has(id));
				// The size first: a request past it costs no user lookups.
				if (members.size + newcomers.length > this.config.maxMembers)
					throw clientError(`A group has at most ${this.config.maxMembers} members (it has ${members.size})`, 422, "GROUP_FULL", { maxMembers: this.config.maxMembers, members: members.size });
				await this.colleagues(ctx, me, newcomers);
				const added = newcomers.length
					? await ctx.call<string[], object>("groupmember.add", { companyId: group.companyId, groupId: group.id, userIds: newcomers, role: "member", readSeq: group.lastSeq })
					: [];
				if (added.length) await this.announce(ctx, { groupId: group.id, change: "added", userIds: added, by: me.id });
				return { added };
			},
		},

		removeMember: {
			rest: "DELETE /:id/members/:userId",
			permission: "group:use",
			description: "Removes a member (the owner or an administrator; administrators only plain members), or leaves the group (myself). The owner cannot leave.",
			params: { $$strict: true, id: idParam, userId: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; userId: string }>) {
				const me = this.me(ctx);
				const { group, member: mine } = await this.access(ctx, ctx.params.id, me.id);
				const target = ctx.params.userId === me.id ? mine : await ctx.call<GroupMember | null, object>("groupmember.get", { groupId: group.id, userId: ctx.params.userId });
				if (!target) throw clientError(`User '${ctx.params.userId}' is not a member of the group`, 404, "NOT_FOUND", { id: ctx.params.userId });
				if (target.role === "owner") throw clientError("The owner cannot leave or be removed: delete the group instead", 409, "OWNER_STAYS");
				const leaving = target.userId === me.id;
				if (!leaving && !(mine.role === "owner" || (mine.role === "admin" && target.role === "member")))
					throw clientError("Only the owner, or an administrator for plain members, can remove a member", 403, "FORBIDDEN");
				await ctx.call("groupmember.remove", { groupId: group.id, userIds: [target.userId] });
				// The removed user's devices hear it too, then leave the room.
				await this.announce(ctx, { groupId: group.id, change: leaving ? "left" : "removed", userIds: [target.userId], by: me.id }, [target.userId]);
				await changeRooms(ctx, { userIds: [target.userId], leave: [room.group(group.id)] });
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		setRole: {
			rest: "PUT /:id/members/:userId",
			permission: "group:use",
			description: "Makes a member an administrator or a plain member again (the owner).",
			params: { $$strict: true, id: idParam, userId: idParam, role: { type: "enum", values: ["admin", "member"] } },
			async handler(this: Svc, ctx: Ctx<{ id: string; userId: string; role: "admin" | "member" }>) {
				const me = this.me(ctx);
				const { group } = await this.access(ctx, ctx.params.id, me.id, ["owner"]);
				const target = await ctx.call<GroupMember | null, object>("groupmember.get", { groupId: group.id, userId: ctx.params.userId });
				if (!target) throw clientError(`User '${ctx.params.userId}' is not a member of the group`, 404, "NOT_FOUND", { id: ctx.params.userId });
				if (target.role === "owner") throw clientError("The owner's role does not change", 409, "OWNER_STAYS");
				await ctx.call("groupmember.setRole", { groupId: group.id, userId: target.userId, role: ctx.params.role });
				await this.announce(ctx, { groupId: group.id, change: "role", userIds: [target.userId], role: ctx.params.role, by: me.id });
				return { userId: target.userId, role: ctx.params.role };
			},
		},

		// --- Internal (groupmsg)

		/** The group and the user's membership, or 404 when either is missing or of another company. */
		access: {
			visibility: "public",
			params: { groupId: idParam, userId: idParam, companyId: idParam },
			handler(this: Svc, ctx: Ctx<{ groupId: string; userId: string; companyId: string }>) {
				const { groupId, userId, companyId } = ctx.params;
				return this.lookup(ctx, groupId, userId, companyId);
			},
		},

		/** Message `seq` was stored: the group reaches it (never backwards). */
		reached: {
			visibility: "public",
			params: { groupId: idParam, seq: { type: "number", integer: true, min: 1 }, at: { type: "date", convert: true } },
			handler(this: Svc, ctx: Ctx<{ groupId: string; seq: number; at: Date }>) {
				const { groupId, seq, at } = ctx.params;
				return this.updateEntities(ctx, { id: groupId, lastSeq: { $lt: seq } }, { lastSeq: seq, lastMessageAt: at });
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		me(ctx: Ctx): Me {
			return companyMember(ctx, "Groups are for the people of a company");
		},

		/** A non-member sees no group at all (404); a member without the role gets 403. */
		async access(this: Svc, ctx: Ctx, groupId: string, userId: string, roles?: GroupRole[]) {
			return requireRole(await this.lookup(ctx, groupId, userId, this.me(ctx).companyId), roles);
		},

		/** The group and the user's membership, or 404 when either is missing or of another company. */
		async lookup(this: Svc, ctx: Ctx, groupId: string, userId: string, companyId: string): Promise<GroupAccess> {
			const group = await this.getEntity(ctx, groupId);
			if (!group || group.companyId !== companyId) throw notFound(groupId);
			const member = await ctx.call<GroupMember | null, object>("groupmember.get", { groupId: group.id, userId });
			if (!member) throw notFound(groupId);
			return { group: group as unknown as Group, member };
		},

		/** Every id is an enabled user of my company (one lookup), or 422 naming the ones that are not. */
		async colleagues(ctx: Ctx, me: Me, userIds: string[]) {
			if (userIds.length === 0) return;
			const found = new Set(await ctx.call<string[], object>("user.idsOf", { companyId: me.companyId, ids: userIds, status: "enabled" }));
			const bad = userIds.filter(id => !found.has(id));
			if (bad.length) throw clientError(`Not enabled users of your company: ${bad.slice(0, 20).join(", ")}`, 422, "VALIDATION_ERROR", { field: "userIds", invalid: bad.slice(0, 100) });
		},

		/** New members' connections join the room first, so the announcement reaches them too. */
		async announce(ctx: Ctx, event: GroupMemberEvent, extraUserIds: string[] = []) {
			if (event.change === "created" || event.change === "added") await changeRooms(ctx, { userIds: event.userIds, join: [room.group(event.groupId)] });
			await push(ctx, { rooms: [room.group(event.groupId), ...extraUserIds.map(room.user)], event: "group.member", data: event });
		},
	},
});

export default GroupService;
