import type { EntityDefinition, Query } from "../../types/entity";

type Doc = Record<string, unknown>;

const OPERATORS = new Set(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains"]);

/**
 * Store-neutral encoding of an entity: what every store writes and reads.
 * - Only declared fields are kept, and each is present (null when unset), so `$exists` is a null check everywhere.
 * - `json` fields are kept as JSON text: keys with dots or `$` are fine, and no store interprets them.
 * - `date` fields are written as Date and read back as ISO strings, whichever node reads them.
 */
export class EntityCodec {
	constructor(readonly entity: EntityDefinition) {}

	fieldNames(): string[] {
		return Object.keys(this.entity.fields);
	}

	hasField(name: string): boolean {
		return name === "id" || name in this.entity.fields;
	}

	/** A whole new record: every declared field, encoded. */
	encodeNew(doc: Doc): Doc {
		const out: Doc = { id: doc.id };
		for (const name of this.fieldNames()) out[name] = this.encodeValue(name, doc[name]);
		return out;
	}

	/** A partial change: only the declared fields present in `changes`. */
	encodeChanges(changes: Doc): Doc {
		const out: Doc = {};
		for (const [name, value] of Object.entries(changes)) {
			if (name in this.entity.fields) out[name] = this.encodeValue(name, value);
		}
		return out;
	}

	/** The stored record as JSON; `hidden` fields are left out unless `withHidden`. */
	decode(doc: Doc, withHidden = false): Doc {
		const out: Doc = { id: doc.id };
		const hidden = withHidden ? [] : (this.entity.hidden ?? []);
		for (const name of this.fieldNames()) {
			if (hidden.includes(name)) continue;
			const value = doc[name];
			if (value == null) out[name] = null;
			else if (this.entity.fields[name].type === "json") out[name] = JSON.parse(String(value));
			else if (this.entity.fields[name].type === "date") out[name] = new Date(value as string).toISOString();
			else out[name] = value;
		}
		return out;
	}

	/**
	 * Checks a query against the entity (unknown fields and operators are programming errors)
	 * and rewrites the store-neutral parts: `$exists` becomes a null check, date values become Dates.
	 */
	normaliseQuery(query: Query | undefined): Query {
		if (!query) return {};
		const out: Query = {};
		for (const [key, value] of Object.entries(query)) {
			if (key === "$and" || key === "$or") {
				if (!Array.isArray(value)) throw new TypeError(`${key} takes an array of queries`);
				out[key] = value.map(q => this.normaliseQuery(q as Query));
			} else if (!this.hasField(key)) {
				throw new TypeError(`Unknown field '${key}' in a query on '${this.entity.name}'`);
			} else if (isOperatorObject(value)) {
				out[key] = this.normaliseCondition(key, value as Doc);
			} else {
				out[key] = this.encodeScalar(key, value);
			}
		}
		return out;
	}

	private normaliseCondition(field: string, condition: Doc): Doc {
		const out: Doc = {};
		for (const [op, operand] of Object.entries(condition)) {
			if (!OPERATORS.has(op)) throw new TypeError(`Unknown query operator '${op}'`);
			if (op === "$exists") out[operand ? "$ne" : "$eq"] = null;
			else if (op === "$in" || op === "$nin") {
				if (!Array.isArray(operand)) throw new TypeError(`${op} takes an array`);
				out[op] = operand.map(v => this.encodeScalar(field, v));
			} else if (op === "$contains") out[op] = String(operand);
			else out[op] = this.encodeScalar(field, operand);
		}
		return out;
	}

	private encodeScalar(field: string, value: unknown): unknown {
		if (value == null || field === "id") return value ?? null;
		const type = this.entity.fields[field].type;
		if (type === "date") return new Date(value as string);
		if (type === "json") return JSON.stringify(value);
		return value;
	}

	private encodeValue(field: string, value: unknown): unknown {
		return value === undefined ? null : this.encodeScalar(field, value);
	}
}

function isOperatorObject(value: unknown): boolean {
	return (
		value != null &&
		typeof value === "object" &&
		!Array.isArray(value) &&
		!(value instanceof Date) &&
		Object.keys(value).length > 0 &&
		Object.keys(value).every(k => k.startsWith("$"))
	);
}

/** Adds a case-insensitive search over `fields` to a query. */
export function withSearch(query: Query, search: string | undefined, fields: string[]): Query {
	if (!search || fields.length === 0) return query;
	const anyField = { $or: fields.map(f => ({ [f]: { $contains: search } })) };
	return Object.keys(query).length ? { $and: [query, anyField] } : anyField;
}

export function escapeRegExp(text: string): string {
	return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
