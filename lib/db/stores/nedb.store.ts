import fs from "node:fs";
import path from "node:path";
import DbService from "moleculer-db";
import type { EntityDefinition, Query } from "../../../types/entity";
import { escapeRegExp } from "../codec";
import { mapQuery, Store, type DbAdapter } from "./base.store";

type Doc = Record<string, unknown>;
const MemoryAdapter = (DbService as unknown as { MemoryAdapter: new (opts: object) => DbAdapter }).MemoryAdapter;

/** NeDB has no compound indexes: a compound unique index is a hidden field holding the joined key. */
function compoundKeyField(fields: string[]): string {
	return `__unique_${fields.join("_")}`;
}

/**
 * NeDB files under DATA_DIR: the embedded store. One process owns a file, so it is never shared.
 */
export class NeDbStore extends Store {
	readonly kind = "nedb";
	readonly shared = false;

	constructor(entity: EntityDefinition, private readonly dir: string) {
		super(entity);
	}

	private compoundIndexes(): string[][] {
		return (this.entity.indexes ?? []).filter(i => i.unique && i.fields.length > 1).map(i => i.fields);
	}

	private compoundKeys(doc: Doc): Doc {
		const out: Doc = {};
		for (const fields of this.compoundIndexes())
			out[compoundKeyField(fields)] = JSON.stringify(fields.map(f => doc[f] ?? null));
		return out;
	}

	private withoutCompoundKeys<T>(doc: T): T {
		if (!doc || typeof doc !== "object") return doc;
		const out = { ...(doc as Doc) };
		for (const fields of this.compoundIndexes()) delete out[compoundKeyField(fields)];
		return out as T;
	}

	createAdapter(): DbAdapter {
		fs.mkdirSync(this.dir, { recursive: true });
		const adapter = new MemoryAdapter({ filename: path.join(this.dir, `${this.entity.name}.db`) }) as DbAdapter & {
			entityToObject(doc: Doc): Doc;
		};
		if (this.compoundIndexes().length === 0) return adapter;

		// Keep the hidden compound keys current on every write, and out of every read.
		const { insert, updateById, entityToObject, findById } = adapter;
		adapter.insert = doc => insert.call(adapter, { ...doc, ...this.compoundKeys(doc) });
		adapter.updateById = async (id, update) => {
			const current = (await findById.call(adapter, id)) as Doc | null;
			if (!current) return null;
			const changes = update.$set;
			return updateById.call(adapter, id, { $set: { ...changes, ...this.compoundKeys({ ...current, ...changes }) } });
		};
		const { updateMany } = adapter;
		adapter.updateMany = (query, update) => {
			const changed = Object.keys(update.$set);
			if (this.compoundIndexes().some(fields => fields.some(f => changed.includes(f))))
				throw new Error(`updateMany cannot change '${changed.join(", ")}' of '${this.entity.name}' on NeDB (part of a compound unique key)`);
			return updateMany.call(adapter, query, update);
		};
		adapter.entityToObject = doc => this.withoutCompoundKeys(entityToObject.call(adapter, doc));
		return adapter;
	}

	translate(query: Query): unknown {
		return mapQuery(query, {
			logical: (op, parts) => [op, parts],
			field: name => (name === "id" ? "_id" : name),
			condition: (_field, op, operand) => {
				if (op === "$contains") return ["$regex", new RegExp(escapeRegExp(String(operand)), "i")];
				if (op === "$eq") return ["$in", [operand]]; // NeDB has no $eq
				return [op, operand];
			},
		});
	}

	override sort(sort: string[]): string[] {
		return sort.map(s => s.replace(/^(-?)id$/, "$1_id"));
	}

	isUniqueViolation(err: unknown): boolean {
		return (err as { errorType?: string })?.errorType === "uniqueViolated";
	}

	override async afterConnected(adapter: DbAdapter): Promise<void> {
		const db = (adapter as unknown as { db: { ensureIndex(o: object): Promise<void> } }).db;
		const indexes = this.entity.indexes ?? [];
		const single = indexes.filter(i => i.fields.length === 1);
		for (const index of single) await db.ensureIndex({ fieldName: index.fields[0], unique: Boolean(index.unique) });
		const looked = new Set(single.map(i => i.fields[0]));
		for (const index of indexes.filter(i => i.fields.length > 1)) {
			// The hidden joined key enforces a compound unique index; NeDB looks up by one field only,
			// so the compound index's leading field gets an index of its own for the queries.
			if (index.unique) await db.ensureIndex({ fieldName: compoundKeyField(index.fields), unique: true });
			if (!looked.has(index.fields[0])) {
				await db.ensureIndex({ fieldName: index.fields[0] });
				looked.add(index.fields[0]);
			}
		}
	}
}
