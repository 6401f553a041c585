/**
 * Real servers for tests, started on loopback on free ports and stopped afterwards:
 * nats-server, redis-server and PostgreSQL from Debian's packages.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export async function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const server = net.createServer();
		server.unref();
		server.on("error", reject);
		server.listen(0, "127.0.0.1", () => {
			const { port } = server.address() as net.AddressInfo;
			server.close(() => resolve(port));
		});
	});
}

export async function waitFor(check: () => Promise<boolean> | boolean, what: string, timeoutMs = 20_000): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (Date.now() < deadline) {
		try {
			if (await check()) return;
		} catch {
			// not yet
		}
		await new Promise(r => setTimeout(r, 100));
	}
	throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
}

export function canConnect(port: number, host = "127.0.0.1"): Promise<boolean> {
	return new Promise(resolve => {
		const socket = net.connect(port, host);
		socket.once("connect", () => { socket.destroy(); resolve(true); });
		socket.once("error", () => resolve(false));
	});
}

/** A server child process that can be stopped, killed and started again on the same port. */
export class ServerProcess {
	private child: ChildProcess | null = null;
	private output = "";

	constructor(
		readonly name: string,
		readonly port: number,
		private readonly command: string,
		private readonly args: string[],
		private readonly spawnOptions: { uid?: number; gid?: number; cwd?: string } = {},
	) {}

	async start(): Promise<this> {
		this.output = "";
		const child = spawn(this.command, this.args, { stdio: ["ignore", "pipe", "pipe"], ...this.spawnOptions });
		child.stdout?.on("data", d => (this.output += d));
		child.stderr?.on("data", d => (this.output += d));
		this.child = child;
		let exited = false;
		child.once("exit", () => (exited = true));
		await waitFor(async () => {
			if (exited) throw new Error(`${this.name} exited: ${this.output}`);
			return canConnect(this.port);
		}, `${this.name} on port ${this.port}`).catch(err => {
			throw new Error(`${err.message}\n${this.output}`);
		});
		return this;
	}

	/** Ends the process with `signal` and waits for it to go. */
	async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
		const child = this.child;
		this.child = null;
		if (!child || child.exitCode !== null || child.signalCode !== null) return;
		await new Promise<void>(resolve => {
			child.once("exit", () => resolve());
			child.kill(signal);
		});
	}
}

/**
 * A nats-server on `port` (a number, or `{ port }`; a free one by default). `jetstream: true` turns JetStream on (the message bus
 * with `CHANNELS=nats`), its store in a fresh temp folder.
 */
export async function startNats(options: number | { port?: number; jetstream?: boolean } = {}): Promise<ServerProcess & { url: string }> {
	const { port, jetstream } = typeof options === "number" ? { port: options, jetstream: false } : options;
	const p = port ?? (await freePort());
	const args = ["-a", "127.0.0.1", "-p", String(p)];
	if (jetstream) args.push("-js", "-sd", fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-js-")));
	const server = new ServerProcess("nats-server", p, "nats-server", args);
	await server.start();
	return Object.assign(server, { url: `nats://127.0.0.1:${p}` });
}

export async function startRedis(): Promise<ServerProcess & { url: string }> {
	const p = await freePort();
	const server = new ServerProcess("redis-server", p, "redis-server", [
		"--port", String(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
	]);
	await server.start();
	return Object.assign(server, { url: `redis://127.0.0.1:${p}` });
}

function postgresBin(name: string): string {
	const root = "/usr/lib/postgresql";
	const versions = fs.existsSync(root) ? fs.readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
	for (const v of versions) {
		const bin = path.join(root, v, "bin", name);
		if (fs.existsSync(bin)) return bin;
	}
	return name;
}

/**
 * PostgreSQL refuses to run as root: as root, run it as the `postgres` user that Debian's package
 * creates (set directly on the child, so that signals reach postgres itself).
 */
function postgresUser(): { uid?: number; gid?: number } {
	if (process.getuid?.() !== 0) return {};
	const id = (flag: string) => Number(spawnSync("id", [flag, "postgres"], { encoding: "utf8" }).stdout.trim());
	return { uid: id("-u"), gid: id("-g") };
}

export interface PostgresServer {
	port: number;
	/** URL of a fresh, empty database. */
	createDatabase(name: string): Promise<string>;
	stop(): Promise<void>;
}

export async function startPostgres(): Promise<PostgresServer> {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-pg-"));
	if (process.getuid?.() === 0) spawnSync("chown", ["postgres:postgres", dir]);
	const user = postgresUser();
	const init = spawnSync(postgresBin("initdb"), ["-D", dir, "-A", "trust", "-U", "postgres", "--no-sync"], { encoding: "utf8", ...user, cwd: dir });
	if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}`);

	const port = await freePort();
	const args = [
		"-D", dir, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
	];
	const server = new ServerProcess("postgres", port, postgresBin("postgres"), args, { ...user, cwd: dir });
	await server.start();
	await waitFor(() => psql(`postgres://postgres@127.0.0.1:${port}/postgres`, "SELECT 1").status === 0, "postgres to accept queries");

	return {
		port,
		createDatabase: name => createDatabase(port, name),
		async stop() {
			await server.stop("SIGINT");
			fs.rmSync(dir, { recursive: true, force: true });
		},
	};
}

async function createDatabase(port: number, name: string): Promise<string> {
	const db = name.toLowerCase().replace(/[^a-z0-9_]/g, "_");
	const res = psql(`postgres://postgres@127.0.0.1:${port}/postgres`, `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`, `CREATE DATABASE ${db}`);
	if (res.status !== 0) throw new Error(`create database ${db}: ${res.stderr}`);
	return `postgres://postgres@127.0.0.1:${port}/${db}`;
}

function psql(url: string, ...statements: string[]) {
	const args = statements.flatMap(sql => ["-c", sql]);
	return spawnSync("psql", [url, "-v", "ON_ERROR_STOP=1", "-qAt", ...args], { encoding: "utf8" });
}

/**
 * The PostgreSQL server of this test run: the one `test/run.ts` started (TEST_PG_PORT), or a
 * private one when a test file runs on its own.
 */
export async function testPostgres(): Promise<PostgresServer & { owned: boolean }> {
	const port = Number(process.env.TEST_PG_PORT);
	if (port) {
		return { port, owned: false, createDatabase: name => createDatabase(port, name), async stop() {} };
	}
	return Object.assign(await startPostgres(), { owned: true });
}
