import mongoose from "mongoose";
import MongooseDbAdapter from "moleculer-db-adapter-mongoose";
import type { EntityDefinition, FieldDefinition, Query } from "../../../types/entity";
import { escapeRegExp } from "../codec";
import { mapQuery, Store, type DbAdapter } from "./base.store";

let users = 0;

function schemaType(field: FieldDefinition) {
	switch (field.type) {
		case "string": case "text": case "json": return String;
		case "integer": case "number": return Number;
		case "boolean": return Boolean;
		case "date": return Date;
	}
}

/**
 * MongoDB through moleculer-db-adapter-mongoose (`MONGO_URI`). Ids are strings, as in the other stores.
 */
export class MongoStore extends Store {
	readonly kind = "mongo";
	readonly shared = true;

	constructor(entity: EntityDefinition, private readonly url: string) {
		super(entity);
	}

	createAdapter(): DbAdapter {
		const adapter = new MongooseDbAdapter(this.url) as unknown as DbAdapter;
		users++;
		// Every service shares mongoose's default connection: the last one to stop closes it.
		adapter.disconnect = async () => {
			if (--users === 0) await mongoose.disconnect();
		};
		return adapter;
	}

	override schemaExtras() {
		const definition: Record<string, unknown> = { _id: { type: String } };
		for (const [name, field] of Object.entries(this.entity.fields))
			definition[name] = { type: schemaType(field), default: null };
		const schema = new mongoose.Schema(definition, { versionKey: false, collection: this.entity.name });
		for (const index of this.entity.indexes ?? [])
			schema.index(Object.fromEntries(index.fields.map(f => [f, 1])), { unique: Boolean(index.unique) });
		const model = mongoose.models[this.entity.name] ?? mongoose.model(this.entity.name, schema);
		return { model };
	}

	translate(query: Query): unknown {
		return mapQuery(query, {
			logical: (op, parts) => [op, parts],
			field: name => (name === "id" ? "_id" : name),
			condition: (_field, op, operand) =>
				op === "$contains" ? ["$regex", new RegExp(escapeRegExp(String(operand)), "i")] : [op, operand],
		});
	}

	override sort(sort: string[]): string[] {
		return sort.map(s => s.replace(/^(-?)id$/, "$1_id"));
	}

	isUniqueViolation(err: unknown): boolean {
		return (err as { code?: number })?.code === 11000;
	}

	override async afterConnected(adapter: DbAdapter): Promise<void> {
		await (adapter as unknown as { model: { syncIndexes(): Promise<unknown> } }).model.syncIndexes();
	}
}
