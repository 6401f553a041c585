/**
 * The bench's safety net (see `startReaper` in processes.ts), run detached with plain `node`.
 * Reads "+<pid>" / "-<pid>" lines on stdin. When stdin closes (the bench process ended, normally
 * or killed) it stops the pids still listed (SIGTERM, then SIGKILL after 5 s) and removes the
 * temp folder given as its argument. Self-contained: node built-ins only.
 */
import fs from "node:fs";

const tempDir = process.argv[2];
const pids = new Set<number>();
let pending = "";

function alive(pid: number): boolean {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
}

function signal(pid: number, sig: NodeJS.Signals): void {
	try {
		process.kill(pid, sig);
	} catch {
		// already gone
	}
}

process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk: string) => {
	const lines = (pending + chunk).split("\n");
	pending = lines.pop() ?? "";
	for (const line of lines) {
		const pid = Number(line.slice(1));
		if (!Number.isInteger(pid) || pid <= 0) continue;
		if (line[0] === "+") pids.add(pid);
		else if (line[0] === "-") pids.delete(pid);
	}
});

process.stdin.on("close", async () => {
	const left = [...pids].filter(alive);
	left.forEach(pid => signal(pid, "SIGTERM"));
	const deadline = Date.now() + 5_000;
	while (left.some(alive) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 100));
	left.filter(alive).forEach(pid => signal(pid, "SIGKILL"));
	if (tempDir) fs.rmSync(tempDir, { recursive: true, force: true });
	process.exit(0);
});
