import type { Context, Service } from "moleculer";
import { serviceSchema } from "../../lib/service";
import { PLATFORM_ADMIN } from "../../types/access";

type CircuitState = "closed" | "open" | "half-open";
interface CircuitEvent {
	nodeID: string;
	action: string;
}
interface CircuitRecord {
	state: CircuitState;
	/** The node whose breaker changed state (breakers live on the calling side). */
	caller: string;
	since: string;
}

type RegistryService = Service & {
	/** Breaker state per `${callee nodeID}:${action}`, from the `$circuit-breaker.*` events every node broadcasts. */
	circuits: Map<string, CircuitRecord>;
	recordCircuit(ctx: Context<CircuitEvent>, state: CircuitState): void;
};

interface NodeInfo {
	id: string;
	available: boolean;
	hostname?: string;
	metadata?: Record<string, unknown>;
	lastHeartbeatTime?: number;
	cpu?: number | null;
	client?: { type: string; version: string; langVersion: string };
	services?: { name: string }[];
}

interface ActionInfo {
	name: string;
	available: boolean;
	action?: { service?: { name?: string } };
	endpoints?: { nodeID: string; state: boolean; available: boolean }[];
}

/**
 * The live cluster as data, for administrators: nodes with their metadata and availability,
 * services with the nodes that serve them, and each action endpoint's state, including the
 * circuit breakers other nodes opened against it.
 */
export default serviceSchema({
	name: "registry",
	settings: { rest: "/registry" },

	actions: {
		nodes: {
			rest: "GET /nodes",
			permission: PLATFORM_ADMIN,
			idempotent: true,
			description: "Every node this node knows of, available or not, with the services it runs.",
			params: { $$strict: true },
			handler(this: RegistryService) {
				const registry = this.broker.registry as unknown as { getNodeList(opts: object): NodeInfo[] };
				const nodes = registry.getNodeList({ onlyAvailable: false, withServices: true });
				return nodes.map(node => ({
					id: node.id,
					available: node.available,
					local: node.id === this.broker.nodeID,
					hostname: node.hostname ?? null,
					metadata: node.metadata ?? {},
					cpu: node.cpu ?? null,
					lastHeartbeat: node.lastHeartbeatTime ? new Date(node.lastHeartbeatTime).toISOString() : null,
					client: node.client ?? null,
					services: (node.services ?? []).map(s => s.name).filter(name => !name.startsWith("$")).sort(),
				}));
			},
		},

		services: {
			rest: "GET /services",
			permission: PLATFORM_ADMIN,
			idempotent: true,
			description: "Every service with the nodes that run it and the state of each action endpoint.",
			params: { $$strict: true },
			handler(this: RegistryService) {
				const services = this.broker.registry.getServiceList({ onlyLocal: false, onlyAvailable: false, skipInternal: true, withActions: false }) as unknown as {
					name: string; version?: string | number; nodeID: string; available: boolean;
				}[];
				const actions = this.broker.registry.getActionList({ onlyLocal: false, onlyAvailable: false, skipInternal: true, withEndpoints: true }) as unknown as ActionInfo[];

				const byName = new Map<string, { name: string; version: string | number | null; nodes: { nodeID: string; available: boolean }[]; actions: unknown[] }>();
				for (const s of services) {
					const entry = byName.get(s.name) ?? { name: s.name, version: s.version ?? null, nodes: [], actions: [] };
					entry.nodes.push({ nodeID: s.nodeID, available: s.available });
					byName.set(s.name, entry);
				}
				for (const action of actions) {
					const serviceName = action.name.slice(0, action.name.lastIndexOf("."));
					byName.get(serviceName)?.actions.push({
						name: action.name,
						available: action.available,
						endpoints: (action.endpoints ?? []).map(ep => {
							const circuit = this.circuits.get(`${ep.nodeID}:${action.name}`);
							return { nodeID: ep.nodeID, available: ep.available && ep.state, circuit: circuit ?? { state: "closed" } };
						}),
					});
				}
				return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
			},
		},
	},

	events: {
		"$circuit-breaker.opened"(this: RegistryService, ctx: Context<CircuitEvent>) {
			this.recordCircuit(ctx, "open");
		},
		"$circuit-breaker.half-opened"(this: RegistryService, ctx: Context<CircuitEvent>) {
			this.recordCircuit(ctx, "half-open");
		},
		"$circuit-breaker.closed"(this: RegistryService, ctx: Context<CircuitEvent>) {
			this.recordCircuit(ctx, "closed");
		},
	},

	methods: {
		recordCircuit(this: RegistryService, ctx: Context<CircuitEvent>, state: CircuitState) {
			const key = `${ctx.params.nodeID}:${ctx.params.action}`;
			if (state === "closed") this.circuits.delete(key);
			else this.circuits.set(key, { state, caller: ctx.nodeID ?? "unknown", since: new Date().toISOString() });
		},
	},

	created(this: RegistryService) {
		this.circuits = new Map();
	},
});
