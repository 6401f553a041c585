/**
 * The bench's child processes: started with plain `node` from compiled JavaScript, registered
 * with a reaper so that none outlives the bench, and measured (RSS) while loaded.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import ts from "typescript";
import { NodeProcess } from "../test/support/node-process";

let reaper: ChildProcess | null = null;

/**
 * Children must not outlive the bench, whatever ends it: an error, Ctrl-C, or a SIGKILL (tsx's
 * CLI sends one when the process it runs does not report a relayed SIGINT within 30 ms, which
 * happens under load, and then no exit hook runs). So a small detached process, reaper.ts,
 * holds the other end of a pipe: when this process ends for any reason the pipe closes and the
 * reaper stops every pid still registered and removes `tempDir`. Call first, before any child.
 */
export function startReaper(tempDir: string): void {
	const script = transpile(path.join(__dirname, "reaper.ts"), tempDir);
	// Detached: its own session, so a Ctrl-C meant for the bench does not stop it too.
	reaper = spawn(process.execPath, [script, tempDir], { detached: true, stdio: ["pipe", "ignore", "ignore"] });
	// Should the reaper die, the bench still stops its children itself: a broken pipe is no reason to fail.
	reaper.on("error", () => {});
	reaper.stdin?.on("error", () => {});
}

/** Normal end: everything is stopped, the reaper only removes the temp folder and exits. */
export function stopReaper(): void {
	reaper?.stdin?.end();
	reaper = null;
}

/** Registers a process with the reaper (nats-server from test/support is registered by hand). */
export function track(pid: number): void {
	reaper?.stdin?.write(`+${pid}\n`);
}

export function untrack(pid: number): void {
	reaper?.stdin?.write(`-${pid}\n`);
}

/** Children of the bench: registered with the reaper while they run. */
export class BenchProcess extends NodeProcess {
	constructor(name: string, args: string[], env: NodeJS.ProcessEnv, cwd: string) {
		super(name, args, env, cwd, { spawned: track, exited: untrack });
	}
}

/**
 * Transpiles one self-contained TypeScript file (type imports only) into `outDir` and returns the
 * .js path, so that the measured processes run without tsx loaded (tsx adds ~40 MB RSS).
 */
export function transpile(file: string, outDir: string): string {
	const out = ts.transpileModule(fs.readFileSync(file, "utf8"), {
		fileName: file,
		compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
	});
	const target = path.join(outDir, path.basename(file).replace(/\.ts$/, ".js"));
	fs.writeFileSync(target, out.outputText);
	return target;
}

/** The pid of the one running process whose command line satisfies `match`. */
export function findPid(match: (argv: string[]) => boolean): number {
	for (const entry of fs.readdirSync("/proc")) {
		if (!/^\d+$/.test(entry)) continue;
		try {
			const argv = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
			if (argv.length && match(argv)) return Number(entry);
		} catch {
			// the process went away while the list was read
		}
	}
	throw new Error("process not found in /proc");
}

/** Resident memory of a process in MB (VmRSS from /proc), NaN when it cannot be read. */
export function rssMb(pid: number): number {
	try {
		const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
		const kb = /^VmRSS:\s+(\d+) kB/m.exec(status);
		return kb ? Number(kb[1]) / 1024 : NaN;
	} catch {
		return NaN;
	}
}

/** Samples the RSS of named processes during a load and keeps each one's peak. */
export class RssSampler {
	private readonly peak = new Map<string, number>();
	private timer: NodeJS.Timeout | undefined;

	constructor(private readonly pids: Record<string, number>) {}

	start(intervalMs = 250): this {
		this.sample();
		this.timer = setInterval(() => this.sample(), intervalMs);
		return this;
	}

	/** Stops sampling; answers the peak RSS (MB) of each process. */
	stop(): Record<string, number> {
		clearInterval(this.timer);
		this.sample();
		return Object.fromEntries(this.peak);
	}

	private sample(): void {
		for (const [name, pid] of Object.entries(this.pids)) {
			const mb = rssMb(pid);
			if (!Number.isNaN(mb)) this.peak.set(name, Math.max(this.peak.get(name) ?? 0, mb));
		}
	}
}

/** What to undo when the benchmark ends (processes, servers, temp folders); `runBench` undoes it in reverse order. */
export const cleanups: Array<() => unknown> = [];

async function cleanup(): Promise<void> {
	for (let undo = cleanups.pop(); undo; undo = cleanups.pop()) {
		try {
			await undo();
		} catch (err) {
			console.error("cleanup:", err);
		}
	}
}

/**
 * Runs a benchmark's `main`, then undoes `cleanups` whatever happens (an error, Ctrl-C, SIGTERM),
 * and exits: 0 after a run, 1 after an error, 130 when interrupted.
 */
export function runBench(main: () => Promise<void>): void {
	for (const signal of ["SIGINT", "SIGTERM"] as const) {
		process.once(signal, () => {
			console.error(`\n${signal}: stopping everything…`);
			void cleanup().finally(() => process.exit(130));
		});
	}
	main().then(
		async () => {
			await cleanup();
			process.exit(0);
		},
		async err => {
			console.error(err);
			await cleanup();
			process.exit(1);
		},
	);
}
