import { randomBytes } from "node:crypto";
import { Errors, type Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { DEFAULT_PASSWORD_POLICY, hashPassword, passwordProblem, MAX_PASSWORD_LENGTH } from "../../lib/security/password";
import { ConfigMixin } from "../../mixins/config.mixin";
import { idListParam, idParam, listParams, nameParam, optionalId, pageOf, statusParam, type ListQuery } from "../../lib/org/params";
import { and, dataScopeQuery, scopeOf } from "../../lib/org/scope";
import { internalContext, serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition, Query } from "../../types/entity";
import { MEMBER_ROLE, type CompanyLicense, type EntityEvent, type Status, type UserCredentials } from "../../types/org";

const UserEntity: EntityDefinition = {
	name: "users",
	event: "user",
	fields: {
		companyId: { type: "string", max: 64 },
		username: { type: "string", required: true, max: 64 },
		name: { type: "string", required: true, max: 100 },
		email: { type: "string", max: 254 },
		phone: { type: "string", max: 32 },
		deptId: { type: "string", max: 64 },
		roleIds: { type: "json" },
		status: { type: "string", required: true, max: 10 },
		platformAdmin: { type: "boolean" },
		passwordHash: { type: "string", required: true, max: 255 },
		passwordChangedAt: { type: "date" },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["username"], unique: true }, { fields: ["companyId"] }, { fields: ["deptId"] }],
	searchFields: ["username", "name", "email", "phone"],
	hidden: ["passwordHash"],
};

const usernameParam = {
	type: "string",
	min: 3,
	max: 64,
	pattern: /^[A-Za-z0-9][A-Za-z0-9._@-]*$/,
	messages: { stringPattern: "'username' may hold letters, digits, '.', '_', '@' and '-', starting with a letter or digit" },
};
const passwordParam = { type: "string", min: 1, max: MAX_PASSWORD_LENGTH };
const profileParams = {
	email: { type: "email", max: 254, optional: true, nullable: true },
	phone: { type: "string", max: 32, pattern: /^\+?[0-9 ()-]{3,32}$/, optional: true, nullable: true, messages: { stringPattern: "'phone' must be digits, spaces, '(', ')', '-' and an optional leading '+'" } },
	deptId: { ...optionalId, nullable: true },
	roleIds: { ...idListParam, max: 20, optional: true },
};

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;
type Svc = DbMethods & TenantMethods & {
	config: { passwordMinLength: number };
	logger: { info(...a: unknown[]): void; warn(...a: unknown[]): void };
	broker: Context["broker"];
	inScope(ctx: Ctx, user: Doc): boolean;
	getVisible(ctx: Ctx, id: string): Promise<Doc>;
	checkDept(ctx: Ctx, companyId: string, deptId: string | null | undefined): Promise<void>;
	checkRoles(ctx: Ctx, companyId: string, roleIds: string[] | undefined): Promise<void>;
	checkPassword(password: string, username: string): void;
	insertUser(ctx: Ctx, companyId: string, params: NewUser): Promise<Doc>;
	ensurePlatformAdmin(): Promise<void>;
	revokeSessions(ctx: Ctx, userId: string, reason: string): Promise<void>;
	notSelf(ctx: Ctx, id: string, what: string): void;
};

interface NewUser {
	username: string;
	password: string;
	name: string;
	deptId?: string | null;
	roleIds?: string[];
	email?: string | null;
	phone?: string | null;
}


/** Users of every company, and the platform administrator. The password hash never leaves this service but to `security`. */
const UserService = serviceSchema({
	name: "user",
	// The password policy's length is the `security` namespace's, shared with password changes.
	mixins: [DbMixin(UserEntity), TenantMixin("User"), ConfigMixin("security", { passwordMinLength: DEFAULT_PASSWORD_POLICY.minLength })],
	settings: {
		rest: "/users",
		app: "org",
		permissions: {
			"user:read": { description: "List and read users within the data scope", member: true },
			"user:create": { description: "Create users" },
			"user:update": { description: "Change users' profiles, departments, roles and status" },
			"user:delete": { description: "Delete users" },
			"user:reset-password": { description: "Set another user's password" },
		},
	},

	actions: {
		list: {
			rest: "GET /",
			permission: "user:read",
			description: "Users of my company within my data scope; paged, sorted, searched.",
			params: {
				$$strict: true,
				...listParams,
				deptId: optionalId,
				status: { ...statusParam, optional: true },
				companyId: companyIdParam,
			},
			handler(this: Svc, ctx: Ctx<ListQuery & { deptId?: string; status?: Status; companyId?: string }>) {
				const { deptId, status, companyId } = ctx.params;
				const filter: Query = {};
				if (deptId) filter.deptId = deptId;
				if (status) filter.status = status;
				const query = and(this.tenantQuery(ctx, filter, companyId), dataScopeQuery(this.caller(ctx), { dept: "deptId", owner: "id" }));
				return this.listEntities(ctx, { query, ...pageOf(ctx.params, "username") });
			},
		},

		get: {
			rest: "GET /:id",
			permission: "user:read",
			params: { $$strict: true, id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.getVisible(ctx, ctx.params.id);
			},
		},

		create: {
			rest: "POST /",
			permission: "user:create",
			description: "Create a user in my company (refused with 403 beyond the licence's seats).",
			params: { $$strict: true, username: usernameParam, password: passwordParam, name: nameParam, ...profileParams, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<NewUser & { companyId?: string }>) {
				const companyId = this.companyOf(ctx, ctx.params.companyId);
				return this.insertUser(ctx, companyId, ctx.params);
			},
		},

		update: {
			rest: "PUT /:id",
			permission: "user:update",
			description: "Change a user's profile, department or roles.",
			params: { $$strict: true, id: idParam, name: { ...nameParam, optional: true }, ...profileParams },
			async handler(this: Svc, ctx: Ctx<{ id: string; name?: string; email?: string | null; phone?: string | null; deptId?: string | null; roleIds?: string[] }>) {
				const { id, ...changes } = ctx.params;
				const user = await this.getVisible(ctx, id);
				if (user.platformAdmin) throw clientError("The platform administrator is not changed here", 403, "FORBIDDEN");
				const companyId = user.companyId as string;
				if ("deptId" in changes) await this.checkDept(ctx, companyId, changes.deptId);
				if (changes.roleIds) await this.checkRoles(ctx, companyId, changes.roleIds);
				return this.updateEntity(ctx, id, { ...changes, updatedAt: new Date() });
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: "user:delete",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				this.notSelf(ctx, ctx.params.id, "delete");
				const user = await this.getVisible(ctx, ctx.params.id);
				if (user.platformAdmin) throw clientError("The platform administrator cannot be deleted", 403, "FORBIDDEN");
				await this.removeEntity(ctx, ctx.params.id);
				await this.revokeSessions(ctx, ctx.params.id, "user deleted");
				return user;
			},
		},

		setStatus: {
			rest: "PUT /:id/status",
			permission: "user:update",
			description: "Enable or disable a user; a disabled user's sessions end at once.",
			params: { $$strict: true, id: idParam, status: statusParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; status: Status }>) {
				this.notSelf(ctx, ctx.params.id, "change the status of");
				const user = await this.getVisible(ctx, ctx.params.id);
				if (user.platformAdmin) throw clientError("The platform administrator cannot be disabled", 403, "FORBIDDEN");
				const updated = await this.updateEntity(ctx, ctx.params.id, { status: ctx.params.status, updatedAt: new Date() });
				if (ctx.params.status === "disabled") await this.revokeSessions(ctx, ctx.params.id, "user disabled");
				return updated;
			},
		},

		resetPassword: {
			rest: "POST /:id/reset-password",
			permission: "user:reset-password",
			description: "Set a user's password (an administrator's reset); the user's sessions end.",
			params: { $$strict: true, id: idParam, password: passwordParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; password: string }>) {
				const user = await this.getVisible(ctx, ctx.params.id);
				if (user.platformAdmin && !this.caller(ctx).platformAdmin) throw clientError("User not found", 404, "NOT_FOUND");
				this.checkPassword(ctx.params.password, user.username as string);
				const now = new Date();
				await this.updateEntity(ctx, ctx.params.id, { passwordHash: await hashPassword(ctx.params.password), passwordChangedAt: now, updatedAt: now });
				await this.revokeSessions(ctx, ctx.params.id, "password reset");
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		// --- Internal: other services only.

		credentials: {
			visibility: "public",
			params: { username: { type: "string", max: 200 } },
			async handler(this: Svc, ctx: Ctx<{ username: string }>): Promise<UserCredentials | null> {
				const [user] = await this.findEntities(ctx, { query: { username: ctx.params.username }, limit: 1, withHidden: true });
				if (!user) return null;
				const { id, username, companyId, status, passwordHash, platformAdmin } = user as unknown as UserCredentials;
				return { id, username, companyId, status, passwordHash, platformAdmin: Boolean(platformAdmin) };
			},
		},

		setPasswordHash: {
			visibility: "public",
			params: { id: idParam, passwordHash: { type: "string", max: 255 } },
			async handler(this: Svc, ctx: Ctx<{ id: string; passwordHash: string }>) {
				const now = new Date();
				const updated = await this.updateEntity(ctx, ctx.params.id, { passwordHash: ctx.params.passwordHash, passwordChangedAt: now, updatedAt: now });
				if (!updated) throw clientError("User not found", 404, "NOT_FOUND");
				return true;
			},
		},

		/** A user by id whatever the caller (the `auth` service resolves principals with it). */
		byId: {
			visibility: "public",
			params: { id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.getEntity(ctx, ctx.params.id);
			},
		},

		/** How many users a company has (optionally in one department or holding one role). */
		count: {
			visibility: "public",
			params: { companyId: idParam, deptId: optionalId, roleId: optionalId },
			handler(this: Svc, ctx: Ctx<{ companyId: string; deptId?: string; roleId?: string }>) {
				const { companyId, deptId, roleId } = ctx.params;
				const query: Query = { companyId };
				if (deptId) query.deptId = deptId;
				// roleIds is kept as JSON text: a quoted id is an exact element match.
				if (roleId) query.roleIds = { $contains: JSON.stringify(roleId) };
				return this.countEntities(ctx, { query });
			},
		},

		/** A company's first administrator, created with the company (no seat check: the company is new). */
		createCompanyAdmin: {
			visibility: "public",
			params: { companyId: idParam, username: usernameParam, password: passwordParam, name: nameParam, roleIds: idListParam },
			handler(this: Svc, ctx: Ctx<NewUser & { companyId: string }>) {
				const { companyId, ...user } = ctx.params;
				this.checkPassword(user.password, user.username);
				return this.insertUser(ctx, companyId, user);
			},
		},

		/** Whether a username is free (the company service checks before it creates anything). */
		usernameFree: {
			visibility: "public",
			params: { username: { type: "string", max: 200 } },
			async handler(this: Svc, ctx: Ctx<{ username: string }>) {
				return (await this.countEntities(ctx, { query: { username: ctx.params.username } })) === 0;
			},
		},

		/** Ids of a company's users who are any of `ids`, in `deptIds` or hold `roleIds` (or all with `all`); optionally of one status, at most `limit` (app messages resolve recipients with it). */
		idsOf: {
			visibility: "public",
			params: {
				companyId: idParam,
				ids: { ...idListParam, max: 1000, optional: true },
				deptIds: { ...idListParam, max: 5000, optional: true },
				roleIds: { ...idListParam, optional: true },
				all: { type: "boolean", optional: true },
				status: { ...statusParam, optional: true },
				limit: { type: "number", integer: true, min: 1, optional: true },
			},
			async handler(this: Svc, ctx: Ctx<{ companyId: string; ids?: string[]; deptIds?: string[]; roleIds?: string[]; all?: boolean; status?: Status; limit?: number }>) {
				const { companyId, ids = [], deptIds = [], roleIds = [], all, status, limit } = ctx.params;
				const any: Query[] = [];
				if (ids.length) any.push({ id: { $in: ids } });
				if (deptIds.length) any.push({ deptId: { $in: deptIds } });
				for (const roleId of roleIds) any.push({ roleIds: { $contains: JSON.stringify(roleId) } });
				if (!all && any.length === 0) return [];
				const query: Query = { companyId, ...(status ? { status } : {}), ...(all ? {} : { $or: any }) };
				return (await this.findEntities(ctx, { query, limit })).map(u => u.id as string);
			},
		},
	},

	events: {
		/** A deleted company's users go with it (its sessions are revoked by `security`). */
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		/** Whether the caller's data scope covers `user`. */
		inScope(this: Svc, ctx: Ctx, user: Doc) {
			const caller = this.caller(ctx);
			const scope = scopeOf(caller);
			return scope.all || (scope.self && user.id === caller.id) || scope.deptIds.includes(user.deptId as string);
		},

		async getVisible(this: Svc, ctx: Ctx, id: string) {
			const user = await this.getOwned(ctx, id);
			if (!this.inScope(ctx, user)) throw clientError(`User '${id}' not found`, 404, "NOT_FOUND", { id });
			return user;
		},

		async checkDept(this: Svc, ctx: Ctx, companyId: string, deptId: string | null | undefined) {
			if (!deptId) return;
			const found = await ctx.call<string[], object>("dept.existing", { companyId, ids: [deptId] });
			if (found.length === 0) throw clientError(`Department '${deptId}' not found`, 422, "VALIDATION_ERROR", { field: "deptId", value: deptId });
		},

		/** The roles exist in the company, and the caller holds every permission they give (no escalation). */
		async checkRoles(this: Svc, ctx: Ctx, companyId: string, roleIds: string[] | undefined) {
			if (!roleIds?.length) return;
			const { missing, permissions } = await ctx.call<{ missing: string[]; permissions: string[] }, object>("auth.rolePermissions", { companyId, roleIds });
			if (missing.length) throw clientError(`Role '${missing[0]}' not found`, 422, "VALIDATION_ERROR", { field: "roleIds", value: missing });
			const caller = ctx.meta.user;
			if (!caller || caller.platformAdmin) return;
			const lacking = permissions.filter(p => !caller.permissions.includes(p));
			if (lacking.length)
				throw clientError("You cannot give a role with permissions you do not hold", 403, "FORBIDDEN", { permissions: lacking });
		},

		checkPassword(this: Svc, password: string, username: string) {
			const minLength = Number(this.config.passwordMinLength) || DEFAULT_PASSWORD_POLICY.minLength;
			const problem = passwordProblem(password, username, { minLength });
			if (problem) throw clientError(problem, 422, "WEAK_PASSWORD", { field: "password" });
		},

		async insertUser(this: Svc, ctx: Ctx, companyId: string, params: NewUser) {
			this.checkPassword(params.password, params.username);
			if ((await this.countEntities(ctx, { query: { username: params.username } })) > 0)
				throw clientError(`The username '${params.username}' is taken`, 409, "USERNAME_TAKEN", { field: "username" });
			await this.checkDept(ctx, companyId, params.deptId);
			await this.checkRoles(ctx, companyId, params.roleIds);
			// A user given no role is a member.
			const roleIds = params.roleIds?.length ? params.roleIds : [(await ctx.call<Record<string, string>, object>("role.builtinIds", { companyId }))[MEMBER_ROLE]].filter(Boolean);

			const license = await ctx.call<CompanyLicense, object>("license.forCompany", { companyId });
			const seatsFull = async () => (await this.countEntities(ctx, { query: { companyId } })) > license.seats;
			const seatsError = () =>
				clientError(`The company's licence allows ${license.seats} users; all seats are taken`, 403, "SEATS_EXHAUSTED", { seats: license.seats });
			if ((await this.countEntities(ctx, { query: { companyId } })) >= license.seats) throw seatsError();

			const now = new Date();
			const user = await this.createEntity(ctx, {
				companyId,
				username: params.username,
				name: params.name,
				email: params.email ?? null,
				phone: params.phone ?? null,
				deptId: params.deptId ?? null,
				roleIds,
				status: "enabled",
				platformAdmin: false,
				passwordHash: await hashPassword(params.password),
				passwordChangedAt: now,
				createdAt: now,
				updatedAt: now,
			});
			// Two creations racing for the last seat both pass the first check: the later one gives it back.
			if (await seatsFull()) {
				await this.removeEntity(ctx, user.id as string);
				throw seatsError();
			}
			return user;
		},

		notSelf(this: Svc, ctx: Ctx, id: string, what: string) {
			if (this.caller(ctx).id === id) throw clientError(`You cannot ${what} your own account`, 409, "SELF_CHANGE");
		},

		async revokeSessions(ctx: Ctx, userId: string, reason: string) {
			await ctx.call("security.revokeSessions", { userId, reason });
		},

		/** First start: the platform administrator, with ADMIN_PASSWORD or a generated password printed once. */
		async ensurePlatformAdmin(this: Svc) {
			const ctx = internalContext<Ctx>(this.broker);
			const settings = this.broker.options.platform!.security;
			if ((await this.countEntities(ctx, { query: { platformAdmin: true } })) > 0) return;
			const password = settings.adminPassword ?? randomBytes(12).toString("base64url");
			const now = new Date();
			try {
				await this.createEntity(ctx, {
					companyId: null,
					username: settings.adminUsername,
					name: "Platform administrator",
					roleIds: [],
					status: "enabled",
					platformAdmin: true,
					passwordHash: await hashPassword(password),
					passwordChangedAt: now,
					createdAt: now,
					updatedAt: now,
				});
			} catch (err) {
				// Another replica created it first.
				if ((err as Errors.MoleculerError).code === 409) return;
				throw err;
			}
			if (settings.adminPassword) this.logger.info(`Platform administrator '${settings.adminUsername}' created with ADMIN_PASSWORD`);
			else this.logger.warn(`Platform administrator '${settings.adminUsername}' created. Its password, shown only this once: ${password}`);
		},
	},

	async started(this: Svc) {
		await this.ensurePlatformAdmin();
	},
});

export default UserService;
