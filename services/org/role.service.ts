import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { idListParam, idParam, listParams, nameParam, pageOf, type ListQuery } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import { COMPANY_ADMIN_ROLE, DATA_SCOPES, MEMBER_ROLE, type DataScopeKind, type EntityEvent, type Role } from "../../types/org";

const RoleEntity: EntityDefinition = {
	name: "roles",
	event: "role",
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		name: { type: "string", required: true, max: 100 },
		code: { type: "string", required: true, max: 64 },
		/** Custom roles: the permission codes. Built-in roles: empty, resolved by `auth` from the catalogue. */
		permissions: { type: "json", required: true },
		dataScope: { type: "string", required: true, max: 20 },
		deptIds: { type: "json", required: true },
		builtin: { type: "boolean", required: true },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["companyId", "code"], unique: true }, { fields: ["companyId"] }],
	searchFields: ["name", "code"],
};

const codeParam = {
	type: "string",
	min: 2,
	max: 64,
	pattern: /^[a-z][a-z0-9_-]*$/,
	messages: { stringPattern: "'code' must be lower-case letters, digits, '_' or '-', starting with a letter" },
};
const permissionsParam = { type: "array", items: { type: "string", min: 1, max: 100 }, max: 500, unique: true };
const roleParams = {
	name: nameParam,
	code: codeParam,
	permissions: permissionsParam,
	dataScope: { type: "enum", values: DATA_SCOPES },
	deptIds: { ...idListParam, optional: true },
};

type Ctx<P = unknown> = Context<P, RequestMeta>;
type RoleInput = { name: string; code: string; permissions: string[]; dataScope: DataScopeKind; deptIds?: string[] };
type Svc = DbMethods &
	TenantMethods & {
		checkRole(ctx: Ctx, companyId: string, role: Partial<RoleInput>): Promise<void>;
		seed(ctx: Ctx, companyId: string): Promise<Role[]>;
	};


const BUILTIN: Pick<Role, "code" | "name" | "dataScope">[] = [
	{ code: COMPANY_ADMIN_ROLE, name: "Company administrator", dataScope: "all" },
	{ code: MEMBER_ROLE, name: "Member", dataScope: "deptAndChildren" },
];

/**
 * Roles of each company: permissions and a data scope. Every company has two built-in roles:
 * `company-admin` (every permission the company's licence allows, scope `all`) and `member`
 * (the permissions services mark for members). Built-in roles keep their code and permissions.
 */
const RoleService = serviceSchema({
	name: "role",
	mixins: [DbMixin(RoleEntity), TenantMixin("Role")],
	settings: {
		rest: "/roles",
		app: "org",
		permissions: {
			"role:read": { description: "List and read roles", member: true },
			"role:write": { description: "Create, change and delete roles" },
		},
	},

	actions: {
		list: {
			rest: "GET /",
			permission: "role:read",
			params: { $$strict: true, ...listParams, companyId: companyIdParam },
			handler(this: Svc, ctx: Ctx<ListQuery & { companyId?: string }>) {
				return this.listEntities(ctx, { query: this.tenantQuery(ctx, {}, ctx.params.companyId), ...pageOf(ctx.params, "code") });
			},
		},

		get: {
			rest: "GET /:id",
			permission: "role:read",
			params: { $$strict: true, id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.getOwned(ctx, ctx.params.id);
			},
		},

		create: {
			rest: "POST /",
			permission: "role:write",
			params: { $$strict: true, ...roleParams, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<RoleInput & { companyId?: string }>) {
				const { companyId: requested, ...role } = ctx.params;
				const companyId = this.companyOf(ctx, requested);
				await this.checkRole(ctx, companyId, role);
				const now = new Date();
				return this.createEntity(ctx, { ...role, deptIds: role.deptIds ?? [], companyId, builtin: false, createdAt: now, updatedAt: now });
			},
		},

		update: {
			rest: "PUT /:id",
			permission: "role:write",
			description: "Change a role. Built-in roles keep their code and permissions.",
			params: {
				$$strict: true,
				id: idParam,
				name: { ...nameParam, optional: true },
				code: { ...codeParam, optional: true },
				permissions: { ...permissionsParam, optional: true },
				dataScope: { ...roleParams.dataScope, optional: true },
				deptIds: roleParams.deptIds,
			},
			async handler(this: Svc, ctx: Ctx<Partial<RoleInput> & { id: string }>) {
				const { id, ...changes } = ctx.params;
				const role = (await this.getOwned(ctx, id)) as unknown as Role;
				if (role.builtin && (changes.code !== undefined || changes.permissions !== undefined || (role.code === COMPANY_ADMIN_ROLE && changes.dataScope !== undefined)))
					throw clientError(`'${role.code}' is a built-in role: only its name (and a member's data scope) can change`, 409, "BUILTIN_ROLE");
				const merged = { ...role, ...changes };
				await this.checkRole(ctx, role.companyId, { ...changes, dataScope: merged.dataScope, deptIds: merged.deptIds });
				return this.updateEntity(ctx, id, { ...changes, deptIds: merged.dataScope === "custom" ? merged.deptIds : [], updatedAt: new Date() });
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: "role:write",
			description: "Delete a role; 409 for a built-in role or one still given to users.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const role = (await this.getOwned(ctx, ctx.params.id)) as unknown as Role;
				if (role.builtin) throw clientError(`'${role.code}' is a built-in role and cannot be deleted`, 409, "BUILTIN_ROLE");
				const users = await ctx.call<number, object>("user.count", { companyId: role.companyId, roleId: role.id });
				if (users > 0) throw clientError(`The role is given to ${users} user(s): take it from them first`, 409, "ROLE_IN_USE", { users });
				return this.removeEntity(ctx, role.id);
			},
		},

		// --- Internal

		/** Roles of a company by id (missing ones are left out). */
		byIds: {
			visibility: "public",
			params: { companyId: idParam, ids: { ...idListParam, max: 1000 } },
			cache: { keys: ["companyId", "ids"] },
			async handler(this: Svc, ctx: Ctx<{ companyId: string; ids: string[] }>) {
				if (ctx.params.ids.length === 0) return [];
				return this.findEntities(ctx, { query: { companyId: ctx.params.companyId, id: { $in: ctx.params.ids } } });
			},
		},

		/** The ids of a company's built-in roles by code. */
		builtinIds: {
			visibility: "public",
			params: { companyId: idParam },
			cache: { keys: ["companyId"] },
			async handler(this: Svc, ctx: Ctx<{ companyId: string }>) {
				const roles = await this.findEntities(ctx, { query: { companyId: ctx.params.companyId, builtin: true } });
				return Object.fromEntries(roles.map(r => [r.code, r.id]));
			},
		},

		/** The built-in roles of a new company. */
		seedCompany: {
			visibility: "public",
			params: { companyId: idParam },
			handler(this: Svc, ctx: Ctx<{ companyId: string }>) {
				return this.seed(ctx, ctx.params.companyId);
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		/**
		 * Permissions exist in the catalogue and the caller holds them (nobody hands out more than
		 * they have); a `custom` scope lists existing departments of the company.
		 */
		async checkRole(this: Svc, ctx: Ctx, companyId: string, role: Partial<RoleInput>) {
			if (role.permissions) {
				const catalogue = await ctx.call<{ code: string }[]>("auth.catalogue");
				const known = new Set(catalogue.map(p => p.code));
				const unknown = role.permissions.filter(p => !known.has(p));
				if (unknown.length) throw clientError(`Unknown permission '${unknown[0]}'`, 422, "VALIDATION_ERROR", { field: "permissions", value: unknown });
				const caller = this.caller(ctx);
				const lacking = caller.platformAdmin ? [] : role.permissions.filter(p => !caller.permissions.includes(p));
				if (lacking.length) throw clientError("You cannot give permissions you do not hold", 403, "FORBIDDEN", { permissions: lacking });
			}
			if (role.dataScope === "custom") {
				if (!role.deptIds?.length) throw clientError("A 'custom' data scope needs 'deptIds'", 422, "VALIDATION_ERROR", { field: "deptIds" });
				const found = await ctx.call<string[], object>("dept.existing", { companyId, ids: role.deptIds });
				const missing = role.deptIds.filter(id => !found.includes(id));
				if (missing.length) throw clientError(`Department '${missing[0]}' not found`, 422, "VALIDATION_ERROR", { field: "deptIds", value: missing });
			}
		},

		async seed(this: Svc, ctx: Ctx, companyId: string) {
			const now = new Date();
			const existing = await this.findEntities(ctx, { query: { companyId, builtin: true } });
			const roles = [...existing];
			for (const role of BUILTIN.filter(b => !existing.some(e => e.code === b.code)))
				roles.push(await this.createEntity(ctx, { ...role, companyId, permissions: [], deptIds: [], builtin: true, createdAt: now, updatedAt: now }));
			return roles;
		},
	},
});

export default RoleService;
