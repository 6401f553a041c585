/**
 * Real cluster nodes for tests: `sh scripts/node.sh <groups>` on the built files, as an operator
 * starts them, each its own process on loopback.
 */
import path from "node:path";
import { NodeProcess } from "./node-process";
import { tempDir } from "./broker";
import { waitFor } from "./servers";
import { replyOf } from "./org";

export const ROOT = path.resolve(__dirname, "../..");

export interface ClusterNodeOptions {
	/** Node groups and service files, as given to scripts/node.sh. */
	groups: string[];
	/** Environment on top of a quiet, test-sized default. */
	env: Record<string, string>;
}

/** One node: a process that can be killed and started again with the same node ID and environment. */
export class ClusterNode {
	process: NodeProcess | null = null;

	constructor(readonly nodeID: string, private readonly options: ClusterNodeOptions) {}

	start(): NodeProcess {
		const { groups, env } = this.options;
		const loadsTs = groups.some(g => g.endsWith(".ts"));
		this.process = new NodeProcess(this.nodeID, ["scripts/node.sh", ...groups], {
			PATH: process.env.PATH,
			HOME: process.env.HOME,
			NODE_ENV: "test",
			NODE_ID: this.nodeID,
			LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "warn",
			NO_COLOR: "1",
			TRACING_EXPORTER: "none",
			DATA_DIR: tempDir("cnbicloud-node-"),
			SOCKET_PORT: "0",
			...(loadsTs ? { NODE_OPTIONS: "--import tsx" } : {}),
			...env,
		}, ROOT, { command: "sh" });
		return this.process;
	}

	/** Waits for `ready` to hold, failing at once (with the node's output) if the node exits. */
	async started(ready: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
		const proc = this.process!;
		await Promise.race([waitFor(ready, `${this.nodeID}: ${what}`, timeoutMs), proc.failOnExit()]).catch(err => {
			throw new Error(`${err.message}\n--- ${this.nodeID} output ---\n${proc.output()}`);
		});
	}

	kill = () => this.process?.kill() ?? Promise.resolve();
	stop = () => this.process?.stop() ?? Promise.resolve();
}

/** Calls an HTTP endpoint and answers the status and parsed JSON body (or the text). */
export async function request(url: string, headers: Record<string, string> = {}, init: RequestInit = {}) {
	return replyOf(await fetch(url, { ...init, headers: { ...headers, ...(init.headers as Record<string, string>) } }));
}
