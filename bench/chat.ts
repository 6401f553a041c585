/**
 * `npm run bench:chat` (builds first): real-time messaging through the platform, beside a plain
 * socket.io server measured in the same run on the same machine.
 *
 *   1. 1:1 chat: N socket.io clients (N/2 pairs, every client of a pair on the other gateway node)
 *      each send `chatmsg.send` to their peer in a closed loop (the next message once the ack is
 *      back). Figures: acknowledged messages per second, ack latency, and end-to-end latency (the
 *      emit to the peer's `chat.message` push, matched by clientMsgId).
 *   2. group fan-out: one message to a group of G members (G connections over both gateways):
 *      the time until the last member's connection has its `group.message`, over several rounds.
 *
 * The baseline (bench/socketio-baseline.ts, its own process) is a plain socket.io server driven
 * by the same client code: it acks `call` and emits the message to the same rooms, with no
 * storage, NATS or Redis behind it.
 *
 * The platform: nats-server and redis-server (Debian's packages) on free loopback ports, and five
 * node processes started by scripts/node.sh on the built files, as an operator starts them:
 * `gateway` ×2 (socket.io shares rooms through the Redis adapter), `platform`, `org` and
 * `messaging`, each with NeDB files of its own (one replica of every stateful service). The
 * company, its licence (a key pair generated here), users and group are made through the HTTP
 * API as a client would. Every process is stopped at the end, also on error or Ctrl-C, and a
 * detached reaper (reaper.ts) stops them even if this process is killed outright.
 *
 * Settings (command line `--clients 100` / `--clients=100`, or the environment):
 *   --clients     BENCH_CLIENTS        chat connections, even (default 50)
 *   --duration    BENCH_DURATION       measured seconds per chat scenario (default 10)
 *   --warmup      BENCH_WARMUP         warm-up seconds before each (default 2)
 *   --group-size  BENCH_GROUP_SIZE     members of the fan-out group (default 500; 0 skips the fan-out)
 *   --rounds      BENCH_FANOUT_ROUNDS  measured fan-out messages (default 5)
 *                 BENCH_METRICS=false  every node with METRICS=false (default: the project's, on)
 */
import { generateKeyPairSync, randomUUID } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { io, type Socket } from "socket.io-client";
import { NodeProcess } from "../test/support/node-process";
import { freePort, startNats, startRedis, waitFor } from "../test/support/servers";
import { BenchProcess, findPid, RssSampler, startReaper, stopReaper, track, transpile, untrack, cleanups, runBench } from "./processes";

const ROOT = path.resolve(__dirname, "..");
const ADMIN_PASSWORD = "Bench-admin-1";
const MEMBER_PASSWORD = "Bench-member-1";
/** Concurrent user creations + logins (scrypt: the org and platform nodes hash on libuv's threads). */
const SETUP_CONCURRENCY = 8;
/** Concurrent socket.io handshakes while connecting the fan-out group. */
const CONNECT_CONCURRENCY = 25;
const CALL_TIMEOUT_MS = 15_000;
/** How long pushes of acknowledged messages may still arrive after a scenario before they count as missing. */
const PUSH_GRACE_MS = 5_000;
const FANOUT_TIMEOUT_MS = 30_000;

function setting(flag: string, env: string, fallback: number, min: number): number {
	const args = process.argv.slice(2);
	let raw: string | undefined;
	for (let i = 0; i < args.length; i++) {
		if (args[i] === `--${flag}`) raw = args[i + 1];
		else if (args[i].startsWith(`--${flag}=`)) raw = args[i].slice(flag.length + 3);
	}
	raw ??= process.env[env];
	const value = raw ? Number(raw) : fallback;
	if (!Number.isFinite(value) || value < min) throw new Error(`--${flag} / ${env} must be a number >= ${min}, got '${raw}'`);
	return value;
}

const CLIENTS = Math.round(setting("clients", "BENCH_CLIENTS", 50, 2));
if (CLIENTS % 2) throw new Error(`--clients must be even (pairs), got ${CLIENTS}`);
const DURATION = setting("duration", "BENCH_DURATION", 10, 1);
const WARMUP = setting("warmup", "BENCH_WARMUP", 2, 0);
const GROUP_SIZE = Math.round(setting("group-size", "BENCH_GROUP_SIZE", 500, 0));
if (GROUP_SIZE === 1) throw new Error("--group-size must be 0 (no fan-out) or at least 2");
const ROUNDS = Math.round(setting("rounds", "BENCH_FANOUT_ROUNDS", 5, 1));
const METRICS: Record<string, string> = process.env.BENCH_METRICS ? { METRICS: process.env.BENCH_METRICS } : {};

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** Nearest-rank percentile of `samples` (ms). */
function percentile(samples: number[], q: number): number {
	if (samples.length === 0) return NaN;
	const sorted = Float64Array.from(samples).sort();
	return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
}

const ms = (v: number) => (Number.isNaN(v) ? "-" : v.toFixed(2));

/** Clock ticks per second of /proc/<pid>/stat's times (USER_HZ: 100 on Linux, whatever the kernel's HZ). */
const CLK_TCK = 100;

/** CPU time (user + system, seconds) a process has used so far, NaN when it cannot be read. */
function cpuSeconds(pid: number): number {
	try {
		const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
		// Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
		const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
		return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
	} catch {
		return NaN;
	}
}

/** CPU seconds each named process (and this one, the clients) used between start() and stop(). */
class CpuMeter {
	private readonly before = new Map<string, number>();
	private clients = process.cpuUsage();
	private t0 = 0;

	constructor(private readonly pids: Record<string, number>) {}

	start(): this {
		for (const [name, pid] of Object.entries(this.pids)) this.before.set(name, cpuSeconds(pid));
		this.clients = process.cpuUsage();
		this.t0 = performance.now();
		return this;
	}

	/** CPU seconds per process, `clients` for this process, and the wall-clock seconds measured. */
	stop(): { cpu: Record<string, number>; seconds: number } {
		const cpu: Record<string, number> = {};
		for (const [name, pid] of Object.entries(this.pids)) cpu[name] = cpuSeconds(pid) - (this.before.get(name) ?? NaN);
		const used = process.cpuUsage(this.clients);
		cpu.clients = (used.user + used.system) / 1e6;
		return { cpu, seconds: (performance.now() - this.t0) / 1000 };
	}
}

// --- HTTP

interface Reply {
	status: number;
	body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

async function api(base: string, method: string, route: string, body?: unknown, token?: string): Promise<Reply> {
	const res = await fetch(base + route, {
		method,
		headers: { ...(body !== undefined ? { "Content-Type": "application/json" } : {}), ...(token ? { Authorization: `Bearer ${token}` } : {}) },
		body: body === undefined ? undefined : JSON.stringify(body),
		signal: AbortSignal.timeout(60_000),
	});
	const text = await res.text();
	let parsed: unknown = text;
	try {
		parsed = text ? JSON.parse(text) : null;
	} catch {
		// not JSON
	}
	return { status: res.status, body: parsed };
}

/** The body of a 2xx answer; throws with the whole answer otherwise. */
async function ok(reply: Promise<Reply>, what: string): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
	const r = await reply;
	if (r.status < 200 || r.status > 299) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
	return r.body;
}

async function login(base: string, username: string, password: string): Promise<{ token: string; id: string }> {
	const body = await ok(api(base, "POST", "/api/auth/login", { username, password }), `login ${username}`);
	return { token: body.accessToken as string, id: body.user.id as string };
}

// --- socket.io clients

interface BenchUser {
	id: string;
	token: string;
}

function connect(url: string, auth: Record<string, unknown>): Promise<Socket> {
	const socket = io(url, { path: "/socket.io", auth, transports: ["websocket"], reconnection: false, forceNew: true, timeout: 20_000 });
	return new Promise((resolve, reject) => {
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", err => {
			socket.close();
			reject(new Error(`socket.io handshake with ${url}: ${err.message} ${JSON.stringify((err as { data?: unknown }).data ?? "")}`));
		});
	});
}

/** Connects `count` sockets with at most `concurrency` handshakes at a time. */
async function connectAll(count: number, concurrency: number, open: (i: number) => Promise<Socket>): Promise<Socket[]> {
	const sockets: Socket[] = new Array(count);
	let next = 0;
	const worker = async () => {
		for (let i = next++; i < count; i = next++) sockets[i] = await open(i);
	};
	try {
		await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
	} catch (err) {
		sockets.forEach(s => s?.close());
		throw err;
	}
	return sockets;
}

/** `socket.emit("call", action, params, ack)`: the ack's `(err, result)`, or a timeout as the error. */
function call(socket: Socket, action: string, params: object): Promise<{ err: unknown; result: unknown }> {
	return new Promise(resolve =>
		socket.timeout(CALL_TIMEOUT_MS).emit("call", action, params, (timeout: Error | null, err: unknown, result: unknown) =>
			resolve(timeout ? { err: `no ack within ${CALL_TIMEOUT_MS} ms`, result: undefined } : { err, result })),
	);
}

// --- 1:1 chat

interface ChatStats {
	sent: number;
	acked: number;
	errors: number;
	firstError?: string;
	ack: number[];
	e2e: number[];
}

interface ChatResult {
	acked: number;
	msgsPerSecond: number;
	ackP50: number;
	ackP99: number;
	e2eP50: number;
	e2eP99: number;
	errors: number;
	/** Acknowledged messages whose push never reached the peer (within PUSH_GRACE_MS after the run). */
	missing: number;
	firstError?: string;
	/** Acknowledged messages per second in each fifth of the measured run: a store that slows as it fills shows here. */
	trend: number[];
}

/** Sent and not yet pushed to the peer, by clientMsgId. */
const inFlight = new Map<string, { t0: number; stats: ChatStats }>();

interface ChatClient {
	socket: Socket;
	me: string;
	peer: string;
}

/** A chat client: records the end-to-end latency of every message pushed to it by its peer. */
function chatClient(socket: Socket, me: string, peer: string): ChatClient {
	socket.on("chat.message", (data: { to?: string; clientMsgId?: string }) => {
		if (data?.to !== me || !data.clientMsgId) return; // the sender's own copy
		const entry = inFlight.get(data.clientMsgId);
		if (!entry) return;
		inFlight.delete(data.clientMsgId);
		entry.stats.e2e.push(performance.now() - entry.t0);
	});
	return { socket, me, peer };
}

/** Every client sends to its peer in a closed loop for `seconds`. */
async function chatLoad(clients: ChatClient[], seconds: number): Promise<ChatResult> {
	const stats: ChatStats = { sent: 0, acked: 0, errors: 0, ack: [], e2e: [] };
	const start = performance.now();
	const deadline = start + seconds * 1000;
	const buckets = new Array<number>(5).fill(0);
	let counter = 0;

	async function loop(client: ChatClient): Promise<void> {
		while (performance.now() < deadline) {
			const clientMsgId = `b${(counter++).toString(36)}-${randomUUID().slice(0, 8)}`;
			const t0 = performance.now();
			inFlight.set(clientMsgId, { t0, stats });
			stats.sent++;
			const { err } = await call(client.socket, "chatmsg.send", { to: client.peer, type: "text", content: `bench message ${clientMsgId}`, clientMsgId });
			const t1 = performance.now();
			if (err) {
				inFlight.delete(clientMsgId);
				stats.errors++;
				stats.firstError ??= typeof err === "string" ? err : JSON.stringify(err);
				await new Promise(resolve => setImmediate(resolve));
				continue;
			}
			stats.acked++;
			stats.ack.push(t1 - t0);
			buckets[Math.min(4, Math.floor(((t1 - start) / (seconds * 1000)) * 5))]++;
		}
	}

	await Promise.all(clients.map(loop));
	const elapsed = (performance.now() - start) / 1000;
	const pushed = () => stats.e2e.length;
	await waitFor(() => pushed() >= stats.acked, "", PUSH_GRACE_MS).catch(() => undefined);
	// Whatever is left of this run is missing (a failed send was never counted).
	for (const [id, entry] of inFlight) if (entry.stats === stats) inFlight.delete(id);
	return {
		acked: stats.acked,
		msgsPerSecond: stats.acked / elapsed,
		ackP50: percentile(stats.ack, 0.5),
		ackP99: percentile(stats.ack, 0.99),
		e2eP50: percentile(stats.e2e, 0.5),
		e2eP99: percentile(stats.e2e, 0.99),
		errors: stats.errors,
		missing: Math.max(0, stats.acked - pushed()),
		firstError: stats.firstError,
		trend: buckets.map(n => n / (seconds / 5)),
	};
}

interface Row {
	name: string;
	result: ChatResult;
	rss: Record<string, number>;
	/** CPU seconds per process during the measured run (`clients`: this process). */
	cpu: Record<string, number>;
	seconds: number;
}

/** Pairs (2k, 2k+1) over `urls` (client i on urls[i % length]), a warm-up run, then the measured run while `serving` is sampled. */
async function chatScenario(name: string, users: BenchUser[], urls: string[], auth: (u: BenchUser) => Record<string, unknown>, serving: Record<string, number>): Promise<Row> {
	process.stdout.write(`  ${name}: ${CLIENTS} clients, ${WARMUP} s warm-up, ${DURATION} s measured… `);
	const sockets = await connectAll(CLIENTS, CONNECT_CONCURRENCY, i => connect(urls[i % urls.length], auth(users[i])));
	try {
		const clients = sockets.map((s, i) => chatClient(s, users[i].id, users[i ^ 1].id));
		if (WARMUP > 0) await chatLoad(clients, WARMUP);
		const sampler = new RssSampler(serving).start();
		const meter = new CpuMeter(serving).start();
		const result = await chatLoad(clients, DURATION);
		const { cpu, seconds } = meter.stop();
		const rss = sampler.stop();
		console.log(`${Math.round(result.msgsPerSecond)} msgs/s`);
		return { name, result, rss, cpu, seconds };
	} finally {
		sockets.forEach(s => s.close());
	}
}

// --- Group fan-out

interface FanoutRound {
	ack: number;
	first: number;
	median: number;
	last: number;
	/** Members that never got it (within FANOUT_TIMEOUT_MS). */
	missing: number;
}

interface FanoutResult {
	name: string;
	connectSeconds: number;
	rounds: FanoutRound[];
	rss: Record<string, number>;
}

/**
 * `members[0]` posts one message to the group per round (a warm-up round first); every member's
 * connection, the sender's included, records when it arrived.
 */
async function fanout(name: string, members: Socket[], groupId: string, connectSeconds: number, serving: Record<string, number>): Promise<FanoutResult> {
	const arrivals = new Map<string, { t0: number; times: number[] }>();
	for (const socket of members)
		socket.on("group.message", (data: { clientMsgId?: string }) => {
			const round = data?.clientMsgId ? arrivals.get(data.clientMsgId) : undefined;
			if (round) round.times.push(performance.now() - round.t0);
		});
	const rounds: FanoutRound[] = [];
	const sampler = new RssSampler(serving);
	let rss: Record<string, number> = {};
	try {
		for (let r = 0; r <= ROUNDS; r++) {
			if (r === 1) sampler.start();
			const clientMsgId = `fanout-${r}-${randomUUID().slice(0, 8)}`;
			const round = { t0: performance.now(), times: [] as number[] };
			arrivals.set(clientMsgId, round);
			const { err } = await call(members[0], "groupmsg.send", { id: groupId, type: "text", content: `fan-out round ${r}`, clientMsgId });
			const ack = performance.now() - round.t0;
			if (err) throw new Error(`${name}: groupmsg.send failed: ${JSON.stringify(err)}`);
			await waitFor(() => round.times.length >= members.length, "", FANOUT_TIMEOUT_MS).catch(() => undefined);
			arrivals.delete(clientMsgId);
			const times = round.times;
			if (r > 0)
				rounds.push({
					ack,
					first: times.length ? Math.min(...times) : NaN,
					median: percentile(times, 0.5),
					last: times.length ? Math.max(...times) : NaN,
					missing: members.length - times.length,
				});
			await sleep(250);
		}
	} finally {
		rss = sampler.stop();
	}
	return { name, connectSeconds, rounds, rss };
}

// --- Output

function rssText(rss: Record<string, number>): string {
	const parts = Object.entries(rss);
	const total = parts.reduce((sum, [, mb]) => sum + mb, 0);
	return parts.map(([n, mb]) => `${n} ${mb.toFixed(0)}`).join(" + ") + (parts.length > 1 ? ` = ${total.toFixed(0)}` : "");
}

function printTable(table: string[][], leftColumns: number[]): void {
	const widths = table[0].map((_, col) => Math.max(...table.map(line => line[col].length)));
	const align = (cell: string, col: number) => (leftColumns.includes(col) ? cell.padEnd(widths[col]) : cell.padStart(widths[col]));
	console.log();
	table.forEach((line, i) => {
		console.log(line.map(align).join("  ").trimEnd());
		if (i === 0) console.log(widths.map(w => "-".repeat(w)).join("  "));
	});
}

function printChat(rows: Row[]): void {
	const header = ["scenario", "msgs/s", "e2e p50 ms", "e2e p99 ms", "ack p50 ms", "ack p99 ms", "errors", "missing", "peak RSS MB"];
	const last = header.length - 1;
	printTable([header, ...rows.map(r => [
		r.name, r.result.msgsPerSecond.toFixed(0), ms(r.result.e2eP50), ms(r.result.e2eP99), ms(r.result.ackP50), ms(r.result.ackP99),
		String(r.result.errors), String(r.result.missing), rssText(r.rss),
	])], [0, last]);
}

function printFanout(results: FanoutResult[]): void {
	const median = (values: number[]) => percentile(values, 0.5);
	const header = ["fan-out", "connect s", "ack ms (med)", "first ms (med)", "median member ms (med)", "last member ms (med)", "last member ms (max)", "missing", "peak RSS MB"];
	const last = header.length - 1;
	printTable([header, ...results.map(f => [
		f.name, f.connectSeconds.toFixed(1), ms(median(f.rounds.map(r => r.ack))), ms(median(f.rounds.map(r => r.first))), ms(median(f.rounds.map(r => r.median))),
		ms(median(f.rounds.map(r => r.last))), ms(Math.max(...f.rounds.map(r => r.last))), String(f.rounds.reduce((n, r) => n + r.missing, 0)), rssText(f.rss),
	])], [0, last]);
	for (const f of results) console.log(`${f.name}: last member per round (ms): ${f.rounds.map(r => r.last.toFixed(1)).join(", ")}`);
}

interface FanoutSetup {
	users: BenchUser[];
	urls: string[];
	baselineUrl: string;
	/** The platform administrator's token. */
	admin: string;
	/** Fails as soon as a child process exits. */
	up<T>(work: Promise<T>): Promise<T>;
	/** Throws when a child process died. */
	alive<T>(value: T): T;
	baselinePid: number;
	platformPids: Record<string, number>;
}

/** One message to a group of GROUP_SIZE members, from the plain socket.io server and through the platform. */
async function groupFanout({ users, urls, baselineUrl, admin, up, alive, baselinePid, platformPids }: FanoutSetup): Promise<void> {
	console.log(`\nGroup fan-out (one message to ${GROUP_SIZE} members, every member connected; ${ROUNDS} rounds after a warm-up round):`);
	const members = users.slice(0, GROUP_SIZE);
	const fanouts: FanoutResult[] = [];

	// Baseline: the same sockets in one room of the plain server.
	{
		const tc = performance.now();
		const sockets = await up(connectAll(GROUP_SIZE, CONNECT_CONCURRENCY, i => connect(baselineUrl, { token: members[i].id, groups: ["bench"] })));
		try {
			fanouts.push(alive(await up(fanout("socket.io baseline (no platform)", sockets, "bench", (performance.now() - tc) / 1000, { baseline: baselinePid }))));
		} finally {
			sockets.forEach(s => s.close());
		}
	}

	// Platform: the first user owns the group; everyone connects afterwards (the handshake joins the group's room).
	const owner = members[0];
	const createGroup = () => api(urls[0], "POST", "/api/groups", { name: "Fan-out bench", memberIds: members.slice(1).map(m => m.id) }, owner.token);
	const tg = performance.now();
	let created = await createGroup();
	if (created.status === 422 && created.body?.type === "GROUP_FULL") {
		// The size limit is a live setting (config namespace `groups`): raise it for the bench.
		const current = await ok(api(urls[0], "GET", "/api/config/groups", undefined, admin), "groups config");
		await ok(api(urls[0], "PUT", "/api/config/groups", { values: { ...(current.values ?? {}), maxMembers: GROUP_SIZE } }, admin), "raise groups.maxMembers");
		await up(waitFor(async () => (created = await createGroup()).status !== 422, "the raised group size limit", 10_000).catch(() => undefined));
	}
	if (created.status !== 200) throw new Error(`create group: ${created.status} ${JSON.stringify(created.body)}`);
	const groupId = created.body.id as string;
	console.log(`  group of ${GROUP_SIZE} created in ${((performance.now() - tg) / 1000).toFixed(1)} s (POST /api/groups)`);
	{
		const tc = performance.now();
		const sockets = await up(connectAll(GROUP_SIZE, CONNECT_CONCURRENCY, i => connect(urls[i % urls.length], { token: members[i].token })));
		try {
			fanouts.push(alive(await up(fanout("platform: groupmsg → NATS → 2 gateways", sockets, groupId, (performance.now() - tc) / 1000, platformPids))));
		} finally {
			sockets.forEach(s => s.close());
		}
	}
	printFanout(fanouts);
	const [baseFan, platformFan] = fanouts.map(f => percentile(f.rounds.map(r => r.last), 0.5));
	console.log(`\nLast member reached: ${platformFan.toFixed(1)} ms through the platform vs ${baseFan.toFixed(1)} ms from the plain socket.io server (medians).`);
}

// --- Main

/**
 * A child's environment: only what is given here, so that the developer's own TRANSPORTER,
 * REDIS_URL, DATABASE_URL or NODE_OPTIONS (tsx) cannot change what is measured.
 */
function childEnv(vars: Record<string, string>): NodeJS.ProcessEnv {
	return { PATH: process.env.PATH, HOME: process.env.HOME, NO_COLOR: "1", LOG_LEVEL: "warn", ...METRICS, ...vars };
}

/** A node as an operator starts it: `sh scripts/node.sh <groups>` (which execs node: the pid is the node's). */
function startNode(name: string, groups: string[], env: NodeJS.ProcessEnv): NodeProcess {
	const proc = new NodeProcess(name, ["scripts/node.sh", ...groups], env, ROOT, { command: "sh", spawned: track, exited: untrack });
	cleanups.push(() => proc.stop());
	return proc;
}

/** A process of Debian's packages started by test/support (which keeps its pid to itself): found by name and port, for RSS and the reaper. */
function serverPid(binary: string, port: number): number {
	const pid = findPid(argv => {
		const line = argv.join(" ");
		return path.basename(argv[0]).startsWith(binary) && (argv.includes(String(port)) || line.includes(`:${port}`));
	});
	track(pid);
	return pid;
}

async function main(): Promise<void> {
	if (!fs.existsSync(path.join(ROOT, "dist/moleculer.config.js"))) throw new Error("dist/ is missing: run `npm run bench:chat`, which builds first");
	const cpus = os.cpus();
	const userCount = Math.max(CLIENTS, GROUP_SIZE);
	// Other work on the machine takes CPU from the servers: the load average says how much there was.
	console.log(`cnbicloud chat bench: node ${process.version}, ${cpus.length} × ${cpus[0]?.model.trim() ?? "CPU"}, load average ${os.loadavg()[0].toFixed(2)} before starting`);
	console.log(`${CLIENTS} chat clients (${CLIENTS / 2} pairs), ${WARMUP} s warm-up + ${DURATION} s per scenario; ` +
		`fan-out to ${GROUP_SIZE || "no"} members, ${ROUNDS} rounds; Moleculer metrics ${METRICS.METRICS === "false" ? "off (BENCH_METRICS=false)" : "as configured (on by default)"}\n`);

	const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-bench-chat-"));
	startReaper(tmp);
	cleanups.push(() => stopReaper(), () => fs.rmSync(tmp, { recursive: true, force: true }));

	// Servers first: NATS (transporter) and Redis (sessions, presence, cacher, socket.io adapter).
	const nats = await startNats();
	let natsPid = 0;
	cleanups.push(async () => {
		await nats.stop();
		if (natsPid) untrack(natsPid);
	});
	natsPid = serverPid("nats-server", nats.port);
	const redis = await startRedis();
	let redisPid = 0;
	cleanups.push(async () => {
		await redis.stop();
		if (redisPid) untrack(redisPid);
	});
	redisPid = serverPid("redis-server", redis.port);

	// The baseline: a plain socket.io server; socket.io is resolved from the project's node_modules.
	const baselineJs = transpile(path.join(__dirname, "socketio-baseline.ts"), tmp);
	const baselinePort = await freePort();
	const baseline = new BenchProcess("socket.io baseline", [baselineJs], childEnv({ PORT: String(baselinePort), NODE_PATH: path.join(ROOT, "node_modules") }), ROOT);
	cleanups.push(() => baseline.stop());
	const baselineUrl = `http://127.0.0.1:${baselinePort}`;

	// The platform: five nodes over NATS, sharing Redis; licences issued with a key pair of this run.
	const keys = generateKeyPairSync("ed25519");
	const shared = {
		TRANSPORTER: nats.url, REDIS_URL: redis.url, JWT_SECRET: `bench-${randomUUID()}`, NAMESPACE: "chatbench",
		RATE_LIMIT_PER_IP: "0", RATE_LIMIT_PER_USER: "0", ADMIN_PASSWORD,
		LICENSE_PUBLIC_KEY: keys.publicKey.export({ type: "spki", format: "pem" }).toString(),
	};
	const node = (id: string, extra: Record<string, string> = {}) => childEnv({ ...shared, NODE_ID: `bench-${id}`, DATA_DIR: path.join(tmp, id), ...extra });
	const gatewayPorts = [await freePort(), await freePort()];
	const gateways = gatewayPorts.map((port, i) =>
		startNode(`gateway ${i + 1}`, ["gateway"], node(`gw${i + 1}`, { PORT: String(port), HOST: "127.0.0.1", SOCKET_PORT: "0", SOCKET_HOST: "127.0.0.1" })));
	const platform = startNode("platform node", ["platform"], node("platform"));
	const org = startNode("org node", ["org"], node("org", { LICENSE_PRIVATE_KEY: keys.privateKey.export({ type: "pkcs8", format: "pem" }).toString() }));
	const messaging = startNode("messaging node", ["messaging"], node("messaging"));
	const nodes = [...gateways, platform, org, messaging];
	const anyExit = Promise.race([...nodes, baseline].map(p => p.failOnExit()));
	anyExit.catch(() => undefined);
	const urls = gatewayPorts.map(port => `http://127.0.0.1:${port}`);
	const up = <T>(work: Promise<T>) => Promise.race([work, anyExit]);

	// Ready: both gateways, the platform administrator, and every service routed on both gateways.
	const t0 = performance.now();
	for (const url of urls) await up(waitFor(async () => (await fetch(`${url}/api/ready`)).status === 200, `${url}/api/ready`, 60_000));
	await up(waitFor(async () => (await fetch(baselineUrl + "/socket.io/?EIO=4&transport=polling")).status === 200, "the socket.io baseline", 30_000));
	let admin = "";
	await up(waitFor(async () => {
		admin = (await login(urls[0], "admin", ADMIN_PASSWORD)).token;
		return true;
	}, "the platform administrator's login", 60_000));
	const groupmsgBuilt = fs.existsSync(path.join(ROOT, "dist/services/messaging/groupmsg.service.js"));
	const required = ["user", "company", "license", "online", "chatmsg", "chatconv", ...(groupmsgBuilt ? ["group", "groupmember", "groupmsg"] : [])];
	await up(waitFor(async () => {
		const nodeList = await ok(api(urls[0], "GET", "/api/registry/nodes", undefined, admin), "registry") as { available: boolean; services: string[] }[];
		const running = new Set(nodeList.filter(n => n.available).flatMap(n => n.services));
		return required.every(s => running.has(s));
	}, `services ${required.join(", ")}`, 60_000));

	// Each gateway builds its routes from its own view of the registry, a moment after it changes.
	for (const url of urls)
		await up(waitFor(async () => (await api(url, "GET", "/api/companies", undefined, admin)).status === 200 &&
			(await api(url, "POST", "/api/licenses/verify", { key: "x" }, admin)).status !== 404, `org routes on ${url}`, 30_000));

	// A company licensed for messaging, with room for everyone, and its administrator.
	const licence = await ok(api(urls[0], "POST", "/api/licenses", {
		licensee: "Chat bench", type: "enterprise", edition: "commercial", seats: userCount + 10, features: ["messaging"],
		expiresAt: new Date(Date.now() + 24 * 3600 * 1000).toISOString(),
	}, admin), "issue licence");
	await ok(api(urls[0], "POST", "/api/companies", {
		name: "Chat bench", code: "chatbench", licenseKey: licence.key, admin: { username: "chatbench-admin", password: MEMBER_PASSWORD, name: "Bench admin" },
	}, admin), "create company");
	const companyAdmin = await login(urls[0], "chatbench-admin", MEMBER_PASSWORD);
	// Each gateway learns the messaging routes from its own registry: wait for both.
	for (const url of urls)
		await up(waitFor(async () => (await api(url, "GET", "/api/chat/conversations", undefined, companyAdmin.token)).status === 200 &&
			(!groupmsgBuilt || (await api(url, "GET", "/api/groups", undefined, companyAdmin.token)).status === 200), `messaging routes on ${url}`, 30_000));
	console.log(`Platform up in ${((performance.now() - t0) / 1000).toFixed(1)} s (nats-server, redis-server, gateway ×2, platform, org, messaging; socket.io baseline).`);

	// The users: created and signed in over both gateways (scrypt twice each: this is the slow part of the set-up).
	process.stdout.write(`Creating and signing in ${userCount} users (${SETUP_CONCURRENCY} at a time)… `);
	const t1 = performance.now();
	const users: BenchUser[] = new Array(userCount);
	let nextUser = 0;
	await up(Promise.all(Array.from({ length: SETUP_CONCURRENCY }, async () => {
		for (let i = nextUser++; i < userCount; i = nextUser++) {
			const url = urls[i % urls.length];
			const username = `bench-u${String(i).padStart(4, "0")}`;
			await ok(api(url, "POST", "/api/users", { username, password: MEMBER_PASSWORD, name: `Bench user ${i}` }, companyAdmin.token), `create ${username}`);
			users[i] = await login(url, username, MEMBER_PASSWORD);
		}
	})));
	console.log(`done in ${((performance.now() - t1) / 1000).toFixed(1)} s.`);

	// Figures from a node that died under load mean nothing: check after every scenario.
	const alive = <T>(value: T): T => {
		for (const proc of [...nodes, baseline]) if (!proc.running) throw new Error(`${proc.name} died during the run:\n${proc.output()}`);
		return value;
	};
	const platformPids = {
		gw1: gateways[0].pid, gw2: gateways[1].pid, platform: platform.pid, org: org.pid, messaging: messaging.pid, nats: natsPid, redis: redisPid,
	};

	console.log("\n1:1 chat (closed loop: the next message once the ack is back):");
	const rows: Row[] = [];
	rows.push(alive(await up(chatScenario("socket.io baseline (no platform)", users, [baselineUrl], u => ({ token: u.id }), { baseline: baseline.pid }))));
	rows.push(alive(await up(chatScenario("platform: 2 gateways → NATS → chatmsg", users, urls, u => ({ token: u.token }), platformPids))));
	printChat(rows);
	const [baseRow, platformRow] = rows;
	console.log(`\nPlatform throughput: ${(platformRow.result.msgsPerSecond / baseRow.result.msgsPerSecond).toFixed(2)} × the plain socket.io server; ` +
		`end-to-end p50 +${(platformRow.result.e2eP50 - baseRow.result.e2eP50).toFixed(2)} ms.`);
	for (const row of rows) {
		console.log(`${row.name}: acknowledged msgs/s per fifth of the run: ${row.result.trend.map(v => v.toFixed(0)).join(", ")}`);
		const messages = row.result.acked;
		const total = Object.values(row.cpu).reduce((sum, s) => sum + s, 0);
		console.log(`  CPU ms per acknowledged message: ${Object.entries(row.cpu).map(([n, s]) => `${n} ${((s * 1000) / messages).toFixed(2)}`).join(", ")}` +
			` (${((total * 1000) / messages).toFixed(2)} in all; ${total.toFixed(1)} CPU s in ${row.seconds.toFixed(1)} s on ${os.cpus().length} CPUs)`);
		if (row.result.firstError) console.log(`  first error: ${row.result.firstError}`);
	}

	// Group fan-out.
	if (GROUP_SIZE === 0) console.log("\ngroup fan-out: not run (--group-size 0)");
	else if (!groupmsgBuilt) console.log("\ngroup fan-out: skipped (groupmsg not available)");
	else await groupFanout({ users, urls, baselineUrl, admin, up, alive, baselinePid: baseline.pid, platformPids });
	console.log(`\nLoad average (1 min) at the end: ${os.loadavg()[0].toFixed(2)}.`);
	console.log(
		`\nThe clients (${Math.max(CLIENTS, GROUP_SIZE)} socket.io connections at most) run in this process and share the ${cpus.length} CPUs with ` +
		"the servers, NATS and Redis: compare the rows of one run with each other, not figures across machines.",
	);
}

runBench(main);
