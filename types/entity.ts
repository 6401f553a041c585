/**
 * One entity definition per service serves every store (NeDB, PostgreSQL/MySQL, MongoDB).
 * `mixins/db.mixin.ts` turns it into a Sequelize model, a Mongoose schema or NeDB indexes.
 */
export type FieldType = "string" | "text" | "integer" | "number" | "boolean" | "date" | "json";

export interface FieldDefinition {
	type: FieldType;
	/** Longest string a `string` field holds (default 255). */
	max?: number;
	required?: boolean;
}

export interface IndexDefinition {
	fields: string[];
	unique?: boolean;
}

export interface EntityDefinition {
	/** Table or collection name. */
	name: string;
	/** Every stored field but `id`, which the mixin adds (a string, generated on create). */
	fields: Record<string, FieldDefinition>;
	indexes?: IndexDefinition[];
	/** Fields the `search` list parameter looks in (case-insensitive substring). */
	searchFields?: string[];
	/**
	 * `false` for an entity no action caches (an append-only log written on every request): its
	 * changes then skip the cache-cleaning broadcast to every node. Default true.
	 */
	cached?: boolean;
	/** Fields that never leave the service by default (e.g. a password hash): see `FindParams.withHidden`. */
	hidden?: string[];
	/**
	 * The entity's name in domain events: `DbMixin` emits `<service>.<event>.created|updated|removed`
	 * (e.g. `user.user.created`) for single-record changes. Unset: no domain events.
	 */
	event?: string;
}

/**
 * The query language services use. It is plain JSON, so it survives the trip between nodes;
 * each store translates it on the serving node.
 *   { field: value }                  equals
 *   { field: { $eq | $ne | $gt | $gte | $lt | $lte: value } }
 *   { field: { $in | $nin: [values] } }
 *   { field: { $exists: boolean } }   the field is set (not null) or not
 *   { field: { $contains: "text" } }  case-insensitive substring
 *   { $and: [query, …] }, { $or: [query, …] }
 */
export type Query = Record<string, unknown>;

export interface FindParams {
	query?: Query;
	/** Case-insensitive substring looked for in the entity's `searchFields`. */
	search?: string;
	/** Field names, `-` first for descending: `["-createdAt", "name"]`. */
	sort?: string[];
	limit?: number;
	offset?: number;
	/** Keep the entity's `hidden` fields in the answer (for the service's own use only). */
	withHidden?: boolean;
}

export interface ListParams {
	query?: Query;
	search?: string;
	sort?: string[];
	page?: number;
	pageSize?: number;
}

export interface Page<T> {
	rows: T[];
	total: number;
	page: number;
	pageSize: number;
	totalPages: number;
}
