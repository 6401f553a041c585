import type { Context, Service, ServiceSchema } from "moleculer";
import { serviceSchema } from "../lib/service";
import type { ConfigChangedEvent, ConfigSnapshot } from "../types/config";

/** How long a starting service waits for the config centre before it runs on its defaults. */
const CONFIG_WAIT_MS = 10_000;

type ConfigService<T> = Service & {
	config: T;
	configVersion: number;
	configLoaded: boolean;
	applyConfig(snapshot: ConfigSnapshot): void;
	loadConfig(): Promise<void>;
	configChanged?(next: T, previous: T): void | Promise<void>;
};

/**
 * Gives a service its configuration from the config centre, live.
 *
 *   mixins: [ConfigMixin("files", { quotaBytes: 10 * 2 ** 30 })]
 *
 * `this.config` holds the defaults overlaid with the namespace's values. On every change (the
 * `config.namespace.updated` event, broadcast to all nodes) it is replaced and the service's
 * optional `configChanged(next, previous)` method runs: no restart. A service that starts
 * before the config centre runs on its defaults and loads the values as soon as it appears.
 */
export function ConfigMixin<T extends Record<string, unknown>>(namespace: string, defaults: T): Partial<ServiceSchema> {
	return serviceSchema({
		events: {
			"config.namespace.updated"(this: ConfigService<T>, ctx: Context<ConfigChangedEvent>) {
				if (ctx.params.namespace === namespace) this.applyConfig(ctx.params);
			},
			"$services.changed"(this: ConfigService<T>) {
				const registry = this.broker.registry as unknown as { hasService(name: string): boolean };
				if (!this.configLoaded && registry.hasService("config")) return this.loadConfig();
			},
		},

		methods: {
			applyConfig(this: ConfigService<T>, snapshot: ConfigSnapshot) {
				// Events can overtake a load: never go back to an older version.
				if (snapshot.version < this.configVersion) return;
				const previous = this.config;
				this.config = { ...defaults, ...snapshot.values } as T;
				this.configVersion = snapshot.version;
				this.configLoaded = true;
				this.logger.info(`Configuration '${namespace}' version ${snapshot.version} applied`);
				if (this.configChanged) {
					Promise.resolve(this.configChanged(this.config, previous)).catch(err =>
						this.logger.error(`configChanged failed for '${namespace}' version ${snapshot.version}`, err),
					);
				}
			},

			async loadConfig(this: ConfigService<T>) {
				try {
					this.applyConfig(await this.broker.call<ConfigSnapshot, { namespace: string }>("config.get", { namespace }));
				} catch (err) {
					this.logger.warn(`Configuration '${namespace}' could not be loaded; running on defaults until it can`, (err as Error).message);
				}
			},
		},

		created(this: ConfigService<T>) {
			this.config = { ...defaults };
			this.configVersion = 0;
			this.configLoaded = false;
		},

		async started(this: ConfigService<T>) {
			try {
				await this.broker.waitForServices(["config"], CONFIG_WAIT_MS);
			} catch {
				this.logger.warn(`The config centre is not available; '${namespace}' runs on defaults until it is`);
				return;
			}
			await this.loadConfig();
		},
	});
}
