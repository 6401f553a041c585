import { randomUUID } from "node:crypto";
import MoleculerDb from "moleculer-db";
import { Errors, type Context, type Service, type ServiceSchema } from "moleculer";
import type { EntityDefinition, FindParams, ListParams, Page, Query } from "../types/entity";
import { EntityCodec, withSearch } from "../lib/db/codec";
import { createStore, type Store } from "../lib/db/stores";
import type { DbAdapter } from "../lib/db/stores/base.store";
import { serviceSchema } from "../lib/service";
import { refuseUnsharedReplica } from "../lib/replicas";
import type { RequestMeta } from "../types/context";
import type { EntityEvent } from "../types/org";

type Doc = Record<string, unknown>;

/** What `DbMixin` adds to a service. Services use these methods, never an adapter or a driver. */
export interface DbMethods {
	findEntities(ctx: Context, params?: FindParams): Promise<Doc[]>;
	countEntities(ctx: Context, params?: Pick<FindParams, "query" | "search">): Promise<number>;
	listEntities(ctx: Context, params: ListParams): Promise<Page<Doc>>;
	getEntity(ctx: Context, id: string, options?: { withHidden?: boolean }): Promise<Doc | null>;
	createEntity(ctx: Context, doc: Doc): Promise<Doc>;
	updateEntity(ctx: Context, id: string, changes: Doc): Promise<Doc | null>;
	/** Sets `changes` on every entity matching `query`; answers how many changed (a compare-and-set when the query pins a version). */
	updateEntities(ctx: Context, query: Query, changes: Doc): Promise<number>;
	removeEntity(ctx: Context, id: string): Promise<Doc | null>;
	removeEntities(ctx: Context, query: Query): Promise<number>;
	/** Emits `<service>.<entity.event>.<verb>` for a change made without the single-record methods. */
	emitEntityEvent(ctx: Context, verb: string, json: Doc): Promise<void>;
}

type DbService = Service & DbMethods & {
	adapter: DbAdapter;
	store: Store;
	codec: EntityCodec;
	transformDocuments(ctx: Context, params: object, docs: unknown): Promise<Doc | Doc[]>;
	entityChanged(type: string, json: unknown, ctx: Context): Promise<void>;
	changed(type: string, json: unknown, ctx: Context): Promise<void>;
	decodeAll(ctx: Context, docs: unknown[], withHidden?: boolean): Promise<Doc[]>;
	storeCall<T>(work: () => Promise<T>): Promise<T>;
	checkSortable(sort: string[] | undefined): string[] | undefined;
};

export const LIST_DEFAULTS = { pageSize: 20, maxPageSize: 100 };

/**
 * Persistence for one entity, on the store the environment chooses: NeDB files (embedded),
 * PostgreSQL/MySQL (`DATABASE_URL`) or MongoDB (`MONGO_URI`).
 *
 * - moleculer-db's CRUD actions are switched off: a service publishes its own actions, which
 *   apply tenancy and validation, and calls the methods of `DbMethods`.
 * - Every change cleans the service's cache on every node (`cache.clean.<service>` event), and a
 *   single-record change emits the domain event `<service>.<entity.event>.<verb>` (audit, caches
 *   and the bus listen to those) with the record, minus its hidden fields, and the acting user.
 * - A service on NeDB refuses to start when another node already serves it: two NeDB files
 *   would silently diverge. Replicas need a shared store.
 */
export function DbMixin(entity: EntityDefinition): Partial<ServiceSchema> {
	const codec = new EntityCodec(entity);

	return serviceSchema({
		mixins: [MoleculerDb as unknown as ServiceSchema],

		settings: { idField: "id", pageSize: LIST_DEFAULTS.pageSize, maxPageSize: LIST_DEFAULTS.maxPageSize },

		actions: {
			find: false, count: false, list: false, create: false, insert: false, get: false, update: false, remove: false,
		} as unknown as ServiceSchema["actions"],

		/** Choose the store once the broker (and so the platform settings) is known. */
		merged(this: DbService, schema: ServiceSchema) {
			const settings = this.broker.options.platform?.store ?? { kind: "nedb", dataDir: "./data/db" };
			const store = createStore(entity, settings);
			Object.assign(schema, store.schemaExtras(), { adapter: store.createAdapter() });
			this.store = store;
			this.codec = codec;
		},

		events: {
			"cache.clean.**"(this: DbService, ctx: Context) {
				if (ctx.eventName === `cache.clean.${this.fullName}` && this.broker.cacher)
					return this.broker.cacher.clean(`${this.fullName}.**`);
			},
		},

		methods: {
			async findEntities(this: DbService, ctx: Context, params: FindParams = {}) {
				const query = this.store.translate(codec.normaliseQuery(withSearch(params.query ?? {}, params.search, entity.searchFields ?? [])));
				const sort = this.checkSortable(params.sort);
				const docs = await this.storeCall(() =>
					this.adapter.find({ query, sort: sort && this.store.sort(sort), limit: params.limit, offset: params.offset }),
				);
				return this.decodeAll(ctx, docs, params.withHidden);
			},

			countEntities(this: DbService, _ctx: Context, params: Pick<FindParams, "query" | "search"> = {}) {
				const query = this.store.translate(codec.normaliseQuery(withSearch(params.query ?? {}, params.search, entity.searchFields ?? [])));
				return this.storeCall(() => this.adapter.count({ query }));
			},

			async listEntities(this: DbService, ctx: Context, params: ListParams): Promise<Page<Doc>> {
				const pageSize = Math.min(params.pageSize ?? LIST_DEFAULTS.pageSize, LIST_DEFAULTS.maxPageSize);
				const page = params.page ?? 1;
				const [rows, total] = await Promise.all([
					this.findEntities(ctx, { ...params, limit: pageSize, offset: (page - 1) * pageSize }),
					this.countEntities(ctx, params),
				]);
				return { rows, total, page, pageSize, totalPages: Math.ceil(total / pageSize) };
			},

			async getEntity(this: DbService, ctx: Context, id: string, options: { withHidden?: boolean } = {}) {
				if (typeof id !== "string" || id.length === 0) return null;
				const doc = await this.storeCall(() => this.adapter.findById(id));
				return doc ? (await this.decodeAll(ctx, [doc], options.withHidden))[0] : null;
			},

			async createEntity(this: DbService, ctx: Context, doc: Doc) {
				const encoded = codec.encodeNew({ ...doc, id: doc.id ?? randomUUID() });
				const saved = await this.storeCall(() => this.adapter.insert((this.adapter as unknown as AdapterIds).beforeSaveTransformID(encoded, "id")));
				const [json] = await this.decodeAll(ctx, [saved]);
				await this.changed("created", json, ctx);
				await this.emitEntityEvent(ctx, "created", json);
				return json;
			},

			async updateEntity(this: DbService, ctx: Context, id: string, changes: Doc) {
				const saved = await this.storeCall(() => this.adapter.updateById(id, { $set: codec.encodeChanges(changes) }));
				if (!saved) return null;
				const [json] = await this.decodeAll(ctx, [saved]);
				await this.changed("updated", json, ctx);
				await this.emitEntityEvent(ctx, "updated", json);
				return json;
			},

			async updateEntities(this: DbService, ctx: Context, query: Query, changes: Doc) {
				const native = this.store.translate(codec.normaliseQuery(query));
				const count = await this.storeCall(() => this.adapter.updateMany(native, { $set: codec.encodeChanges(changes) }));
				if (count > 0) await this.changed("updated", count, ctx);
				return count;
			},

			/** Removes the entity and answers it as it was, or null when there was none. */
			async removeEntity(this: DbService, ctx: Context, id: string) {
				const json = await this.getEntity(ctx, id);
				if (!json) return null;
				// Adapters disagree on what removeById answers (a count, a document), so the record is read first.
				await this.storeCall(() => this.adapter.removeById(id));
				await this.changed("removed", json, ctx);
				await this.emitEntityEvent(ctx, "removed", json);
				return json;
			},

			async removeEntities(this: DbService, ctx: Context, query: Query) {
				const native = this.store.translate(codec.normaliseQuery(query));
				const count = await this.storeCall(() => this.adapter.removeMany(native));
				if (count > 0) await this.changed("removed", count, ctx);
				return count;
			},

			async decodeAll(this: DbService, ctx: Context, docs: unknown[], withHidden = false) {
				const json = await this.transformDocuments(ctx, {}, docs);
				return (json as Doc[]).map(doc => codec.decode(doc, withHidden));
			},

			/** moleculer-db's change hook (cleans the service's cache on every node), unless the entity is never cached. */
			async changed(this: DbService, type: string, json: unknown, ctx: Context) {
				if (entity.cached !== false) await this.entityChanged(type, json, ctx);
			},

			/** `<service>.<entity>.<verb>`, emitted (balanced: one instance of each listening service gets it). */
			async emitEntityEvent(this: DbService, ctx: Context, verb: string, json: Doc) {
				if (!entity.event) return;
				const user = (ctx.meta as RequestMeta | undefined)?.user;
				const payload: EntityEvent = { entity: json, user: user ? { id: user.id, username: user.username, companyId: user.companyId } : null };
				await ctx.emit(`${this.name}.${entity.event}.${verb}`, payload);
			},

			/** Runs a store operation, turning a unique-key violation into a 409. */
			async storeCall<T>(this: DbService, work: () => Promise<T>): Promise<T> {
				try {
					return await work();
				} catch (err) {
					if (this.store.isUniqueViolation(err))
						throw new Errors.MoleculerClientError(`A ${entity.name} record with the same key already exists`, 409, "CONFLICT");
					throw err;
				}
			},

			checkSortable(this: DbService, sort: string[] | undefined) {
				for (const key of sort ?? []) {
					const field = key.replace(/^-/, "");
					if (!codec.hasField(field) || entity.hidden?.includes(field))
						throw new Errors.MoleculerClientError(`Cannot sort by '${key}'`, 422, "VALIDATION_ERROR", { field: "sort", value: key });
				}
				return sort?.length ? sort : undefined;
			},
		},

		async started(this: DbService) {
			await this.store.afterConnected(this.adapter);
			if (!this.store.shared)
				refuseUnsharedReplica(
					this,
					"NEDB_REPLICA_REFUSED",
					"this node stores it in NeDB files. Replicas of a stateful service need a shared store: set DATABASE_URL or MONGO_URI on every node.",
				);
		},
	});
}

type AdapterIds = { beforeSaveTransformID(doc: Doc, idField: string): Doc };
