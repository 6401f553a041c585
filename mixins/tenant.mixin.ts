import { Errors, type Context, type ServiceSchema } from "moleculer";
import { serviceSchema } from "../lib/service";
import type { AuthenticatedUser } from "../types/access";
import type { RequestMeta } from "../types/context";
import type { Query } from "../types/entity";
import type { DbMethods } from "./db.mixin";

type Doc = Record<string, unknown>;
type TenantCtx = Context<unknown, RequestMeta>;

/** What `TenantMixin` adds to a service (beside `DbMixin`'s methods). */
export interface TenantMethods {
	/** The signed-in user, or 401. */
	caller(ctx: TenantCtx): AuthenticatedUser;
	/**
	 * The company an action works on: the caller's own. Only the platform administrator names
	 * one (`requested`), and must when the action writes company records.
	 */
	companyOf(ctx: TenantCtx, requested?: string | null): string;
	/** The company filter for a list: the caller's company, or every company for the platform administrator unless `requested`. */
	tenantQuery(ctx: TenantCtx, query?: Query, requested?: string | null): Query;
	/** The record by id, or 404 when it is missing or belongs to another company (no difference shows). */
	getOwned(ctx: TenantCtx, id: string): Promise<Doc>;
}

type TenantService = TenantMethods & DbMethods & { name: string };

export const companyIdParam = { type: "string", min: 1, max: 64, optional: true };

/**
 * Tenancy for a service whose records carry `companyId` (on top of `DbMixin`): the company
 * comes from `ctx.meta.user`, never from params (the platform administrator excepted), and a
 * record of another company reads as not found.
 */
export function TenantMixin(what: string): Partial<ServiceSchema> {
	const notFound = (id: string) => new Errors.MoleculerClientError(`${what} '${id}' not found`, 404, "NOT_FOUND", { id });

	return serviceSchema({
		methods: {
			caller(ctx: TenantCtx): AuthenticatedUser {
				const user = ctx.meta.user;
				if (!user) throw new Errors.MoleculerClientError("Authentication required", 401, "UNAUTHORIZED");
				return user;
			},

			companyOf(this: TenantService, ctx: TenantCtx, requested?: string | null): string {
				const user = this.caller(ctx);
				if (user.platformAdmin) {
					if (!requested)
						throw new Errors.MoleculerClientError("The platform administrator must name the company ('companyId')", 422, "VALIDATION_ERROR", { field: "companyId" });
					return requested;
				}
				if (requested && requested !== user.companyId)
					throw new Errors.MoleculerClientError("Only the platform administrator may choose the company", 403, "FORBIDDEN", { field: "companyId" });
				if (!user.companyId) throw new Errors.MoleculerClientError("This account belongs to no company", 403, "FORBIDDEN");
				return user.companyId;
			},

			tenantQuery(this: TenantService, ctx: TenantCtx, query: Query = {}, requested?: string | null): Query {
				const user = this.caller(ctx);
				if (user.platformAdmin && !requested) return query;
				return { ...query, companyId: this.companyOf(ctx, requested) };
			},

			async getOwned(this: TenantService, ctx: TenantCtx, id: string): Promise<Doc> {
				const user = this.caller(ctx);
				const doc = await this.getEntity(ctx, id);
				if (!doc || (!user.platformAdmin && doc.companyId !== user.companyId)) throw notFound(id);
				return doc;
			},
		},
	});
}
