import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ServiceBroker, type BrokerOptions } from "moleculer";
import { createBrokerConfig } from "../../moleculer.config";

/** A fresh data directory under the system's temp folder. */
export function tempDir(prefix = "cnbicloud-test-"): string {
	return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * Broker options as production builds them, from an environment given here instead of the
 * process's: quiet logs, no tracing, data under a temp folder unless the test says otherwise.
 */
export function testBrokerOptions(env: Record<string, string | undefined> = {}, extra: Partial<BrokerOptions> = {}): BrokerOptions {
	const options = createBrokerConfig({
		NODE_ENV: "test",
		LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "warn",
		TRACING_EXPORTER: "none",
		DATA_DIR: tempDir(),
		// Any free port for the TCP channel: tests run many platforms side by side.
		SOCKET_PORT: "0",
		...env,
	});
	return { ...options, skipProcessEventRegistration: true, ...extra };
}

export function createTestBroker(env: Record<string, string | undefined> = {}, extra: Partial<BrokerOptions> = {}): ServiceBroker {
	return new ServiceBroker(testBrokerOptions(env, extra));
}
