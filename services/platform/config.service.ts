import { Errors, type Context, type ServiceSchema } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { PLATFORM_ADMIN } from "../../types/access";
import type { ConfigChangedEvent, ConfigSnapshot } from "../../types/config";
import type { EntityDefinition } from "../../types/entity";
import type { RequestMeta } from "../../types/context";

/**
 * The config centre. Every change is a new row (namespace, version): the history is the table,
 * the current value is the newest row, and the unique key (namespace, version) makes
 * `expectedVersion` a real compare-and-set, whichever replica serves the write.
 */
const ConfigVersion: EntityDefinition = {
	name: "config_versions",
	fields: {
		namespace: { type: "string", required: true, max: 100 },
		version: { type: "integer", required: true },
		values: { type: "json", required: true },
		/** `set`, or `rollback` with the version it restored in `restoredFrom`. */
		change: { type: "string", required: true, max: 20 },
		restoredFrom: { type: "integer" },
		createdAt: { type: "date", required: true },
		createdBy: { type: "string", max: 100 },
	},
	indexes: [{ fields: ["namespace", "version"], unique: true }, { fields: ["namespace"] }],
};

/** Largest values object a namespace holds, as JSON text. */
const MAX_VALUES_BYTES = 256 * 1024;
/** Writes without `expectedVersion` retry this often when another writer wins the race. */
const UNCONDITIONAL_ATTEMPTS = 5;

const namespaceParam = { type: "string", pattern: /^[a-z0-9][a-z0-9._-]{0,99}$/, messages: { stringPattern: "'namespace' must be 1-100 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit" } };
const versionParam = { type: "number", integer: true, min: 0, convert: true };

type Svc = DbMethods & {
	current(ctx: Context, namespace: string): Promise<ConfigSnapshot>;
	write(ctx: Context<unknown, RequestMeta>, namespace: string, values: object, expectedVersion: number | undefined, change: { change: string; restoredFrom?: number }): Promise<ConfigSnapshot>;
	logger: { info(...args: unknown[]): void };
	broker: { broadcast(event: string, payload: unknown): Promise<void> };
};

const ConfigService: ServiceSchema = {
	name: "config",
	mixins: [DbMixin(ConfigVersion)],
	settings: { rest: "/config" },

	actions: {
		get: {
			rest: "GET /:namespace",
			permission: "config:read",
			idempotent: true,
			description: "The current values of a namespace (version 0 and no values when it was never set).",
			params: { $$strict: true, namespace: namespaceParam },
			handler(this: Svc, ctx: Context<{ namespace: string }>) {
				return this.current(ctx, ctx.params.namespace);
			},
		},

		set: {
			rest: "PUT /:namespace",
			permission: PLATFORM_ADMIN,
			description: "Replace the values of a namespace. With `expectedVersion`, answers 409 when the namespace has moved on.",
			params: {
				$$strict: true,
				namespace: namespaceParam,
				values: { type: "object" },
				expectedVersion: { ...versionParam, optional: true },
			},
			handler(this: Svc, ctx: Context<{ namespace: string; values: object; expectedVersion?: number }, RequestMeta>) {
				const { namespace, values, expectedVersion } = ctx.params;
				return this.write(ctx, namespace, values, expectedVersion, { change: "set" });
			},
		},

		history: {
			rest: "GET /:namespace/history",
			permission: "config:read",
			idempotent: true,
			description: "Every version of a namespace, newest first.",
			params: {
				$$strict: true,
				namespace: namespaceParam,
				page: { type: "number", integer: true, min: 1, optional: true, convert: true },
				pageSize: { type: "number", integer: true, min: 1, max: 100, optional: true, convert: true },
			},
			handler(this: Svc, ctx: Context<{ namespace: string; page?: number; pageSize?: number }>) {
				const { namespace, page, pageSize } = ctx.params;
				return this.listEntities(ctx, { query: { namespace }, sort: ["-version"], page, pageSize });
			},
		},

		rollback: {
			rest: "POST /:namespace/rollback",
			permission: PLATFORM_ADMIN,
			description: "Make the values of an earlier version current again, as a new version.",
			params: {
				$$strict: true,
				namespace: namespaceParam,
				version: { ...versionParam, min: 1 },
				expectedVersion: { ...versionParam, optional: true },
			},
			async handler(this: Svc, ctx: Context<{ namespace: string; version: number; expectedVersion?: number }, RequestMeta>) {
				const { namespace, version, expectedVersion } = ctx.params;
				const [old] = await this.findEntities(ctx, { query: { namespace, version }, limit: 1 });
				if (!old)
					throw new Errors.MoleculerClientError(`Namespace '${namespace}' has no version ${version}`, 404, "NOT_FOUND", { namespace, version });
				return this.write(ctx, namespace, old.values as object, expectedVersion, { change: "rollback", restoredFrom: version });
			},
		},
	},

	methods: {
		async current(this: Svc, ctx: Context, namespace: string): Promise<ConfigSnapshot> {
			const [latest] = await this.findEntities(ctx, { query: { namespace }, sort: ["-version"], limit: 1 });
			return latest
				? { namespace, version: latest.version as number, values: latest.values as Record<string, unknown> }
				: { namespace, version: 0, values: {} };
		},

		async write(this: Svc, ctx: Context<unknown, RequestMeta>, namespace, values, expectedVersion, change) {
			const size = Buffer.byteLength(JSON.stringify(values));
			if (size > MAX_VALUES_BYTES)
				throw new Errors.MoleculerClientError(`'values' is ${size} bytes of JSON; a namespace holds at most ${MAX_VALUES_BYTES}`, 413, "PAYLOAD_TOO_LARGE");

			const user = ctx.meta.user;
			for (let attempt = 1; ; attempt++) {
				const { version } = await this.current(ctx, namespace);
				if (expectedVersion !== undefined && expectedVersion !== version)
					throw staleVersion(namespace, expectedVersion, version);
				try {
					// The unique key (namespace, version) lets exactly one concurrent writer take version + 1.
					await this.createEntity(ctx, { namespace, version: version + 1, values, ...change, createdAt: new Date(), createdBy: user?.username ?? null });
				} catch (err) {
					if ((err as Errors.MoleculerError).code !== 409) throw err;
					if (expectedVersion !== undefined) throw staleVersion(namespace, expectedVersion, version + 1);
					if (attempt >= UNCONDITIONAL_ATTEMPTS) throw err;
					continue;
				}
				const snapshot: ConfigSnapshot = { namespace, version: version + 1, values: values as Record<string, unknown> };
				// Values may hold secrets: the log names the change, never its content.
				this.logger.info(`Namespace '${namespace}' is now at version ${snapshot.version} (${change.change} by ${user?.username ?? "system"})`);
				const event: ConfigChangedEvent = { ...snapshot, user: user ? { id: user.id, username: user.username } : null };
				await ctx.broadcast("config.namespace.updated", event);
				return snapshot;
			}
		},
	},
};

function staleVersion(namespace: string, expected: number, actual: number) {
	return new Errors.MoleculerClientError(
		`Namespace '${namespace}' is at version ${actual}, not ${expected}: read it again and retry`,
		409,
		"VERSION_CONFLICT",
		{ namespace, expectedVersion: expected, version: actual },
	);
}

export default ConfigService;
