/**
 * The whole platform in one broker (every service file under services/, as `npm start` runs it)
 * on a free port, and an HTTP client that signs in as its users.
 */
import { generateKeyPairSync } from "node:crypto";
import path from "node:path";
import type { ServiceBroker } from "moleculer";
import { createTestBroker } from "./broker";
import { randomUUID } from "node:crypto";
import { freePort, startNats, startRedis, testPostgres, waitFor } from "./servers";
import { startS3 } from "./s3";

export const ROOT = path.resolve(__dirname, "../..");
export const ADMIN_PASSWORD = "Platform-admin-1";

/** One licence key pair for the test run: the platform verifies with the public key and issues with the private one. */
export const LICENSE_KEYS = (() => {
	const { publicKey, privateKey } = generateKeyPairSync("ed25519");
	return {
		publicKey: publicKey.export({ type: "spki", format: "pem" }).toString(),
		privateKey: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
	};
})();

export interface Reply {
	status: number;
	body: any;
	headers: Headers;
}

/** An HTTP answer with its body parsed as JSON (or kept as text when it is not JSON). */
export async function replyOf(res: Response): Promise<Reply> {
	const text = await res.text();
	let body: unknown = text;
	try {
		body = text ? JSON.parse(text) : null;
	} catch {
		// not JSON
	}
	return { status: res.status, body, headers: res.headers };
}

/** A JSON client of the gateway, optionally signed in. */
export class Api {
	constructor(
		readonly url: string,
		public token: string | null = null,
		public refreshToken: string | null = null,
		public user: any = null,
	) {}

	async call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
		const res = await fetch(this.url + path, {
			method,
			headers: {
				...(body !== undefined ? { "Content-Type": "application/json" } : {}),
				...(this.token ? { Authorization: `Bearer ${this.token}` } : {}),
				...headers,
			},
			body: body === undefined ? undefined : JSON.stringify(body),
		});
		return replyOf(res);
	}

	get = (path: string) => this.call("GET", path);
	post = (path: string, body?: unknown) => this.call("POST", path, body ?? {});
	put = (path: string, body?: unknown) => this.call("PUT", path, body ?? {});
	delete = (path: string) => this.call("DELETE", path);

	/** The same gateway as another (or no) user. */
	as(token: string | null): Api {
		return new Api(this.url, token);
	}

	/** The same user through another gateway node. */
	via(url: string): Api {
		return new Api(url, this.token, this.refreshToken, this.user);
	}

	/** Signs in; throws with the answer when the login fails. */
	async login(username: string, password: string, device?: string): Promise<Api> {
		const res = await new Api(this.url).post("/api/auth/login", { username, password, ...(device ? { device } : {}) });
		if (res.status !== 200) throw new Error(`login ${username}: ${res.status} ${JSON.stringify(res.body)}`);
		return new Api(this.url, res.body.accessToken, res.body.refreshToken, res.body.user);
	}
}

/** Fails with the whole answer unless the status is the expected one; answers the body. */
export function expectStatus(reply: Reply, status: number, what = ""): any {
	if (reply.status !== status) throw new Error(`${what ? what + ": " : ""}expected ${status}, got ${reply.status} ${JSON.stringify(reply.body)}`);
	return reply.body;
}

export interface RunningOrg {
	broker: ServiceBroker;
	url: string;
	/** Every gateway of the platform (one when embedded); the same user can use any of them. */
	urls: string[];
	brokers: ServiceBroker[];
	/** The environment the nodes share (cluster mode): start more nodes of this cluster with it. */
	env: Record<string, string | undefined>;
	/** The platform administrator, signed in. */
	admin: Api;
	anonymous: Api;
	stop(): Promise<void>;
}

/** Every service, as the embedded platform runs them, with test licence keys and a known admin password. */
export async function startOrg(env: Record<string, string | undefined> = {}): Promise<RunningOrg> {
	const { broker, url } = await startNode(env);
	const anonymous = new Api(url);
	const admin = await anonymous.login("admin", ADMIN_PASSWORD);
	return { broker, url, urls: [url], brokers: [broker], env, admin, anonymous, stop: () => broker.stop() };
}

/** One node running every service, its gateway on a free port. */
async function startNode(env: Record<string, string | undefined>): Promise<{ broker: ServiceBroker; url: string }> {
	const port = await freePort();
	const broker = createTestBroker({
		PORT: String(port),
		HOST: "127.0.0.1",
		ADMIN_PASSWORD,
		LICENSE_PUBLIC_KEY: LICENSE_KEYS.publicKey,
		LICENSE_PRIVATE_KEY: LICENSE_KEYS.privateKey,
		RATE_LIMIT_PER_IP: "0",
		RATE_LIMIT_PER_USER: "0",
		...env,
	});
	broker.loadServices(path.join(ROOT, "services"), "**/*.service.ts");
	await broker.start();
	const url = `http://127.0.0.1:${port}`;
	await waitFor(async () => (await fetch(`${url}/api/ready`)).status === 200, "the platform to be ready");
	return { broker, url };
}

/**
 * The cluster mode: two nodes, each running every service with its own gateway, over a real
 * nats-server, sharing PostgreSQL (entities), Redis (sessions, lockout, presence, cache) and an
 * S3 server (file chunks).
 */
export async function startOrgCluster(env: Record<string, string | undefined> = {}): Promise<RunningOrg> {
	const servers: { stop(): Promise<unknown> }[] = [];
	const nats = await startNats();
	servers.push(nats);
	const redis = await startRedis();
	servers.push(redis);
	const s3 = await startS3();
	servers.push(s3);
	const pg = await testPostgres();
	const database = `org_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
	const shared = {
		TRANSPORTER: nats.url,
		REDIS_URL: redis.url,
		DATABASE_URL: await pg.createDatabase(database),
		NAMESPACE: database,
		JWT_SECRET: `test-secret-${randomUUID()}`,
		...s3.env,
		...env,
	};
	const nodes: { broker: ServiceBroker; url: string }[] = [];
	const stop = async () => {
		for (const node of nodes.reverse()) await node.broker.stop().catch(() => undefined);
		for (const server of servers.reverse()) await server.stop();
		if (pg.owned) await pg.stop();
	};
	try {
		// One after the other: the first creates the tables and the platform administrator.
		nodes.push(await startNode({ ...shared, NODE_ID: `${database}-1` }));
		nodes.push(await startNode({ ...shared, NODE_ID: `${database}-2` }));
		const url = nodes[0].url;
		const anonymous = new Api(url);
		const admin = await anonymous.login("admin", ADMIN_PASSWORD);
		return { broker: nodes[0].broker, url, urls: nodes.map(n => n.url), brokers: nodes.map(n => n.broker), env: shared, admin, anonymous, stop };
	} catch (err) {
		await stop();
		throw err;
	}
}

let seq = 0;
/** A unique suffix for names in one test run. */
export const unique = (prefix: string) => `${prefix}${Date.now().toString(36)}${(seq++).toString(36)}`;

export interface TestCompany {
	id: string;
	code: string;
	/** The company's administrator, signed in. */
	admin: Api;
	adminPassword: string;
}

/** A company created by the platform administrator, with its first administrator signed in. */
export async function createCompany(org: RunningOrg, fields: { licenseKey?: string; name?: string } = {}): Promise<TestCompany> {
	const code = unique("co-");
	const adminPassword = "Company-admin-1";
	const created = expectStatus(
		await org.admin.post("/api/companies", { name: fields.name ?? `Company ${code}`, code, licenseKey: fields.licenseKey, admin: { username: `${code}-admin`, password: adminPassword, name: "Admin" } }),
		200,
		"create company",
	);
	const admin = await org.anonymous.login(`${code}-admin`, adminPassword);
	return { id: created.id, code, admin, adminPassword };
}
