/**
 * The two ways an operator meets the platform, as processes started the documented way:
 * `npm start` (scripts/node.sh with no groups: everything embedded, no external server) serving
 * the API, the public pages and the docs page rendered in a real browser; and a cluster of
 * separately started node groups over NATS, listed and called from the REPL.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { chromium, type Browser } from "playwright-core";
import { tempDir } from "../support/broker";
import { ClusterNode, request, ROOT } from "../support/cluster";
import { freePort, startNats, type ServerProcess } from "../support/servers";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

describe("npm start: the whole platform embedded", () => {
	let node: ClusterNode;
	let url: string;
	let browser: Browser;

	before(async () => {
		const port = await freePort();
		url = `http://127.0.0.1:${port}`;
		// No TRANSPORTER, no DATABASE_URL, no REDIS_URL: nothing outside this process.
		node = new ClusterNode("embedded", { groups: [], env: { PORT: String(port), HOST: "127.0.0.1", DATA_DIR: tempDir() } });
		node.start();
		await node.started(async () => (await request(`${url}/api/ready`)).status === 200, "ready");
		browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
	});

	after(async () => {
		await browser?.close();
		await node?.stop();
	});

	it("serves health, readiness and the OpenAPI document", async () => {
		assert.equal((await request(`${url}/api/health`)).status, 200);
		const doc = (await request(`${url}/api/openapi.json`)).body as { openapi: string; paths: Record<string, unknown> };
		assert.match(doc.openapi, /^3\./);
		assert.ok(doc.paths["/api/config/{namespace}"], "the config routes are documented");
	});

	it("serves public/ at / and shows the platform's readiness there", async () => {
		const page = await browser.newPage();
		await page.goto(`${url}/`);
		await page.waitForSelector("#status.ok");
		assert.match((await page.textContent("#status")) ?? "", /Ready: config, registry, security/);
		await page.close();
	});

	it("creates the platform administrator on first start with a password printed once, which signs in", async () => {
		const printed = /Platform administrator 'admin' created\. Its password, shown only this once: (\S+)/.exec(node.process!.output());
		assert.ok(printed, `the generated password is printed:\n${node.process!.output()}`);
		const login = await request(`${url}/api/auth/login`, { "Content-Type": "application/json" }, { method: "POST", body: JSON.stringify({ username: "admin", password: printed[1] }) });
		assert.equal(login.status, 200, JSON.stringify(login.body));
		const me = await request(`${url}/api/auth/me`, { Authorization: `Bearer ${(login.body as { accessToken: string }).accessToken}` });
		assert.equal((me.body as { username: string }).username, "admin");
	});

	it("renders the docs page from /api/openapi.json", async () => {
		const page = await browser.newPage();
		const errors: string[] = [];
		page.on("pageerror", err => errors.push(err.message));
		await page.goto(`${url}/docs/`);
		// swagger-ui draws one block per operation once it has fetched and parsed the document.
		await page.waitForSelector(".opblock-summary-path[data-path='/api/config/{namespace}']", { timeout: 15_000 });
		const paths = await page.$$eval(".opblock-summary-path", els => els.map(e => e.getAttribute("data-path")));
		assert.ok(paths.includes("/api/health") && paths.includes("/api/registry/nodes"), `operations shown: ${paths.join(", ")}`);
		assert.deepEqual(errors, []);
		await page.close();
	});
});

describe("a cluster of node groups, operated from the REPL", () => {
	let nats: ServerProcess & { url: string };
	const nodes: ClusterNode[] = [];
	const namespace = `repl-${randomUUID().slice(0, 8)}`;

	before(async () => {
		nats = await startNats();
		const env = { TRANSPORTER: nats.url, NAMESPACE: namespace, PORT: String(await freePort()), HOST: "127.0.0.1", JWT_SECRET: randomUUID() };
		nodes.push(new ClusterNode("platform-1", { groups: ["platform"], env }), new ClusterNode("gateway-1", { groups: ["gateway"], env }));
		nodes.forEach(n => n.start());
		await nodes[1].started(async () => (await request(`http://127.0.0.1:${env.PORT}/api/ready`)).status === 200, "ready");
	});

	after(async () => {
		await Promise.all(nodes.map(n => n.stop()));
		await nats?.stop();
	});

	it("lists the nodes and calls an action on another node", async () => {
		// `npm run repl -- none` runs this: a node with no services of its own, joined to the cluster.
		const repl = spawn("sh", ["scripts/node.sh", "none", "--repl"], {
			cwd: ROOT,
			env: { PATH: process.env.PATH, HOME: process.env.HOME, TRANSPORTER: nats.url, NAMESPACE: namespace, NODE_ID: "operator", LOG_LEVEL: "warn", NO_COLOR: "1", DATA_DIR: tempDir() },
			stdio: ["pipe", "pipe", "pipe"],
		});
		let output = "";
		repl.stdout.on("data", d => (output += d));
		repl.stderr.on("data", d => (output += d));
		const until = async (pattern: RegExp, what: string) => {
			const deadline = Date.now() + 20_000;
			// eslint-disable-next-line no-control-regex -- the REPL colours its answers
			while (!pattern.test(output.replace(/\x1b\[[0-9;]*m/g, ""))) {
				if (Date.now() > deadline || repl.exitCode !== null) throw new Error(`no ${what} in the REPL's output:\n${output}`);
				await new Promise(r => setTimeout(r, 100));
			}
		};
		try {
			await until(/mol \$/, "prompt");
			// Discovery takes a moment after the prompt appears.
			await new Promise(r => setTimeout(r, 1_000));
			repl.stdin.write("nodes\n");
			await until(/gateway-1[\s\S]*platform-1|platform-1[\s\S]*gateway-1/, "node list");
			repl.stdin.write("call config.get --namespace demo\n");
			await until(/namespace: 'demo', version: 0, values: \{\}/, "answer from config.get");
		} finally {
			repl.kill("SIGKILL");
		}
	});
});
