import { Errors, type Service } from "moleculer";

/**
 * Refuses to start a second replica of a service that keeps its state on this node only (NeDB
 * files, sessions or presence in memory): two copies would silently diverge. `why` says what
 * this node keeps locally and what shares it instead.
 */
export function refuseUnsharedReplica(service: Service, type: string, why: string): void {
	if (!service.broker.options.platform?.clustered) return;
	const elsewhere = service.broker.registry
		.getServiceList({ onlyLocal: false, skipInternal: true, withActions: false })
		.filter(s => s.name === service.name && s.nodeID !== service.broker.nodeID);
	if (elsewhere.length > 0)
		throw new Errors.MoleculerError(`Service '${service.name}' already runs on node '${elsewhere[0].nodeID}' and ${why}`, 500, type);
}
