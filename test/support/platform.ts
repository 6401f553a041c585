import type { ServiceBroker, ServiceSchema } from "moleculer";
import GatewayService from "../../services/gateway/gateway.service";
import ConfigService from "../../services/platform/config.service";
import RegistryService from "../../services/platform/registry.service";
import { createTestBroker } from "./broker";
import { freePort, waitFor } from "./servers";
import { SecurityStub } from "./security.stub";

export interface RunningGateway {
	broker: ServiceBroker;
	url: string;
	stop(): Promise<void>;
}

/**
 * The gateway and platform services in one broker (the embedded mode), on a free port, with the
 * test security service and any extra services a test needs.
 */
export async function startPlatform(
	env: Record<string, string | undefined> = {},
	extra: ServiceSchema[] = [],
	options: { withSecurity?: boolean; services?: ServiceSchema[] } = {},
): Promise<RunningGateway> {
	const port = await freePort();
	const broker = createTestBroker({ PORT: String(port), HOST: "127.0.0.1", ...env });
	const services = options.services ?? [GatewayService, ConfigService, RegistryService];
	for (const schema of [...services, ...(options.withSecurity === false ? [] : [SecurityStub]), ...extra]) broker.createService(schema);
	await broker.start();
	const url = `http://127.0.0.1:${port}`;
	// Aliases are generated from the registry shortly after the services register.
	await waitFor(async () => (await fetch(`${url}/api/health`)).status === 200, "the gateway's routes");
	return { broker, url, stop: () => broker.stop() };
}
