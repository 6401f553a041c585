import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { idParam, listParams, nameParam, pageOf, statusParam, type ListQuery } from "../../lib/org/params";
import { MAX_PASSWORD_LENGTH } from "../../lib/security/password";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { PLATFORM_ADMIN } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import { COMPANY_ADMIN_ROLE, type Role, type Status } from "../../types/org";

const CompanyEntity: EntityDefinition = {
	name: "companies",
	event: "company",
	fields: {
		name: { type: "string", required: true, max: 100 },
		code: { type: "string", required: true, max: 64 },
		status: { type: "string", required: true, max: 10 },
		licenseKey: { type: "text" },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["code"], unique: true }],
	searchFields: ["name", "code"],
};

const codeParam = {
	type: "string",
	min: 2,
	max: 64,
	pattern: /^[a-z0-9][a-z0-9_-]*$/,
	messages: { stringPattern: "'code' must be lower-case letters, digits, '_' or '-'" },
};
const licenseKeyParam = { type: "string", min: 1, max: 8192, optional: true, nullable: true };

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;
type VerifyResult = { valid: boolean; expired?: boolean; reason?: string };
type AdminInput = { username: string; password: string; name: string };
type Svc = DbMethods & {
	logger: { warn(...a: unknown[]): void };
	getCompany(ctx: Ctx, id: string): Promise<Doc>;
	checkLicense(ctx: Ctx, key: string | null | undefined, companyId: string | null): Promise<void>;
	checkCodeFree(ctx: Ctx, code: string): Promise<void>;
};


/**
 * Tenants, managed by the platform administrator. Creating a company creates its built-in roles
 * and, when `admin` is given, its first administrator — all or nothing. A company is deleted only
 * once disabled; its records go with it (each service listens to `company.company.removed`),
 * its audit log stays.
 */
const CompanyService = serviceSchema({
	name: "company",
	mixins: [DbMixin(CompanyEntity)],
	settings: { rest: "/companies", app: "platform" },

	actions: {
		list: {
			rest: "GET /",
			permission: PLATFORM_ADMIN,
			params: { $$strict: true, ...listParams, status: { ...statusParam, optional: true } },
			handler(this: Svc, ctx: Ctx<ListQuery & { status?: Status }>) {
				return this.listEntities(ctx, { query: ctx.params.status ? { status: ctx.params.status } : {}, ...pageOf(ctx.params, "code") });
			},
		},

		get: {
			rest: "GET /:id",
			permission: PLATFORM_ADMIN,
			params: { $$strict: true, id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.getCompany(ctx, ctx.params.id);
			},
		},

		create: {
			rest: "POST /",
			permission: PLATFORM_ADMIN,
			description: "Create a company, its built-in roles and (with `admin`) its first administrator.",
			params: {
				$$strict: true,
				name: nameParam,
				code: codeParam,
				status: { ...statusParam, optional: true },
				licenseKey: licenseKeyParam,
				admin: {
					type: "object",
					optional: true,
					strict: true,
					props: { username: { type: "string", min: 3, max: 64 }, password: { type: "string", min: 1, max: MAX_PASSWORD_LENGTH }, name: nameParam },
				},
			},
			async handler(this: Svc, ctx: Ctx<{ name: string; code: string; status?: Status; licenseKey?: string | null; admin?: AdminInput }>) {
				const { admin, ...fields } = ctx.params;
				// Everything that can be refused is checked before anything is written.
				await this.checkCodeFree(ctx, fields.code);
				await this.checkLicense(ctx, fields.licenseKey, null);
				if (admin && !(await ctx.call<boolean, object>("user.usernameFree", { username: admin.username })))
					throw clientError(`The username '${admin.username}' is taken`, 409, "USERNAME_TAKEN", { field: "admin.username" });

				const now = new Date();
				const company = await this.createEntity(ctx, { ...fields, status: fields.status ?? "enabled", licenseKey: fields.licenseKey ?? null, createdAt: now, updatedAt: now });
				try {
					const roles = await ctx.call<Role[], object>("role.seedCompany", { companyId: company.id });
					if (admin) {
						const adminRole = roles.find(r => r.code === COMPANY_ADMIN_ROLE)!;
						const user = await ctx.call<Doc, object>("user.createCompanyAdmin", { companyId: company.id, ...admin, roleIds: [adminRole.id] });
						return { ...company, admin: user };
					}
					return company;
				} catch (err) {
					// All or nothing: the company and what was made for it go (the removed event cleans up its roles).
					await this.removeEntity(ctx, company.id as string).catch(e => this.logger.warn("Could not roll back a half-created company", e));
					throw err;
				}
			},
		},

		update: {
			rest: "PUT /:id",
			permission: PLATFORM_ADMIN,
			description: "Rename, enable/disable (a disabled company's users are signed out and cannot sign in) or change the licence.",
			params: { $$strict: true, id: idParam, name: { ...nameParam, optional: true }, code: { ...codeParam, optional: true }, status: { ...statusParam, optional: true }, licenseKey: licenseKeyParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; name?: string; code?: string; status?: Status; licenseKey?: string | null }>) {
				const { id, ...changes } = ctx.params;
				const company = await this.getCompany(ctx, id);
				if (changes.code && changes.code !== company.code) await this.checkCodeFree(ctx, changes.code);
				if (changes.licenseKey) await this.checkLicense(ctx, changes.licenseKey, id);
				const updated = await this.updateEntity(ctx, id, { ...changes, updatedAt: new Date() });
				if (changes.status === "disabled") await ctx.call("security.revokeSessions", { companyId: id, reason: "company disabled" });
				return updated;
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: PLATFORM_ADMIN,
			description: "Delete a disabled company and its users, departments, roles, grants and dictionaries.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const company = await this.getCompany(ctx, ctx.params.id);
				if (company.status !== "disabled") throw clientError("Disable the company before deleting it", 409, "COMPANY_ENABLED");
				await ctx.call("security.revokeSessions", { companyId: company.id, reason: "company deleted" });
				return this.removeEntity(ctx, ctx.params.id);
			},
		},

		// --- Internal

		byId: {
			visibility: "public",
			params: { id: idParam },
			cache: { keys: ["id"] },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.getEntity(ctx, ctx.params.id);
			},
		},

		licenseKey: {
			visibility: "public",
			params: { companyId: idParam },
			async handler(this: Svc, ctx: Ctx<{ companyId: string }>) {
				const company = await this.getCompany(ctx, ctx.params.companyId);
				return { licenseKey: company.licenseKey ?? null };
			},
		},
	},

	methods: {
		async getCompany(this: Svc, ctx: Ctx, id: string) {
			const company = await this.getEntity(ctx, id);
			if (!company) throw clientError(`Company '${id}' not found`, 404, "NOT_FOUND", { id });
			return company;
		},

		async checkCodeFree(this: Svc, ctx: Ctx, code: string) {
			if ((await this.countEntities(ctx, { query: { code } })) > 0) throw clientError(`The company code '${code}' is taken`, 409, "CONFLICT", { field: "code" });
		},

		/**
		 * A licence key is accepted only when its signature checks out, it has not expired and no
		 * other company holds it (a licence's seats are one company's).
		 */
		async checkLicense(this: Svc, ctx: Ctx, key: string | null | undefined, companyId: string | null) {
			if (!key) return;
			const result = await ctx.call<VerifyResult, object>("license.verifyKey", { key });
			if (!result.valid) throw clientError(`The licence key is not valid: ${result.reason}`, 422, "INVALID_LICENSE", { field: "licenseKey" });
			if (result.expired) throw clientError("The licence key has expired", 422, "LICENSE_EXPIRED", { field: "licenseKey" });
			const holders = await this.countEntities(ctx, { query: companyId ? { licenseKey: key, id: { $ne: companyId } } : { licenseKey: key } });
			if (holders > 0) throw clientError("This licence key is installed on another company", 409, "LICENSE_IN_USE", { field: "licenseKey" });
		},
	},
});

export default CompanyService;
