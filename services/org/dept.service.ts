import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { buildTree, withDescendants } from "../../lib/org/dept-tree";
import { scopeOf } from "../../lib/org/scope";
import { idListParam, idParam, nameParam, optionalId } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { Dept, EntityEvent } from "../../types/org";

const DeptEntity: EntityDefinition = {
	name: "depts",
	event: "dept",
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		name: { type: "string", required: true, max: 100 },
		parentId: { type: "string", max: 64 },
		order: { type: "integer", required: true },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["companyId"] }, { fields: ["parentId"] }],
};

/** A company's departments are few (hundreds at most): whole-tree work happens in memory. */
const MAX_DEPTS = 5000;
const orderParam = { type: "number", integer: true, min: -1_000_000, max: 1_000_000, optional: true };

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Svc = DbMethods &
	TenantMethods & {
		companyDepts(ctx: Ctx, companyId: string): Promise<Dept[]>;
		checkParent(ctx: Ctx, companyId: string, parentId: string | null | undefined, movingId?: string): Promise<void>;
	};


/** The department tree of each company: create, rename, move, order; no delete while it has sub-departments or users. */
const DeptService = serviceSchema({
	name: "dept",
	mixins: [DbMixin(DeptEntity), TenantMixin("Department")],
	settings: {
		rest: "/depts",
		app: "org",
		permissions: {
			"dept:read": { description: "See the department tree", member: true },
			"dept:write": { description: "Create, change, move and delete departments" },
		},
	},

	actions: {
		tree: {
			rest: "GET /",
			permission: "dept:read",
			description: "My company's departments as a tree, limited to my data scope.",
			params: { $$strict: true, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<{ companyId?: string }>) {
				const user = this.caller(ctx);
				const depts = await this.companyDepts(ctx, this.companyOf(ctx, ctx.params.companyId));
				const scope = scopeOf(user);
				if (scope.all) return buildTree(depts);
				const visible = new Set(scope.deptIds);
				if (scope.self && user.deptId) visible.add(user.deptId);
				return buildTree(depts.filter(d => visible.has(d.id)));
			},
		},

		get: {
			rest: "GET /:id",
			permission: "dept:read",
			params: { $$strict: true, id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.getOwned(ctx, ctx.params.id);
			},
		},

		create: {
			rest: "POST /",
			permission: "dept:write",
			params: { $$strict: true, name: nameParam, parentId: { ...optionalId, nullable: true }, order: orderParam, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<{ name: string; parentId?: string | null; order?: number; companyId?: string }>) {
				const companyId = this.companyOf(ctx, ctx.params.companyId);
				await this.checkParent(ctx, companyId, ctx.params.parentId);
				if ((await this.countEntities(ctx, { query: { companyId } })) >= MAX_DEPTS)
					throw clientError(`A company has at most ${MAX_DEPTS} departments`, 422, "LIMIT_REACHED");
				const now = new Date();
				return this.createEntity(ctx, { companyId, name: ctx.params.name, parentId: ctx.params.parentId ?? null, order: ctx.params.order ?? 0, createdAt: now, updatedAt: now });
			},
		},

		update: {
			rest: "PUT /:id",
			permission: "dept:write",
			description: "Rename, reorder or move a department (not below itself or its own sub-departments).",
			params: { $$strict: true, id: idParam, name: { ...nameParam, optional: true }, parentId: { ...optionalId, nullable: true }, order: orderParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; name?: string; parentId?: string | null; order?: number }>) {
				const { id, ...changes } = ctx.params;
				const dept = await this.getOwned(ctx, id);
				if ("parentId" in changes) await this.checkParent(ctx, dept.companyId as string, changes.parentId, id);
				return this.updateEntity(ctx, id, { ...changes, updatedAt: new Date() });
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: "dept:write",
			description: "Delete a department; 409 while it has sub-departments or users.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const dept = await this.getOwned(ctx, ctx.params.id);
				const companyId = dept.companyId as string;
				const children = await this.countEntities(ctx, { query: { companyId, parentId: dept.id } });
				if (children > 0) throw clientError(`The department has ${children} sub-department(s): move or delete them first`, 409, "DEPT_NOT_EMPTY", { children });
				const users = await ctx.call<number, object>("user.count", { companyId, deptId: dept.id });
				if (users > 0) throw clientError(`The department has ${users} user(s): move them first`, 409, "DEPT_NOT_EMPTY", { users });
				return this.removeEntity(ctx, ctx.params.id);
			},
		},

		// --- Internal

		/** Every department of a company (the `auth` service resolves scopes and grants with it). */
		all: {
			visibility: "public",
			params: { companyId: idParam },
			cache: { keys: ["companyId"] },
			handler(this: Svc, ctx: Ctx<{ companyId: string }>) {
				return this.companyDepts(ctx, ctx.params.companyId);
			},
		},

		/** Which of `ids` are departments of the company. */
		existing: {
			visibility: "public",
			params: { companyId: idParam, ids: idListParam },
			async handler(this: Svc, ctx: Ctx<{ companyId: string; ids: string[] }>) {
				const found = await this.findEntities(ctx, { query: { companyId: ctx.params.companyId, id: { $in: ctx.params.ids } } });
				return found.map(d => d.id);
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		async companyDepts(this: Svc, ctx: Ctx, companyId: string) {
			return (await this.findEntities(ctx, { query: { companyId }, limit: MAX_DEPTS })) as unknown as Dept[];
		},

		/** The parent exists in the company and, for a move, is not the department itself or one of its sub-departments. */
		async checkParent(this: Svc, ctx: Ctx, companyId: string, parentId: string | null | undefined, movingId?: string) {
			if (!parentId) return;
			const depts = await this.companyDepts(ctx, companyId);
			if (!depts.some(d => d.id === parentId)) throw clientError(`Parent department '${parentId}' not found`, 422, "VALIDATION_ERROR", { field: "parentId", value: parentId });
			if (movingId && withDescendants(depts, [movingId]).includes(parentId))
				throw clientError("A department cannot move below itself or one of its sub-departments", 422, "VALIDATION_ERROR", { field: "parentId", value: parentId });
		},
	},
});

export default DeptService;
