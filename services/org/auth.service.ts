import { Errors, type Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { withAncestors, withDescendants } from "../../lib/org/dept-tree";
import { idListParam, idParam, listParams, pageOf, type ListQuery } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { AUTHENTICATED, CORE_APPS, type AuthenticatedUser, type DataScope, type PermissionDeclaration, type PermissionInfo } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition, Query } from "../../types/entity";
import { COMPANY_ADMIN_ROLE, MEMBER_ROLE, type Company, type CompanyLicense, type Dept, type EntityEvent, type Grant, type GrantSubject, type Role, type User } from "../../types/org";

const GrantEntity: EntityDefinition = {
	name: "grants",
	event: "grant",
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		subjectType: { type: "string", required: true, max: 10 },
		subjectId: { type: "string", required: true, max: 64 },
		app: { type: "string", max: 32 },
		permission: { type: "string", max: 100 },
		createdAt: { type: "date", required: true },
		createdBy: { type: "string", max: 64 },
	},
	indexes: [{ fields: ["companyId"] }, { fields: ["subjectType", "subjectId"] }],
};

const SUBJECTS: GrantSubject[] = ["company", "dept", "role", "user"];
const PLATFORM_ADMIN_ROLE = "platform-admin";

type Ctx<P = unknown> = Context<P, RequestMeta>;
type GrantInput = { subjectType: GrantSubject; subjectId: string; app?: string; permission?: string; companyId?: string };
type Svc = DbMethods &
	TenantMethods & {
		broker: Context["broker"];
		catalogueCache: PermissionInfo[] | null;
		catalogue(): PermissionInfo[];
		expand(codesOrApps: { app?: string | null; permission?: string | null }[]): Set<string>;
		rolePermissions(role: Role): string[];
		principal(ctx: Ctx, userId: string): Promise<AuthenticatedUser>;
		checkSubject(ctx: Ctx, companyId: string, type: GrantSubject, id: string): Promise<void>;
	};

const unauthorized = (message: string, type: string) => new Errors.MoleculerClientError(message, 401, type);

/**
 * Authorisation: the permission catalogue (assembled from what the running services declare),
 * grants of apps and permissions to a company, a department (and the departments below it),
 * a role or a user, and the principal — a user's effective roles, permissions, data scope and
 * read-only state — that `security` hands to the gateway, which caches it per node.
 */
const AuthService = serviceSchema({
	name: "auth",
	mixins: [DbMixin(GrantEntity), TenantMixin("Grant")],
	settings: {
		rest: "/",
		app: "org",
		permissions: {
			"grant:read": { description: "List grants" },
			"grant:write": { description: "Grant and revoke apps and permissions" },
		},
	},

	actions: {
		permissions: {
			rest: "GET /auth/permissions",
			permission: AUTHENTICATED,
			description: "The permission catalogue: every permission the running services declare.",
			params: { $$strict: true },
			handler(this: Svc) {
				return this.catalogue().map(({ code, service, app, description }) => ({ code, service, app, description }));
			},
		},

		listGrants: {
			rest: "GET /grants",
			permission: "grant:read",
			params: {
				$$strict: true,
				...listParams,
				subjectType: { type: "enum", values: SUBJECTS, optional: true },
				subjectId: { ...idParam, optional: true },
				companyId: companyIdParam,
			},
			handler(this: Svc, ctx: Ctx<ListQuery & { subjectType?: GrantSubject; subjectId?: string; companyId?: string }>) {
				const filter: Query = {};
				if (ctx.params.subjectType) filter.subjectType = ctx.params.subjectType;
				if (ctx.params.subjectId) filter.subjectId = ctx.params.subjectId;
				return this.listEntities(ctx, { query: this.tenantQuery(ctx, filter, ctx.params.companyId), ...pageOf(ctx.params, "-createdAt") });
			},
		},

		grant: {
			rest: "POST /grants",
			permission: "grant:write",
			description: "Grant an app (all its permissions) or one permission to a company, department, role or user.",
			params: {
				$$strict: true,
				subjectType: { type: "enum", values: SUBJECTS },
				subjectId: idParam,
				app: { type: "string", min: 1, max: 32, optional: true },
				permission: { type: "string", min: 1, max: 100, optional: true },
				companyId: companyIdParam,
			},
			async handler(this: Svc, ctx: Ctx<GrantInput>) {
				const { subjectType, subjectId, app, permission } = ctx.params;
				if (Boolean(app) === Boolean(permission)) throw clientError("Give either 'app' or 'permission'", 422, "VALIDATION_ERROR", { field: app ? "permission" : "app" });
				const companyId = this.companyOf(ctx, ctx.params.companyId ?? (this.caller(ctx).platformAdmin && subjectType === "company" ? subjectId : undefined));
				await this.checkSubject(ctx, companyId, subjectType, subjectId);

				const catalogue = this.catalogue();
				if (permission && !catalogue.some(p => p.code === permission)) throw clientError(`Unknown permission '${permission}'`, 422, "VALIDATION_ERROR", { field: "permission" });
				if (app && !catalogue.some(p => p.app === app)) throw clientError(`Unknown app '${app}'`, 422, "VALIDATION_ERROR", { field: "app" });
				const grantedApp = app ?? catalogue.find(p => p.code === permission)!.app;
				const license = await ctx.call<CompanyLicense, object>("license.forCompany", { companyId });
				if (license.features && !CORE_APPS.includes(grantedApp) && !license.features.includes(grantedApp))
					throw clientError(`The company's licence does not include the app '${grantedApp}'`, 403, "APP_NOT_LICENSED", { app: grantedApp });
				const caller = this.caller(ctx);
				if (!caller.platformAdmin) {
					const lacking = [...this.expand([{ app, permission }])].filter(p => !caller.permissions.includes(p));
					if (lacking.length) throw clientError("You cannot grant permissions you do not hold", 403, "FORBIDDEN", { permissions: lacking });
				}
				const duplicate = await this.countEntities(ctx, { query: { companyId, subjectType, subjectId, app: app ?? null, permission: permission ?? null } });
				if (duplicate) throw clientError("This grant exists already", 409, "CONFLICT");
				return this.createEntity(ctx, { companyId, subjectType, subjectId, app: app ?? null, permission: permission ?? null, createdAt: new Date(), createdBy: caller.id });
			},
		},

		revoke: {
			rest: "DELETE /grants/:id",
			permission: "grant:write",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				await this.getOwned(ctx, ctx.params.id);
				return this.removeEntity(ctx, ctx.params.id);
			},
		},

		// --- Internal

		/** The signed-in user behind `userId`, or 401 when that user may not be signed in. */
		principal: {
			visibility: "public",
			params: { userId: idParam },
			handler(this: Svc, ctx: Ctx<{ userId: string }>) {
				return this.principal(ctx, ctx.params.userId);
			},
		},

		catalogue: {
			visibility: "public",
			handler(this: Svc) {
				return this.catalogue();
			},
		},

		/** The permissions a set of roles gives (and which of them do not exist in the company). */
		rolePermissions: {
			visibility: "public",
			params: { companyId: idParam, roleIds: idListParam },
			async handler(this: Svc, ctx: Ctx<{ companyId: string; roleIds: string[] }>) {
				const roles = await ctx.call<Role[], object>("role.byIds", { companyId: ctx.params.companyId, ids: ctx.params.roleIds });
				const permissions = new Set(roles.flatMap(r => this.rolePermissions(r)));
				return { missing: ctx.params.roleIds.filter(id => !roles.some(r => r.id === id)), permissions: [...permissions] };
			},
		},
	},

	events: {
		/** The catalogue follows the services that come and go. */
		"$services.changed"(this: Svc) {
			this.catalogueCache = null;
		},
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
		/** Grants to a deleted user, role or department go with it. */
		async "user.user.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { subjectType: "user", subjectId: ctx.params.entity.id });
		},
		async "role.role.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { subjectType: "role", subjectId: ctx.params.entity.id });
		},
		async "dept.dept.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { subjectType: "dept", subjectId: ctx.params.entity.id });
		},
	},

	methods: {
		/** Every permission code the available services use, with the description and app they declare. */
		catalogue(this: Svc): PermissionInfo[] {
			if (this.catalogueCache) return this.catalogueCache;
			type ServiceInfo = { name: string; settings?: { app?: string; permissions?: Record<string, PermissionDeclaration> }; actions?: Record<string, { permission?: string; description?: string }> };
			const services = this.broker.registry.getServiceList({ onlyAvailable: true, skipInternal: true, withActions: true }) as unknown as ServiceInfo[];
			const byCode = new Map<string, PermissionInfo>();
			for (const service of services) {
				const app = service.settings?.app ?? "platform";
				for (const [code, decl] of Object.entries(service.settings?.permissions ?? {}))
					byCode.set(code, { code, service: service.name, app: decl.app ?? app, description: decl.description, member: Boolean(decl.member) });
				for (const action of Object.values(service.actions ?? {})) {
					const code = action.permission;
					if (code && !code.startsWith("$") && !byCode.has(code))
						byCode.set(code, { code, service: service.name, app, description: action.description ?? code, member: false });
				}
			}
			this.catalogueCache = [...byCode.values()].sort((a, b) => a.code.localeCompare(b.code));
			return this.catalogueCache;
		},

		/** Permission codes of grants: an app stands for every permission of that app. */
		expand(this: Svc, grants: { app?: string | null; permission?: string | null }[]) {
			const catalogue = this.catalogue();
			const out = new Set<string>();
			for (const g of grants) {
				if (g.permission) out.add(g.permission);
				if (g.app) for (const p of catalogue) if (p.app === g.app) out.add(p.code);
			}
			return out;
		},

		/** Built-in roles follow the catalogue: every permission for the administrator, the members' ones for members. */
		rolePermissions(this: Svc, role: Role) {
			if (!role.builtin) return role.permissions;
			const catalogue = this.catalogue();
			if (role.code === COMPANY_ADMIN_ROLE) return catalogue.filter(p => p.app !== "platform").map(p => p.code);
			if (role.code === MEMBER_ROLE) return catalogue.filter(p => p.member).map(p => p.code);
			return [];
		},

		async principal(this: Svc, ctx: Ctx, userId: string): Promise<AuthenticatedUser> {
			const user = await ctx.call<User | null, object>("user.byId", { id: userId });
			if (!user) throw unauthorized("The account no longer exists", "USER_NOT_FOUND");
			if (user.status !== "enabled") throw unauthorized("This account is disabled", "ACCOUNT_DISABLED");
			const base = { id: user.id, username: user.username, name: user.name, companyId: user.companyId, deptId: user.deptId };
			if (user.platformAdmin) {
				const all: DataScope = { all: true, deptIds: [], self: true };
				return { ...base, roles: [PLATFORM_ADMIN_ROLE], permissions: this.catalogue().map(p => p.code), platformAdmin: true, dataScope: all, readOnly: null, licenseExpiresAt: null };
			}

			const companyId = user.companyId!;
			const [company, license, roles, depts, grants] = await Promise.all([
				ctx.call<Company | null, object>("company.byId", { id: companyId }),
				ctx.call<CompanyLicense, object>("license.forCompany", { companyId }),
				ctx.call<Role[], object>("role.byIds", { companyId, ids: user.roleIds ?? [] }),
				ctx.call<Dept[], object>("dept.all", { companyId }),
				this.findEntities(ctx, { query: { companyId } }) as unknown as Promise<Grant[]>,
			]);
			if (!company || company.status !== "enabled") throw unauthorized("The account's company is disabled", "COMPANY_DISABLED");

			// Grants reach the user through the company, the user's department or any department above it, a role, or the user.
			const deptLine = user.deptId ? withAncestors(depts, user.deptId) : [];
			const applies = (g: Grant) =>
				g.subjectType === "company" ||
				(g.subjectType === "dept" && deptLine.includes(g.subjectId)) ||
				(g.subjectType === "role" && roles.some(r => r.id === g.subjectId)) ||
				(g.subjectType === "user" && g.subjectId === user.id);
			const granted = this.expand(grants.filter(applies));
			for (const role of roles) for (const p of this.rolePermissions(role)) granted.add(p);

			// Apps outside the licence are never granted.
			const appOf = new Map(this.catalogue().map(p => [p.code, p.app]));
			const licensed = (code: string) => {
				const app = appOf.get(code);
				return app !== "platform" && (!license.features || CORE_APPS.includes(app ?? "") || license.features.includes(app ?? ""));
			};
			const permissions = [...granted].filter(licensed).sort();

			// The widest of the roles' data scopes.
			const scope: DataScope = { all: false, deptIds: [], self: false };
			const deptIds = new Set<string>();
			for (const role of roles) {
				if (role.dataScope === "all") scope.all = true;
				else if (role.dataScope === "self") scope.self = true;
				else if (role.dataScope === "custom") role.deptIds.forEach(id => deptIds.add(id));
				else if (role.dataScope === "dept" && user.deptId) deptIds.add(user.deptId);
				else if (role.dataScope === "deptAndChildren" && user.deptId) withDescendants(depts, [user.deptId]).forEach(id => deptIds.add(id));
			}
			if (!scope.all && deptIds.size === 0) scope.self = true;
			scope.deptIds = scope.all ? [] : [...deptIds];

			// Read-only follows from the expiry date at each check (lib/access.ts), so a cached principal turns read-only on time.
			const licenseExpiresAt = license.licensed ? license.expiresAt : null;
			return { ...base, roles: roles.map(r => r.code), permissions, platformAdmin: false, dataScope: scope, readOnly: null, licenseExpiresAt };
		},

		async checkSubject(this: Svc, ctx: Ctx, companyId: string, type: GrantSubject, id: string) {
			const notFound = () => clientError(`The ${type} '${id}' was not found`, 422, "VALIDATION_ERROR", { field: "subjectId", value: id });
			if (type === "company") {
				if (id !== companyId) throw notFound();
				return;
			}
			if (type === "dept") {
				const found = await ctx.call<string[], object>("dept.existing", { companyId, ids: [id] });
				if (!found.length) throw notFound();
			} else if (type === "role") {
				const found = await ctx.call<Role[], object>("role.byIds", { companyId, ids: [id] });
				if (!found.length) throw notFound();
			} else {
				const user = await ctx.call<User | null, object>("user.byId", { id });
				if (!user || user.companyId !== companyId) throw notFound();
			}
		},
	},

	created(this: Svc) {
		this.catalogueCache = null;
	},
});

export default AuthService;
