/**
 * `npm test`: makes sure the servers the tests need are installed (Debian's nats-server,
 * redis-server and postgresql, installed with apt-get when missing), starts one PostgreSQL for
 * the run, then runs every test file (or the files and folders given) with Node's test runner.
 * NATS and Redis are started by the tests themselves, since some tests stop and restart them.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { startPostgres } from "./support/servers";

const ROOT = path.resolve(__dirname, "..");
const REQUIRED: Record<string, string> = { "nats-server": "nats-server", "redis-server": "redis-server", psql: "postgresql", chromium: "chromium" };

function has(command: string): boolean {
	return spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;
}

function ensurePackages(): void {
	const missing = [...new Set(Object.entries(REQUIRED).filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg))];
	if (!fs.existsSync("/usr/lib/postgresql") && !missing.includes("postgresql")) missing.push("postgresql");
	if (missing.length === 0) return;
	if (process.getuid?.() !== 0) throw new Error(`Install these Debian packages first: ${missing.join(" ")}`);
	console.log(`Installing ${missing.join(", ")} from Debian's packages…`);
	const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
	for (const args of [["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", ...missing]]) {
		const res = spawnSync("apt-get", args, { stdio: "inherit", env });
		if (res.status !== 0) throw new Error(`apt-get ${args[0]} failed`);
	}
}

function testFiles(args: string[]): string[] {
	const roots = args.length ? args : ["test"];
	const files: string[] = [];
	const walk = (p: string) => {
		const full = path.resolve(ROOT, p);
		if (fs.statSync(full).isDirectory()) for (const e of fs.readdirSync(full).sort()) walk(path.join(p, e));
		else if (full.endsWith(".test.ts")) files.push(path.relative(ROOT, full));
	};
	roots.forEach(walk);
	return files;
}

async function main(): Promise<number> {
	ensurePackages();
	const files = testFiles(process.argv.slice(2));
	const pg = await startPostgres();
	try {
		const child = spawn(
			process.execPath,
			["--import", "tsx", "--test", "--test-concurrency=1", "--test-reporter=spec", ...files],
			{ cwd: ROOT, stdio: "inherit", env: { ...process.env, TEST_PG_PORT: String(pg.port), NODE_ENV: "test" } },
		);
		return await new Promise<number>(resolve => child.on("exit", code => resolve(code ?? 1)));
	} finally {
		await pg.stop();
	}
}

main().then(
	code => process.exit(code),
	err => {
		console.error(err);
		process.exit(1);
	},
);
