/**
 * `npm run bench` (builds first): what a request through the gateway costs, against two
 * baselines measured in the same run on the same machine.
 *
 *   1. HTTP → gateway node (process A, dist/services/gateway) → NATS → echo node (process B)
 *   2. baseline: the same `echo.ping` called directly over NATS from a broker in this process
 *   3. baseline: a bare node:http server (its own process) answering the same JSON
 *
 * and what signing in costs: the same ping behind a permission (a company administrator's token,
 * checked by the gateway from its per-node cache), `security.resolveToken` called directly (the
 * cost of a cache miss: JWT, session, principal), and logins (scrypt) through the gateway, served
 * by a node running the platform and org groups.
 *
 * nats-server (Debian's package) and every node run on loopback on free ports; all of them are
 * stopped at the end, also on error or Ctrl-C, and a detached reaper (reaper.ts) stops them even
 * if this process is killed outright. The load is generated in this process: autocannon
 * for HTTP, a fixed number of concurrent `broker.call` loops for NATS.
 *
 * Environment: BENCH_DURATION (seconds per scenario, default 10), BENCH_WARMUP (seconds, default 2),
 * BENCH_CONNECTIONS (HTTP connections / concurrent calls, default 50), BENCH_METRICS=false to run
 * every node with METRICS=false (by default the nodes keep the project's default: metrics on).
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ServiceBroker } from "moleculer";
import { createBrokerConfig } from "../moleculer.config";
import { freePort, startNats, waitFor } from "../test/support/servers";
import { callLoad, httpLoad, type LoadResult } from "./load";
import { BenchProcess, findPid, RssSampler, startReaper, stopReaper, track, transpile, untrack, cleanups, runBench } from "./processes";

const ROOT = path.resolve(__dirname, "..");
const RUNNER = "node_modules/moleculer/bin/moleculer-runner.js";
const CONFIG = "dist/moleculer.config.js";
const PING_PATH = "/api/bench/ping";
const GUARDED_PATH = "/api/bench/guarded-ping";
const BENCH_ADMIN_PASSWORD = "Bench-admin-1";
const MEMBER_PASSWORD = "Bench-member-1";

function setting(name: string, fallback: number, min: number): number {
	const raw = process.env[name];
	const value = raw ? Number(raw) : fallback;
	if (!Number.isFinite(value) || value < min) throw new Error(`${name} must be a number >= ${min}, got '${raw}'`);
	return value;
}

const DURATION = setting("BENCH_DURATION", 10, 1);
const WARMUP = setting("BENCH_WARMUP", 2, 0);
const CONNECTIONS = Math.round(setting("BENCH_CONNECTIONS", 50, 1));
const LOGIN_CONNECTIONS = Math.min(CONNECTIONS, 4);
/** Given to every node when set: Moleculer's per-call metrics are a large part of the cost. */
const METRICS: Record<string, string> = process.env.BENCH_METRICS ? { METRICS: process.env.BENCH_METRICS } : {};

interface Row {
	name: string;
	result: LoadResult;
	/** Peak RSS (MB) of each serving process during the measured run. */
	rss: Record<string, number>;
}

/**
 * A child's environment: only what is given here, so that the developer's own TRANSPORTER,
 * REDIS_URL, DATABASE_URL or NODE_OPTIONS (tsx) cannot change what is measured.
 */
function childEnv(vars: Record<string, string>): NodeJS.ProcessEnv {
	return { PATH: process.env.PATH, HOME: process.env.HOME, NO_COLOR: "1", LOG_LEVEL: "warn", ...METRICS, ...vars };
}

/** Polls `url` until it answers 200 with the echo's JSON; fails at once if `proc` exits. */
async function waitForPong(url: string, proc: BenchProcess): Promise<void> {
	const ready = waitFor(
		async () => {
			const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
			return res.status === 200 && ((await res.json()) as { pong?: unknown }).pong === true;
		},
		`${proc.name} to answer GET ${url}`,
		30_000,
	);
	await Promise.race([ready, proc.failOnExit()]);
}

/** A warm-up run, then the measured run while the serving processes' RSS is sampled. */
async function scenario(name: string, serving: Record<string, number>, load: (seconds: number) => Promise<LoadResult>): Promise<Row> {
	process.stdout.write(`  ${name}: ${WARMUP} s warm-up, ${DURATION} s measured… `);
	if (WARMUP > 0) await load(WARMUP);
	const sampler = new RssSampler(serving).start();
	const result = await load(DURATION);
	const rss = sampler.stop();
	console.log(`${Math.round(result.rps)} req/s`);
	return { name, result, rss };
}

/**
 * A company with an administrator, through the API as a client would do it: the administrator's
 * access token for the guarded route, and a login body for the login scenario.
 */
async function signIn(base: string): Promise<{ token: string; loginBody: string }> {
	const post = async (path: string, body: unknown, token?: string) => {
		const res = await fetch(base + path, {
			method: "POST",
			headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
			body: JSON.stringify(body),
		});
		const json = (await res.json()) as Record<string, unknown>;
		if (res.status !== 200) throw new Error(`POST ${path}: ${res.status} ${JSON.stringify(json)}`);
		return json;
	};
	let admin: Record<string, unknown> = {};
	await waitFor(async () => {
		const res = await fetch(`${base}/api/auth/login`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ username: "admin", password: BENCH_ADMIN_PASSWORD }) });
		if (res.status === 200) admin = (await res.json()) as Record<string, unknown>;
		return res.status === 200;
	}, "the platform administrator's login", 30_000);
	const login = { username: "bench-admin", password: MEMBER_PASSWORD };
	await post("/api/companies", { name: "Bench", code: "bench", admin: { ...login, name: "Bench admin" } }, admin.accessToken as string);
	const member = await post("/api/auth/login", login);
	return { token: member.accessToken as string, loginBody: JSON.stringify(login) };
}

function printTable(rows: Row[]): void {
	const rssText = (rss: Record<string, number>) => {
		const parts = Object.entries(rss);
		const total = parts.reduce((sum, [, mb]) => sum + mb, 0);
		return parts.map(([name, mb]) => `${name} ${mb.toFixed(0)}`).join(" + ") + (parts.length > 1 ? ` = ${total.toFixed(0)}` : "");
	};
	const table = [
		["scenario", "req/s", "p50 ms", "p99 ms", "errors", "peak RSS MB of the serving processes"],
		...rows.map(r => [r.name, r.result.rps.toFixed(0), r.result.p50.toFixed(2), r.result.p99.toFixed(2), String(r.result.errors), rssText(r.rss)]),
	];
	const widths = table[0].map((_, col) => Math.max(...table.map(line => line[col].length)));
	// Text columns (first and last) to the left, figures to the right.
	const align = (cell: string, col: number) => (col === 0 || col === widths.length - 1 ? cell.padEnd(widths[col]) : cell.padStart(widths[col]));
	console.log();
	table.forEach((line, i) => {
		console.log(line.map(align).join("  ").trimEnd());
		if (i === 0) console.log(widths.map(w => "-".repeat(w)).join("  "));
	});
}

async function main(): Promise<void> {
	if (!fs.existsSync(path.join(ROOT, CONFIG))) throw new Error(`${CONFIG} is missing: run \`npm run bench\`, which builds first`);
	const cpus = os.cpus();
	console.log(`cnbicloud bench: node ${process.version}, ${cpus.length} × ${cpus[0]?.model.trim() ?? "CPU"}`);
	console.log(`${CONNECTIONS} connections / concurrent calls, ${WARMUP} s warm-up + ${DURATION} s per scenario, ` +
		`Moleculer metrics ${METRICS.METRICS === "false" ? "off (BENCH_METRICS=false)" : "as configured (on by default)"}\n`);

	const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-bench-"));
	startReaper(tmp);
	cleanups.push(() => stopReaper(), () => fs.rmSync(tmp, { recursive: true, force: true }));
	const echoJs = transpile(path.join(__dirname, "echo.service.ts"), tmp);
	const bareJs = transpile(path.join(__dirname, "bare-server.ts"), tmp);

	const nats = await startNats();
	let natsPid = 0;
	cleanups.push(async () => {
		await nats.stop();
		if (natsPid) untrack(natsPid);
	});
	// startNats keeps its process to itself; the pid is needed for RSS and for the reaper.
	natsPid = findPid(argv => path.basename(argv[0]) === "nats-server" && argv.includes(String(nats.port)));
	track(natsPid);

	// Process B: the echo service on a node of its own, run like process A (plain node, dist config).
	const echo = new BenchProcess("echo node", [RUNNER, "--config", CONFIG, echoJs], childEnv({
		NODE_ID: "bench-echo", TRANSPORTER: nats.url, DATA_DIR: path.join(tmp, "echo"),
	}), ROOT);
	cleanups.push(() => echo.stop());

	// Process A: the gateway node group, exactly as scripts/node.sh starts it; no rate limits.
	const gatewayPort = await freePort();
	const gateway = new BenchProcess("gateway node", [RUNNER, "--config", CONFIG, "dist/services/gateway"], childEnv({
		NODE_ID: "bench-gateway", TRANSPORTER: nats.url, PORT: String(gatewayPort), HOST: "127.0.0.1",
		DATA_DIR: path.join(tmp, "gateway"), RATE_LIMIT_PER_IP: "0", RATE_LIMIT_PER_USER: "0",
	}), ROOT);
	cleanups.push(() => gateway.stop());

	// Process C: the platform and org node groups (security, users, roles, …) for the signed-in scenarios.
	const org = new BenchProcess("platform+org node", [RUNNER, "--config", CONFIG, "dist/services/platform", "dist/services/org"], childEnv({
		NODE_ID: "bench-org", TRANSPORTER: nats.url, DATA_DIR: path.join(tmp, "org"), ADMIN_PASSWORD: BENCH_ADMIN_PASSWORD, JWT_SECRET: "bench-secret",
	}), ROOT);
	cleanups.push(() => org.stop());

	const barePort = await freePort();
	const bare = new BenchProcess("bare http server", [bareJs], childEnv({ PORT: String(barePort) }), ROOT);
	cleanups.push(() => bare.stop());

	// The direct caller: a broker in this process, configured like every node, on the same NATS.
	const client = new ServiceBroker({
		...createBrokerConfig({
			NODE_ID: "bench-client", TRANSPORTER: nats.url, LOG_LEVEL: "warn", NO_COLOR: "1", DATA_DIR: path.join(tmp, "client"), ...METRICS,
		}),
		skipProcessEventRegistration: true,
	});
	await client.start();
	cleanups.push(() => client.stop());

	const gatewayUrl = `http://127.0.0.1:${gatewayPort}${PING_PATH}`;
	const bareUrl = `http://127.0.0.1:${barePort}${PING_PATH}`;
	await Promise.race([client.waitForServices("echo", 30_000), echo.failOnExit()]);
	// The gateway publishes the alias once it has seen the echo service in the registry.
	await waitForPong(gatewayUrl, gateway);
	await waitForPong(bareUrl, bare);
	const pong = (await client.call("echo.ping")) as { pong?: unknown };
	if (pong.pong !== true) throw new Error(`echo.ping answered ${JSON.stringify(pong)}`);
	await Promise.race([client.waitForServices(["security", "user", "auth", "company"], 30_000), org.failOnExit()]);
	const base = `http://127.0.0.1:${gatewayPort}`;
	const { token, loginBody } = await signIn(base);
	const guardedUrl = `${base}${GUARDED_PATH}`;
	await waitFor(async () => (await fetch(guardedUrl, { headers: { Authorization: `Bearer ${token}` } })).status === 200, "the guarded ping", 30_000);
	console.log("All up (nats-server, gateway node, echo node, platform+org node, bare server, client broker). Loading:");

	// Figures from a node that died under load mean nothing: check after every scenario.
	const alive = <T>(row: T): T => {
		for (const proc of [echo, gateway, org, bare]) if (!proc.running) throw new Error(`${proc.name} died during the run:\n${proc.output()}`);
		return row;
	};
	const rows = [
		alive(await scenario("bare node:http server", { bare: bare.pid }, s => httpLoad(bareUrl, CONNECTIONS, s))),
		alive(await scenario("direct broker.call over NATS", { echo: echo.pid, nats: natsPid }, s =>
			callLoad(() => client.call("echo.ping"), CONNECTIONS, s))),
		alive(await scenario("HTTP → gateway → NATS → echo", { gateway: gateway.pid, echo: echo.pid, nats: natsPid }, s =>
			httpLoad(gatewayUrl, CONNECTIONS, s))),
	];
	// Signed in: the same ping behind a permission (the gateway's cached token check), a token resolved
	// afresh every time (what a cache miss costs), and logins (scrypt).
	const authRows = [
		alive(await scenario("HTTP + token + permission → echo", { gateway: gateway.pid, echo: echo.pid, nats: natsPid }, s =>
			httpLoad(guardedUrl, CONNECTIONS, s, { headers: { Authorization: `Bearer ${token}` } }))),
		alive(await scenario("security.resolveToken over NATS (uncached)", { org: org.pid, nats: natsPid }, s =>
			callLoad(() => client.call("security.resolveToken", { token }), CONNECTIONS, s))),
		// scrypt runs on libuv's 4 threads: more concurrent logins than that only queue.
		alive(await scenario(`HTTP login → gateway → security (${LOGIN_CONNECTIONS} conn.)`, { gateway: gateway.pid, org: org.pid, nats: natsPid }, s =>
			httpLoad(`${base}/api/auth/login`, LOGIN_CONNECTIONS, s, { method: "POST", headers: { "Content-Type": "application/json" }, body: loginBody }))),
	];

	printTable(rows);
	const [bareRow, directRow, gatewayRow] = rows;
	const ratio = (base: Row) => (gatewayRow.result.rps / base.result.rps).toFixed(2);
	console.log(`\nGateway throughput: ${ratio(directRow)} × the direct NATS call, ${ratio(bareRow)} × the bare HTTP server.`);
	const added = (base: Row) => {
		const ms = gatewayRow.result.p50 - base.result.p50;
		return `${ms >= 0 ? "+" : "−"}${Math.abs(ms).toFixed(2)} ms`;
	};
	console.log(`Gateway p50 latency: ${added(directRow)} over the direct NATS call, ${added(bareRow)} over the bare HTTP server.`);
	printTable(authRows);
	const [guardedRow] = authRows;
	const checkMs = guardedRow.result.p50 - gatewayRow.result.p50;
	console.log(`\nToken and permission check (cached principal): ${checkMs >= 0 ? "+" : "−"}${Math.abs(checkMs).toFixed(2)} ms at p50, ` +
		`${(guardedRow.result.rps / gatewayRow.result.rps).toFixed(2)} × the unguarded route's throughput.`);
	rows.push(...authRows);
	for (const row of rows) if (row.result.firstError) console.log(`First error in '${row.name}': ${row.result.firstError}`);
	console.log(
		`\nThe load generator (autocannon, the client broker) runs in this process and shares the ${cpus.length} CPUs with ` +
		"the servers and NATS: compare the rows of one run with each other, not figures across machines.",
	);
}

runBench(main);
