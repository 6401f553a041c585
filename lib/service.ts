import type { Context, ServiceBroker, ServiceSchema } from "moleculer";

/**
 * A service or mixin schema whose handlers declare their own `this` (the service with its
 * methods and state). Moleculer's typings give every lifecycle handler a bare `Service` as
 * `this`, which no schema with methods satisfies; this is the one place that says so.
 */
export function serviceSchema<T extends object>(schema: T): ServiceSchema {
	return schema as unknown as ServiceSchema;
}

/** A root context for work a service starts itself (timers, first-start setup), with no caller. */
export function internalContext<C extends Context = Context>(broker: ServiceBroker): C {
	return broker.ContextFactory.create(broker, null as never, {}, {}) as C;
}
