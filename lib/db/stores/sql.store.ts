import SequelizeDbAdapter from "moleculer-db-adapter-sequelize";
import { DataTypes, Op, Sequelize, type ModelAttributes } from "sequelize";
import type { EntityDefinition, FieldDefinition, Query } from "../../../types/entity";
import { mapQuery, Store, type DbAdapter } from "./base.store";

const OPERATORS: Record<string, symbol> = {
	$eq: Op.eq, $ne: Op.ne, $gt: Op.gt, $gte: Op.gte, $lt: Op.lt, $lte: Op.lte, $in: Op.in, $nin: Op.notIn,
};

/** One connection pool per database URL and process, shared by every service of the node. */
const pools = new Map<string, { sequelize: Sequelize; users: number }>();

function acquire(url: string): Sequelize {
	let pool = pools.get(url);
	if (!pool) {
		const sequelize = new Sequelize(url, { logging: false, pool: { max: 10, idle: 10_000 } });
		pool = { sequelize, users: 0 };
		pools.set(url, pool);
	}
	pool.users++;
	return pool.sequelize;
}

async function release(url: string): Promise<void> {
	const pool = pools.get(url);
	if (!pool || --pool.users > 0) return;
	pools.delete(url);
	await pool.sequelize.close();
}

function columnType(field: FieldDefinition) {
	switch (field.type) {
		case "string": return DataTypes.STRING(field.max ?? 255);
		case "text": case "json": return DataTypes.TEXT;
		case "integer": return DataTypes.INTEGER;
		case "number": return DataTypes.DOUBLE;
		case "boolean": return DataTypes.BOOLEAN;
		case "date": return DataTypes.DATE;
	}
}

function escapeLike(text: string): string {
	return text.replace(/[\\%_]/g, "\\$&");
}

/**
 * PostgreSQL or MySQL/MariaDB through moleculer-db-adapter-sequelize (`DATABASE_URL`).
 * Sequelize's operators are Symbols, which do not survive a trip between nodes: services send
 * the JSON query language and it is translated here, on the serving node.
 */
export class SqlStore extends Store {
	readonly kind = "sql";
	readonly shared = true;
	private readonly dialect: string;

	constructor(entity: EntityDefinition, private readonly url: string) {
		super(entity);
		this.dialect = new URL(url).protocol.replace(":", "");
	}

	createAdapter(): DbAdapter {
		const url = this.url;
		// noSync: the adapter would close the shared pool when its `sync()` fails, leaving every
		// service of the node without a database; afterConnected() creates the table instead.
		// Its typings declare one argument; the adapter takes Sequelize's four, options last.
		const Adapter = SequelizeDbAdapter as unknown as new (...opts: unknown[]) => DbAdapter;
		const adapter = new Adapter(acquire(url), undefined, undefined, { noSync: true });
		adapter.disconnect = () => release(url);
		// Its updateById takes `{ $set }` but its updateMany wants the bare changes.
		const { updateMany } = adapter;
		adapter.updateMany = (where, update) => updateMany.call(adapter, where, update.$set as never);
		return adapter;
	}

	override schemaExtras() {
		const define: ModelAttributes = { id: { type: DataTypes.STRING(64), primaryKey: true } };
		for (const [name, field] of Object.entries(this.entity.fields))
			define[name] = { type: columnType(field), allowNull: !field.required };
		const indexes = (this.entity.indexes ?? []).map(i => ({ fields: i.fields, unique: Boolean(i.unique) }));
		return { model: { name: this.entity.name, define, options: { tableName: this.entity.name, timestamps: false, indexes } } };
	}

	/**
	 * Creates the table and its indexes when missing. Replicas starting together race to create
	 * them (PostgreSQL then reports a duplicate in its catalogue): the loser tries again and
	 * finds them there.
	 */
	override async afterConnected(adapter: DbAdapter): Promise<void> {
		const model = (adapter as unknown as { model: { sync(): Promise<unknown> } }).model;
		for (let attempt = 1; ; attempt++) {
			try {
				await model.sync();
				return;
			} catch (err) {
				if (attempt >= 5) throw err;
				await new Promise(resolve => setTimeout(resolve, 50 + Math.random() * 200 * attempt));
			}
		}
	}

	translate(query: Query): unknown {
		const likeOp = this.dialect.startsWith("postgres") ? Op.iLike : Op.like;
		return mapQuery(query, {
			logical: (op, parts) => [op === "$and" ? Op.and : Op.or, parts],
			field: name => name,
			condition: (_field, op, operand) =>
				op === "$contains" ? [likeOp, `%${escapeLike(String(operand))}%`] : [OPERATORS[op], operand],
		});
	}

	isUniqueViolation(err: unknown): boolean {
		return (err as { name?: string })?.name === "SequelizeUniqueConstraintError";
	}
}
