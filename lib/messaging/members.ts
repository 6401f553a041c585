/** Who may use messaging: the people of a company, and the members of a group. */
import type { Context } from "moleculer";
import { clientError } from "../errors";
import type { AuthenticatedUser } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { Group, GroupMember, GroupRole } from "../../types/messaging";

export type CompanyMember = AuthenticatedUser & { companyId: string };

export interface GroupAccess {
	group: Group;
	member: GroupMember;
}

/** The signed-in user, who must belong to a company (401, or 403 saying `why` a company is needed). */
export function companyMember(ctx: Context<unknown, RequestMeta>, why: string): CompanyMember {
	const user = ctx.meta.user;
	if (!user) throw clientError("Authentication required", 401, "UNAUTHORIZED");
	if (!user.companyId) throw clientError(`${why}; this account belongs to none`, 403, "FORBIDDEN");
	return user as CompanyMember;
}

/** 403 unless the member's role is one of `roles` (no `roles`: any member). */
export function requireRole(access: GroupAccess, roles?: GroupRole[], message?: string): GroupAccess {
	if (roles && !roles.includes(access.member.role))
		throw clientError(message ?? `Only the group's ${roles.join(" or ")} can do this`, 403, "FORBIDDEN", { role: access.member.role });
	return access;
}

/** The group and my membership: 404 for a group I am not in (it does not exist for me), then `requireRole`. */
export async function myGroup(ctx: Context, me: CompanyMember, groupId: string, roles?: GroupRole[], message?: string): Promise<GroupAccess> {
	const access = await ctx.call<GroupAccess, object>("group.access", { groupId, userId: me.id, companyId: me.companyId });
	return requireRole(access, roles, message);
}
