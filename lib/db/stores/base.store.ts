import type { EntityDefinition, Query } from "../../../types/entity";

/** The part of a moleculer-db adapter the db mixin uses. */
export interface DbAdapter {
	init(broker: unknown, service: unknown): void;
	connect(): Promise<unknown>;
	disconnect(): Promise<unknown>;
	find(filters: { query?: unknown; sort?: string[]; limit?: number; offset?: number }): Promise<unknown[]>;
	count(filters: { query?: unknown }): Promise<number>;
	findById(id: string): Promise<unknown>;
	insert(doc: Record<string, unknown>): Promise<unknown>;
	/** Updates are always `{ $set: changes }`. */
	updateMany(query: unknown, update: { $set: Record<string, unknown> }): Promise<number>;
	updateById(id: string, update: { $set: Record<string, unknown> }): Promise<unknown>;
	removeMany(query: unknown): Promise<number>;
	removeById(id: string): Promise<unknown>;
	clear(): Promise<unknown>;
}

/**
 * One kind of store. Each sibling (NeDB, SQL, Mongo) builds a moleculer-db adapter for an entity
 * and translates the store-neutral query language of `types/entity.ts` on the serving node.
 */
export abstract class Store {
	abstract readonly kind: "nedb" | "sql" | "mongo";

	/** True when several nodes may serve the same entities (the store is shared). */
	abstract readonly shared: boolean;

	constructor(readonly entity: EntityDefinition) {}

	abstract createAdapter(): DbAdapter;

	/** Extra service-schema properties the adapter reads (`model` for Sequelize and Mongoose). */
	schemaExtras(): Record<string, unknown> {
		return {};
	}

	/** Native query from a normalised store-neutral one. */
	abstract translate(query: Query): unknown;

	/** Native sort list; `id` is the entity id. */
	sort(sort: string[]): string[] {
		return sort;
	}

	abstract isUniqueViolation(err: unknown): boolean;

	/** Runs once the adapter is connected (indexes). */
	async afterConnected(_adapter: DbAdapter): Promise<void> {}
}

/** Map keys `$and`/`$or` and operators of a normalised query with `mapOperator`. */
export function mapQuery(
	query: Query,
	map: { logical(op: "$and" | "$or", parts: unknown[]): [PropertyKey, unknown]; field(name: string): string; condition(field: string, op: string, operand: unknown): [PropertyKey, unknown] },
): Record<PropertyKey, unknown> {
	const out: Record<PropertyKey, unknown> = {};
	for (const [key, value] of Object.entries(query)) {
		if (key === "$and" || key === "$or") {
			const [k, v] = map.logical(key, (value as Query[]).map(q => mapQuery(q, map)));
			out[k] = v;
		} else if (value != null && typeof value === "object" && !Array.isArray(value) && !(value instanceof Date)) {
			const cond: Record<PropertyKey, unknown> = {};
			for (const [op, operand] of Object.entries(value)) {
				const [k, v] = map.condition(key, op, operand);
				cond[k] = v;
			}
			out[map.field(key)] = cond;
		} else {
			out[map.field(key)] = value;
		}
	}
	return out;
}
