import { Errors, type Context, type Service } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { serviceSchema } from "../../lib/service";
import type { PermissionDeclaration } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import { STATUSES, type EntityEvent, type Status } from "../../types/org";

/**
 * The data dictionary: dictionary types (`code`, `name`, …) each holding a short list of items
 * (`value`, `label`, `order`, `status`). Global dictionaries (no company) are written by the
 * platform administrator and seen by every company; a company's own are written by its users
 * holding `dict:write` and seen by that company only. A code names one dictionary for a company:
 * a company code may not repeat a global one, nor a global one a company's.
 *
 * Items live in the dictionary's record (dictionaries are small): every change is a
 * compare-and-set on `version`, so concurrent writers on any replica never lose each other's items.
 * Reads are cached per company; every change cleans the cache on every node (DbMixin).
 */
const GLOBAL = "*";
const MAX_ITEMS = 1000;
/** Compare-and-set rounds before giving up: each round one of the racing writers wins, so this bounds the writers that may race. */
const CAS_ATTEMPTS = 30;

const DictType: EntityDefinition = {
	name: "dict_types",
	fields: {
		/** `*` for a global dictionary, else the company id: the unique key (scope, code) holds for both. */
		scope: { type: "string", required: true, max: 64 },
		companyId: { type: "string", max: 64 },
		code: { type: "string", required: true, max: 64 },
		name: { type: "string", required: true, max: 100 },
		description: { type: "string", max: 500 },
		status: { type: "string", required: true, max: 10 },
		items: { type: "json", required: true },
		version: { type: "integer", required: true },
		createdAt: { type: "date", required: true },
		updatedAt: { type: "date", required: true },
		updatedBy: { type: "string", max: 100 },
	},
	indexes: [{ fields: ["scope", "code"], unique: true }, { fields: ["code"] }],
	searchFields: ["code", "name"],
	event: "dict",
};

export interface DictItem {
	value: string;
	label: string;
	order: number;
	status: Status;
}

type Dict = {
	id: string;
	scope: string;
	companyId: string | null;
	code: string;
	name: string;
	description: string | null;
	status: Status;
	items: DictItem[];
	version: number;
	createdAt: string;
	updatedAt: string;
	updatedBy: string | null;
};

type Ctx<P = Record<string, unknown>> = Context<P & { companyId?: string }, RequestMeta>;

type Svc = Service & DbMethods & TenantMethods & {
	scopesOf(ctx: Ctx): { own: string; visible: string[] };
	findDict(ctx: Ctx<{ code: string }>, forWrite: boolean): Promise<Dict>;
	changeDict(ctx: Ctx, dict: Dict, change: (dict: Dict) => Partial<Dict>): Promise<Dict>;
	checkCodeFree(ctx: Ctx, scope: string, code: string, createdId?: string): Promise<void>;
	emitEntityEvent(ctx: Context, verb: string, json: Record<string, unknown>): Promise<void>;
};

const DATADICT_PERMISSIONS: Record<string, PermissionDeclaration> = {
	"dict:read": { description: "Read data dictionaries and their items", member: true },
	"dict:write": { description: "Create, change and remove the company's data dictionaries and items" },
};

const codeParam = {
	type: "string",
	pattern: /^[a-z][a-z0-9_.-]{0,63}$/,
	messages: { stringPattern: "'code' must be 1-64 characters of a-z, 0-9, '_', '.' or '-', starting with a letter" },
};
const valueParam = {
	type: "string",
	pattern: /^[\p{L}\p{N}_.:-]{1,64}$/u,
	messages: { stringPattern: "'value' must be 1-64 letters, digits, '_', '.', ':' or '-'" },
};
const labelParam = { type: "string", min: 1, max: 200 };
const orderParam = { type: "number", integer: true, min: -1_000_000, max: 1_000_000 };
const statusParam = { type: "enum", values: STATUSES };
const nameParam = { type: "string", min: 1, max: 100, trim: true };
const descriptionParam = { type: "string", max: 500, nullable: true };
const itemParams = { value: valueParam, label: labelParam, order: { ...orderParam, optional: true }, status: { ...statusParam, optional: true } };
const readCache = (...keys: string[]) => ({ keys: ["#user.companyId", "#user.platformAdmin", "companyId", ...keys] });

const DataDictService = serviceSchema({
	name: "datadict",
	mixins: [DbMixin(DictType), TenantMixin("Dictionary")],
	settings: { rest: "/dicts", app: "org", permissions: DATADICT_PERMISSIONS },

	actions: {
		list: {
			rest: "GET /",
			permission: "dict:read",
			idempotent: true,
			description: "The dictionaries my company sees: the global ones and its own (without their items).",
			cache: readCache("search", "status", "page", "pageSize"),
			params: {
				$$strict: true,
				companyId: companyIdParam,
				search: { type: "string", max: 100, optional: true },
				status: { ...statusParam, optional: true },
				page: { type: "number", integer: true, min: 1, max: 100_000, optional: true, convert: true },
				pageSize: { type: "number", integer: true, min: 1, max: 100, optional: true, convert: true },
			},
			async handler(this: Svc, ctx: Ctx<{ search?: string; status?: Status; page?: number; pageSize?: number }>) {
				const { search, status, page, pageSize } = ctx.params;
				const query = { scope: { $in: this.scopesOf(ctx).visible }, ...(status ? { status } : {}) };
				const result = await this.listEntities(ctx, { query, search, sort: ["code"], page, pageSize });
				return { ...result, rows: result.rows.map(doc => present(doc as Dict, false)) };
			},
		},

		create: {
			rest: "POST /",
			permission: "dict:write",
			description: "Create a dictionary, optionally with its items: my company's, or a global one (the platform administrator, naming no company).",
			params: {
				$$strict: true,
				companyId: companyIdParam,
				code: codeParam,
				name: nameParam,
				description: { ...descriptionParam, optional: true },
				status: { ...statusParam, optional: true },
				items: { type: "array", max: MAX_ITEMS, optional: true, items: { type: "object", strict: true, props: itemParams } },
			},
			async handler(this: Svc, ctx: Ctx<{ code: string; name: string; description?: string | null; status?: Status; items?: Partial<DictItem>[] }>) {
				const { code, name, description, status, items = [] } = ctx.params;
				const scope = this.scopesOf(ctx).own;
				const values = new Set<string>();
				for (const item of items) {
					if (values.has(item.value!))
						throw new Errors.MoleculerClientError(`Item value '${item.value}' appears twice in 'items'`, 422, "VALIDATION_ERROR", { field: "items", value: item.value });
					values.add(item.value!);
				}
				await this.checkCodeFree(ctx, scope, code);
				const now = new Date();
				let created: Dict;
				try {
					created = (await this.createEntity(ctx, {
						scope, companyId: scope === GLOBAL ? null : scope, code, name, description: description ?? null, status: status ?? "enabled",
						items: items.map((item, i) => newItem(item, i)), version: 1, createdAt: now, updatedAt: now, updatedBy: ctx.meta.user?.username ?? null,
					})) as Dict;
				} catch (err) {
					if ((err as Errors.MoleculerError).code === 409) throw codeTaken(code);
					throw err;
				}
				// Two writers may have raced past the check in different scopes (a company and the global one): neither keeps its dictionary.
				try {
					await this.checkCodeFree(ctx, scope, code, created.id);
				} catch (err) {
					await this.removeEntity(ctx, created.id);
					throw err;
				}
				return present(created, true);
			},
		},

		update: {
			rest: "PUT /:code",
			permission: "dict:write",
			description: "Change a dictionary's name, description or status.",
			params: { $$strict: true, companyId: companyIdParam, code: codeParam, name: { ...nameParam, optional: true }, description: { ...descriptionParam, optional: true }, status: { ...statusParam, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ code: string; name?: string; description?: string | null; status?: Status }>) {
				const { name, description, status } = ctx.params;
				const changes = defined({ name, description, status });
				if (Object.keys(changes).length === 0)
					throw new Errors.MoleculerClientError("Nothing to change: give 'name', 'description' or 'status'", 422, "VALIDATION_ERROR");
				const dict = await this.findDict(ctx, true);
				return present(await this.changeDict(ctx, dict, () => changes), true);
			},
		},

		remove: {
			rest: "DELETE /:code",
			permission: "dict:write",
			description: "Remove a dictionary with its items.",
			params: { $$strict: true, companyId: companyIdParam, code: codeParam },
			async handler(this: Svc, ctx: Ctx<{ code: string }>) {
				const dict = await this.findDict(ctx, true);
				const removed = await this.removeEntity(ctx, dict.id);
				if (!removed) throw notFound(dict.code);
				return present(removed as Dict, true);
			},
		},

		items: {
			rest: "GET /:code/items",
			permission: "dict:read",
			idempotent: true,
			description: "A dictionary's items, by order then value.",
			cache: readCache("code", "status"),
			params: { $$strict: true, companyId: companyIdParam, code: codeParam, status: { ...statusParam, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ code: string; status?: Status }>) {
				const dict = await this.findDict(ctx, false);
				return sortItems(dict.items).filter(item => !ctx.params.status || item.status === ctx.params.status);
			},
		},

		addItem: {
			rest: "POST /:code/items",
			permission: "dict:write",
			description: "Add an item to a dictionary (409 when its value is taken).",
			params: { $$strict: true, companyId: companyIdParam, code: codeParam, ...itemParams },
			async handler(this: Svc, ctx: Ctx<{ code: string } & Partial<DictItem>>) {
				const { value, label, order, status } = ctx.params;
				let added: DictItem | undefined;
				await this.changeDict(ctx, await this.findDict(ctx, true), dict => {
					if (dict.items.some(item => item.value === value)) throw valueTaken(dict.code, value!);
					if (dict.items.length >= MAX_ITEMS)
						throw new Errors.MoleculerClientError(`Dictionary '${dict.code}' already holds ${MAX_ITEMS} items, the most it may`, 422, "TOO_MANY_ITEMS", { code: dict.code });
					added = newItem({ value, label, order, status }, nextOrder(dict.items));
					return { items: [...dict.items, added] };
				});
				return added;
			},
		},

		updateItem: {
			rest: "PUT /:code/items/:value",
			permission: "dict:write",
			description: "Change an item's label, order or status.",
			params: { $$strict: true, companyId: companyIdParam, code: codeParam, value: valueParam, label: { ...labelParam, optional: true }, order: { ...orderParam, optional: true }, status: { ...statusParam, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ code: string } & Partial<DictItem>>) {
				const { value, label, order, status } = ctx.params;
				const changes = defined({ label, order, status });
				if (Object.keys(changes).length === 0)
					throw new Errors.MoleculerClientError("Nothing to change: give 'label', 'order' or 'status'", 422, "VALIDATION_ERROR");
				let changed: DictItem | undefined;
				await this.changeDict(ctx, await this.findDict(ctx, true), dict => {
					const old = dict.items.find(item => item.value === value);
					if (!old) throw itemNotFound(dict.code, value!);
					changed = { ...old, ...changes };
					return { items: dict.items.map(item => (item.value === value ? changed! : item)) };
				});
				return changed;
			},
		},

		removeItem: {
			rest: "DELETE /:code/items/:value",
			permission: "dict:write",
			description: "Remove an item from a dictionary.",
			params: { $$strict: true, companyId: companyIdParam, code: codeParam, value: valueParam },
			async handler(this: Svc, ctx: Ctx<{ code: string; value: string }>) {
				const { value } = ctx.params;
				let removed: DictItem | undefined;
				await this.changeDict(ctx, await this.findDict(ctx, true), dict => {
					removed = dict.items.find(item => item.value === value);
					if (!removed) throw itemNotFound(dict.code, value);
					return { items: dict.items.filter(item => item.value !== value) };
				});
				return removed;
			},
		},
	},

	events: {
		/** A deleted company's dictionaries go with it. */
		async "company.company.removed"(this: DbMethods, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { scope: ctx.params.entity.id });
		},
	},

	methods: {
		/**
		 * Where the caller writes (`own`) and what it sees (`visible`): a company's users their company
		 * and the global dictionaries; the platform administrator the global ones, or a company it names.
		 */
		scopesOf(this: Svc, ctx: Ctx) {
			const user = this.caller(ctx);
			if (user.platformAdmin && !ctx.params.companyId) return { own: GLOBAL, visible: [GLOBAL] };
			const companyId = this.companyOf(ctx, ctx.params.companyId);
			return { own: companyId, visible: [companyId, GLOBAL] };
		},

		/** The dictionary `code` the caller sees; 404 when none, 403 when writing a global one without being the platform administrator. */
		async findDict(this: Svc, ctx: Ctx<{ code: string }>, forWrite: boolean): Promise<Dict> {
			const { code } = ctx.params;
			const found = (await this.findEntities(ctx, { query: { code, scope: { $in: this.scopesOf(ctx).visible } } })) as Dict[];
			// Should a race have left both, the company's own dictionary wins.
			const dict = found.find(d => d.scope !== GLOBAL) ?? found[0];
			if (!dict) throw notFound(code);
			if (forWrite && dict.scope === GLOBAL && !this.caller(ctx).platformAdmin)
				throw new Errors.MoleculerClientError(`'${code}' is a global dictionary: only the platform administrator changes it`, 403, "GLOBAL_DICTIONARY", { code });
			return dict;
		},

		/**
		 * Applies `change` to the newest version of the dictionary as a compare-and-set on `version`,
		 * reading it again and re-applying when another writer got there first.
		 */
		async changeDict(this: Svc, ctx: Ctx, dict: Dict, change: (dict: Dict) => Partial<Dict>): Promise<Dict> {
			let current = dict;
			for (let attempt = 1; attempt <= CAS_ATTEMPTS; attempt++) {
				const changes = { ...change(current), version: current.version + 1, updatedAt: new Date(), updatedBy: ctx.meta.user?.username ?? null };
				const count = await this.updateEntities(ctx, { id: current.id, version: current.version }, changes);
				const next = (await this.getEntity(ctx, current.id)) as Dict | null;
				if (!next) throw notFound(current.code);
				if (count === 1) {
					// updateEntities is silent (it may change many records); this change is one record's.
					await this.emitEntityEvent(ctx, "updated", next as unknown as Record<string, unknown>);
					return next;
				}
				current = next;
				// A little random back-off spreads the writers who lost this round.
				await new Promise(resolve => setTimeout(resolve, Math.random() * 5 * Math.min(attempt, 10)));
			}
			throw new Errors.MoleculerClientError(`Dictionary '${dict.code}' is being changed by others right now; try again`, 409, "VERSION_CONFLICT", { code: dict.code });
		},

		/**
		 * 409 unless `code` is free for `scope`: in its own scope, and across the global/company line
		 * (a company sees one dictionary per code). `createdId` is the caller's own new record, when checking after the write.
		 */
		async checkCodeFree(this: Svc, ctx: Ctx, scope: string, code: string, createdId?: string) {
			const query = scope === GLOBAL ? { code } : { code, scope: { $in: [scope, GLOBAL] } };
			const others = ((await this.findEntities(ctx, { query, limit: 3 })) as Dict[]).filter(d => d.id !== createdId);
			if (scope !== GLOBAL && others.some(d => d.scope === GLOBAL))
				throw new Errors.MoleculerClientError(`'${code}' is already a global dictionary`, 409, "CONFLICT", { code });
			if (scope === GLOBAL && others.some(d => d.scope !== GLOBAL))
				throw new Errors.MoleculerClientError(`'${code}' is already used by a company's own dictionary, so it cannot become global`, 409, "CONFLICT", { code });
			if (others.length > 0) throw codeTaken(code);
		},
	},
});

/** A dictionary as clients see it: `global` instead of the internal scope; items only where asked. */
function present(doc: Dict, withItems: boolean) {
	const { scope, items, ...rest } = doc;
	return { ...rest, global: scope === GLOBAL, itemCount: items.length, ...(withItems ? { items: sortItems(items) } : {}) };
}

function newItem(item: Partial<DictItem>, order: number): DictItem {
	return { value: item.value!, label: item.label!, order: item.order ?? order, status: item.status ?? "enabled" };
}

function nextOrder(items: DictItem[]): number {
	return items.length ? Math.max(...items.map(i => i.order)) + 1 : 0;
}

function sortItems(items: DictItem[]): DictItem[] {
	return [...items].sort((a, b) => a.order - b.order || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
}

function defined<T extends Record<string, unknown>>(values: T): Partial<T> {
	return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function notFound(code: string) {
	return new Errors.MoleculerClientError(`Dictionary '${code}' not found`, 404, "NOT_FOUND", { code });
}

function itemNotFound(code: string, value: string) {
	return new Errors.MoleculerClientError(`Dictionary '${code}' has no item '${value}'`, 404, "NOT_FOUND", { code, value });
}

function codeTaken(code: string) {
	return new Errors.MoleculerClientError(`A dictionary '${code}' already exists`, 409, "CONFLICT", { code });
}

function valueTaken(code: string, value: string) {
	return new Errors.MoleculerClientError(`Dictionary '${code}' already has an item '${value}'`, 409, "CONFLICT", { code, value });
}

export default DataDictService;
