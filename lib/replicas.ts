import { Errors, type Context, type Service } from "moleculer";

/** The other nodes that run `service` (only the available ones, unless `onlyAvailable` is false). */
export function otherNodesOf(service: Service, onlyAvailable = true): string[] {
	return service.broker.registry
		.getServiceList({ onlyLocal: false, onlyAvailable, skipInternal: true, withActions: false })
		.filter(s => s.name === service.name && s.nodeID !== service.broker.nodeID)
		.map(s => s.nodeID);
}

/**
 * Refuses to start a second replica of a service that keeps its state on this node only (NeDB
 * files, sessions or presence in memory): two copies would silently diverge. `why` says what
 * this node keeps locally and what shares it instead.
 */
export function refuseUnsharedReplica(service: Service, type: string, why: string): void {
	if (!service.broker.options.platform?.clustered) return;
	const [elsewhere] = otherNodesOf(service, false);
	if (elsewhere) throw new Errors.MoleculerError(`Service '${service.name}' already runs on node '${elsewhere}' and ${why}`, 500, type);
}

/**
 * Calls `<service>.sync({ id })` on every other node running the service, after a change this
 * node made to what the nodes keep in memory (a bus consumer, say). Answers whether all of them
 * did; one that could not is logged, and its next reconcile catches up. `what` names the record in the log.
 */
export async function syncOtherNodes(service: Service, ctx: Context, id: string, what: string): Promise<boolean> {
	const results = await Promise.all(
		otherNodesOf(service).map(nodeID =>
			ctx.call(`${service.name}.sync`, { id }, { nodeID }).then(
				() => true,
				err => (service.logger.warn(`Node ${nodeID} could not sync ${what} ${id}; its next reconcile will`, (err as Error).message), false),
			),
		),
	);
	return results.every(Boolean);
}
