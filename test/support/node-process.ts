/**
 * A child `node` process (a Moleculer node, a bare server, …) that tests and the bench start,
 * read the output of, stop gracefully or kill outright.
 */
import { spawn, type ChildProcess } from "node:child_process";

export interface NodeProcessOptions {
	/** The program to run instead of `node` (e.g. `sh` for scripts/node.sh, which execs node). */
	command?: string;
	/** Told the pid once the process runs (the bench registers it with its reaper). */
	spawned?(pid: number): void;
	/** Told the pid once the process has exited. */
	exited?(pid: number): void;
}

export class NodeProcess {
	readonly pid: number;
	/** Settles when the process has exited, for whatever reason. */
	readonly exited: Promise<void>;
	private readonly child: ChildProcess;
	private log = "";

	/** Runs `node <args>` from `cwd` with exactly `env` (nothing inherited but what is given). */
	constructor(readonly name: string, args: string[], env: NodeJS.ProcessEnv, cwd: string, hooks: NodeProcessOptions = {}) {
		const command = hooks.command ?? process.execPath;
		this.child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
		if (this.child.pid === undefined) throw new Error(`${name}: could not start ${command} ${args.join(" ")}`);
		this.pid = this.child.pid;
		hooks.spawned?.(this.pid);
		// The pipes must be read or a chatty child blocks; the last 16 kB are kept for error reports.
		const keep = (chunk: Buffer) => (this.log = (this.log + chunk.toString()).slice(-16_384));
		this.child.stdout!.on("data", keep);
		this.child.stderr!.on("data", keep);
		this.exited = new Promise(resolve =>
			this.child.once("exit", () => {
				hooks.exited?.(this.pid);
				resolve();
			}),
		);
	}

	get running(): boolean {
		return this.child.exitCode === null && this.child.signalCode === null;
	}

	output(): string {
		return this.log.trim();
	}

	/** Rejects as soon as the process exits: race it against a readiness check. */
	async failOnExit(): Promise<never> {
		await this.exited;
		throw new Error(`${this.name} exited (code ${this.child.exitCode}, signal ${this.child.signalCode}):\n${this.output()}`);
	}

	/** Ends the process at once, as a crash or the OOM killer would. */
	async kill(): Promise<void> {
		if (!this.running) return;
		this.child.kill("SIGKILL");
		await this.exited;
	}

	/** SIGTERM (Moleculer nodes then stop gracefully), SIGKILL if still there after `graceMs`. */
	async stop(graceMs = 5_000): Promise<void> {
		if (!this.running) return;
		this.child.kill("SIGTERM");
		let timer: NodeJS.Timeout | undefined;
		const late = new Promise<"late">(resolve => (timer = setTimeout(() => resolve("late"), graceMs)));
		if ((await Promise.race([this.exited, late])) === "late") await this.kill();
		clearTimeout(timer);
	}
}
