/**
 * The gateway over real HTTP: routing by alias only, the authentication and authorisation
 * hooks, the error body, request ids, ETag, CORS, rate limits, health/ready/metrics/OpenAPI,
 * the docs page and the static files.
 */
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { Errors, type Context, type ServiceSchema } from "moleculer";
import { AUTHENTICATED, PLATFORM_ADMIN } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import ConfigService from "../../services/platform/config.service";
import GatewayService from "../../services/gateway/gateway.service";
import { startPlatform, type RunningGateway } from "../support/platform";
import { bearer } from "../support/security.stub";

const Probe: ServiceSchema = {
	name: "probe",
	settings: { rest: "/probe" },
	actions: {
		echo: {
			rest: "POST /echo",
			permission: "probe:read",
			params: { $$strict: true, text: { type: "string", max: 10 }, n: { type: "number", optional: true } },
			handler(ctx: Context<{ text: string }, RequestMeta>) {
				return { text: ctx.params.text, requestID: ctx.requestID, user: ctx.meta.user?.username };
			},
		},
		whoami: { rest: "GET /whoami", permission: AUTHENTICATED, handler: (ctx: Context<unknown, RequestMeta>) => ctx.meta.user },
		admin: { rest: "GET /admin", permission: PLATFORM_ADMIN, handler: () => ({ ok: true }) },
		undeclared: { rest: "GET /undeclared", handler: () => ({ reached: true }) },
		open: {
			rest: "GET /open",
			auth: false,
			handler: (ctx: Context<unknown, RequestMeta>) => ({ requestID: ctx.requestID, clientIp: ctx.meta.clientIp, user: ctx.meta.user ?? null }),
		},
		crash: {
			rest: "GET /crash",
			auth: false,
			handler() {
				throw new Error("connection to postgres://admin:hunter2@db failed at /srv/app/db.js:42");
			},
		},
		teapot: { rest: "GET /teapot", auth: false, handler() { throw new Errors.MoleculerClientError("I am a teapot", 418, "TEAPOT", { spout: "short" }); } },
		internalOnly: { handler: () => "internal" },
	},
};

async function call(gw: RunningGateway, path: string, init: RequestInit & { headers?: Record<string, string> } = {}) {
	const res = await fetch(gw.url + path, init);
	const text = await res.text();
	let body: any = text;
	try {
		body = JSON.parse(text);
	} catch {
		// not JSON
	}
	return { status: res.status, headers: res.headers, body, text };
}

const json = (body: unknown, headers: Record<string, string> = {}) => ({
	headers: { "Content-Type": "application/json", ...headers },
	body: typeof body === "string" ? body : JSON.stringify(body),
});

describe("gateway", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({ CORS_ORIGINS: "https://app.example.com", BODY_LIMIT: "2048" }, [Probe]);
	});
	after(() => gw.stop());

	describe("platform routes", () => {
		it("GET /api/health answers status, node id and uptime without a token", async () => {
			const res = await call(gw, "/api/health");
			assert.equal(res.status, 200);
			assert.equal(res.body.status, "ok");
			assert.equal(res.body.nodeID, gw.broker.nodeID);
			assert.equal(typeof res.body.uptime, "number");
		});

		it("GET /api/ready lists the required services", async () => {
			const res = await call(gw, "/api/ready");
			assert.equal(res.status, 200);
			assert.deepEqual(res.body, { status: "ready", services: ["config", "registry", "security"] });
		});

		it("GET /metrics serves Prometheus text", async () => {
			await call(gw, "/api/health");
			const res = await call(gw, "/metrics");
			assert.equal(res.status, 200);
			assert.match(res.headers.get("content-type")!, /^text\/plain/);
			assert.match(res.text, /# TYPE moleculer_request_total counter/);
			assert.match(res.text, /moleculer_request_total\{[^}]*action="gateway.health"/);
		});

		it("serves public/ at / and the docs page with swagger-ui's assets", async () => {
			const index = await call(gw, "/");
			assert.equal(index.status, 200);
			assert.match(index.text, /<h1>cnbicloud<\/h1>/);
			const docs = await call(gw, "/docs/");
			assert.equal(docs.status, 200);
			assert.match(docs.text, /swagger-ui-bundle\.js/);
			const bundle = await fetch(`${gw.url}/docs/swagger-ui/swagger-ui-bundle.js`);
			assert.equal(bundle.status, 200);
			assert.ok((await bundle.arrayBuffer()).byteLength > 100_000);
			assert.equal((await call(gw, "/docs/swagger-ui/nope.js")).status, 404);
		});
	});

	describe("OpenAPI document", () => {
		let doc: any;
		before(async () => {
			doc = (await call(gw, "/api/openapi.json")).body;
		});

		it("lists every published route with its method, and nothing else", () => {
			assert.equal(doc.openapi, "3.0.3");
			const ops = Object.entries(doc.paths).flatMap(([p, methods]) => Object.keys(methods as object).map(m => `${m.toUpperCase()} ${p}`)).sort();
			for (const expected of [
				"GET /api/health", "GET /api/ready", "GET /api/openapi.json",
				"GET /api/config/{namespace}", "PUT /api/config/{namespace}", "GET /api/config/{namespace}/history",
				"POST /api/config/{namespace}/rollback", "GET /api/registry/nodes", "GET /api/registry/services",
				"POST /api/probe/echo", "GET /api/probe/whoami",
			])
				assert.ok(ops.includes(expected), `${expected} missing from ${ops.join(", ")}`);
			assert.ok(!ops.some(o => /list-aliases|internalOnly/.test(o)), "unpublished actions leak into the document");
			assert.ok(!ops.includes("GET /api/config"), "moleculer-db's CRUD actions must stay unpublished");
		});

		it("documents parameters, body schemas and the permission each route needs", () => {
			const put = doc.paths["/api/config/{namespace}"].put;
			assert.equal(put.parameters[0].name, "namespace");
			assert.equal(put.parameters[0].in, "path");
			const body = put.requestBody.content["application/json"].schema;
			assert.deepEqual(body.required, ["values"]);
			assert.equal(body.properties.values.type, "object");
			assert.equal(body.properties.expectedVersion.type, "integer");
			assert.equal(body.additionalProperties, false);
			assert.equal(put["x-permission"], PLATFORM_ADMIN);
			const history = doc.paths["/api/config/{namespace}/history"].get;
			assert.deepEqual(history.parameters.map((p: any) => `${p.in}:${p.name}`), ["path:namespace", "query:page", "query:pageSize"]);
			assert.deepEqual(doc.paths["/api/health"].get.security, []);
			assert.deepEqual(doc.paths["/api/probe/echo"].post.security, [{ bearerAuth: [] }]);
			assert.equal(doc.paths["/api/probe/undeclared"].get["x-access"], "nobody: the action declares no permission");
			assert.equal(doc.components.securitySchemes.bearerAuth.scheme, "bearer");
		});
	});

	describe("routing and errors", () => {
		it("answers 404 in the error body for paths no alias maps", async () => {
			for (const path of ["/api/nope", "/api/config", "/api/probe/internalOnly", "/api/gateway/list-aliases", "/api/%24node/options"]) {
				const res = await call(gw, path, { headers: bearer("admin-token") });
				assert.equal(res.status, 404, path);
				assert.deepEqual(Object.keys(res.body).sort(), ["code", "message", "name", "type"]);
			}
		});

		it("hides a server-side failure's message and stack behind a request id", async () => {
			const res = await call(gw, "/api/probe/crash", { headers: { "X-Request-ID": "trace-crash-1" } });
			assert.equal(res.status, 500);
			assert.deepEqual(res.body, { name: "ServerError", message: "Internal server error", code: 500, type: "SERVER_ERROR", data: { requestId: "trace-crash-1" } });
			assert.doesNotMatch(res.text, /hunter2|db\.js|stack/);
		});

		it("passes a client error through with its code, type and data", async () => {
			const res = await call(gw, "/api/probe/teapot");
			assert.equal(res.status, 418);
			assert.deepEqual(res.body, { name: "MoleculerClientError", message: "I am a teapot", code: 418, type: "TEAPOT", data: { spout: "short" } });
		});

		it("answers bad bodies with 400, 413 and 422, saying what was wrong", async () => {
			const auth = bearer("reader-token");
			const broken = await call(gw, "/api/probe/echo", { method: "POST", ...json("{not json", auth) });
			assert.equal(broken.status, 400);
			assert.equal(broken.body.type, "INVALID_JSON");
			const big = await call(gw, "/api/probe/echo", { method: "POST", ...json({ text: "x".repeat(5000) }, auth) });
			assert.equal(big.status, 413);
			assert.match(big.body.message, /larger than 2048 bytes/);
			const invalid = await call(gw, "/api/probe/echo", { method: "POST", ...json({ text: "far too long text", extra: 1 }, auth) });
			assert.equal(invalid.status, 422);
			assert.equal(invalid.body.type, "VALIDATION_ERROR");
			const problems = invalid.body.data.map((e: any) => `${e.type}:${e.field ?? e.actual}`).sort();
			assert.deepEqual(problems, ["objectStrict:extra", "stringMax:text"]);
			const wrongType = await call(gw, "/api/probe/echo", { method: "POST", ...json({ text: 5 }, auth) });
			assert.equal(wrongType.status, 422);
			assert.match(wrongType.body.data[0].message, /'text' field must be a string/);
		});

		it("propagates a valid X-Request-ID as the Moleculer request id and replaces an unsafe one", async () => {
			const given = await call(gw, "/api/probe/open", { headers: { "X-Request-ID": "abc-123.x:y" } });
			assert.equal(given.headers.get("x-request-id"), "abc-123.x:y");
			assert.equal(given.body.requestID, "abc-123.x:y");
			const unsafe = await call(gw, "/api/probe/open", { headers: { "X-Request-ID": "bad id <script>" } });
			assert.match(unsafe.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
			assert.equal(unsafe.body.requestID, unsafe.headers.get("x-request-id"));
		});

		it("sets ETag and answers 304 to If-None-Match", async () => {
			const first = await call(gw, "/api/config/etag-test", { headers: bearer("reader-token") });
			const etag = first.headers.get("etag");
			assert.ok(etag);
			// (fetch would add `Cache-Control: no-cache` to a conditional request, as browsers' reload does.)
			const status = await new Promise<number>((resolve, reject) =>
				http.get(`${gw.url}/api/config/etag-test`, { headers: { ...bearer("reader-token"), "If-None-Match": etag! } }, res => {
					res.resume();
					resolve(res.statusCode!);
				}).on("error", reject),
			);
			assert.equal(status, 304);
		});

		it("allows CORS for configured origins only", async () => {
			const preflight = (origin: string) =>
				fetch(`${gw.url}/api/probe/echo`, { method: "OPTIONS", headers: { Origin: origin, "Access-Control-Request-Method": "POST" } });
			const allowed = await preflight("https://app.example.com");
			assert.equal(allowed.status, 204);
			assert.equal(allowed.headers.get("access-control-allow-origin"), "https://app.example.com");
			const denied = await preflight("https://evil.example.net");
			assert.notEqual(denied.headers.get("access-control-allow-origin"), "https://evil.example.net");
			assert.notEqual(denied.headers.get("access-control-allow-origin"), "*");
		});
	});

	describe("authentication and authorisation", () => {
		it("asks for a token on a protected route and refuses malformed or unknown ones", async () => {
			const none = await call(gw, "/api/probe/whoami");
			assert.equal(none.status, 401);
			const malformed = await call(gw, "/api/probe/whoami", { headers: { Authorization: "Basic YWRtaW46YWRtaW4=" } });
			assert.equal(malformed.status, 401);
			assert.equal(malformed.body.type, "INVALID_TOKEN");
			const unknown = await call(gw, "/api/probe/whoami", { headers: bearer("forged-token") });
			assert.equal(unknown.status, 401);
		});

		it("resolves the token into ctx.meta.user", async () => {
			const res = await call(gw, "/api/probe/whoami", { headers: bearer("reader-token") });
			assert.equal(res.status, 200);
			assert.equal(res.body.username, "reader");
		});

		it("checks the permission the action declares", async () => {
			const body = { method: "POST", ...json({ text: "hi" }) };
			const denied = await call(gw, "/api/probe/echo", { ...body, headers: { ...body.headers, ...bearer("nobody-token") } });
			assert.equal(denied.status, 403);
			assert.equal(denied.body.data.permission, "probe:read");
			const allowed = await call(gw, "/api/probe/echo", { ...body, headers: { ...body.headers, ...bearer("reader-token") } });
			assert.equal(allowed.status, 200);
			assert.deepEqual({ text: allowed.body.text, user: allowed.body.user }, { text: "hi", user: "reader" });
			assert.equal((await call(gw, "/api/probe/admin", { headers: bearer("reader-token") })).status, 403);
			assert.equal((await call(gw, "/api/probe/admin", { headers: bearer("admin-token") })).status, 200);
		});

		it("fails closed: an action that declares no permission is refused to everyone", async () => {
			for (const token of ["admin-token", "reader-token"]) {
				const res = await call(gw, "/api/probe/undeclared", { headers: bearer(token) });
				assert.equal(res.status, 403, token);
				assert.doesNotMatch(res.text, /reached/);
			}
		});

		it("ignores tokens on public routes", async () => {
			const res = await call(gw, "/api/probe/open", { headers: bearer("forged-token") });
			assert.equal(res.status, 200);
			assert.equal(res.body.user, null);
		});
	});
});

describe("gateway without the security service", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({}, [Probe], { withSecurity: false });
	});
	after(() => gw.stop());

	it("refuses protected routes with 503 and still serves public ones", async () => {
		const res = await call(gw, "/api/probe/whoami", { headers: bearer("reader-token") });
		assert.equal(res.status, 503);
		assert.notEqual(res.body.code, 200);
		assert.equal((await call(gw, "/api/probe/open")).status, 200);
		// No token at all is still a plain 401: the gateway never lets a request through unauthenticated.
		assert.equal((await call(gw, "/api/probe/whoami")).status, 401);
	});
});

describe("gateway readiness", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({}, [], { services: [GatewayService, ConfigService] });
	});
	after(() => gw.stop());

	it("answers 503 with the missing services until they are available", async () => {
		const res = await call(gw, "/api/ready");
		assert.equal(res.status, 503);
		assert.equal(res.body.type, "NOT_READY");
		assert.deepEqual(res.body.data.missing, ["registry"]);
	});
});

describe("gateway rate limits (in memory)", () => {
	describe("per user", () => {
		let gw: RunningGateway;
		before(async () => {
			gw = await startPlatform({ RATE_LIMIT_PER_IP: "0", RATE_LIMIT_PER_USER: "3" }, [Probe]);
		});
		after(() => gw.stop());

		it("limits each user, and each user has a budget of their own", async () => {
			const statuses: number[] = [];
			for (let i = 0; i < 4; i++) statuses.push((await call(gw, "/api/probe/whoami", { headers: bearer("reader-token") })).status);
			assert.deepEqual(statuses, [200, 200, 200, 429]);
			const other = await call(gw, "/api/probe/whoami", { headers: bearer("other-reader-token") });
			assert.equal(other.status, 200);
			assert.equal((await call(gw, "/api/probe/open")).status, 200, "anonymous calls are not counted per user");
		});
	});

	describe("per client IP", () => {
		let gw: RunningGateway;
		before(async () => {
			gw = await startPlatform({ RATE_LIMIT_PER_IP: "4", RATE_LIMIT_PER_USER: "0" }, [Probe]);
		});
		after(() => gw.stop());

		it("limits each client IP and ignores a client's own X-Forwarded-For", async () => {
			// Start-up polled /api/health from this address too, so the budget is partly spent already.
			let res = await call(gw, "/api/probe/open");
			for (let i = 0; i < 4 && res.status === 200; i++) res = await call(gw, "/api/probe/open");
			assert.equal(res.status, 429);
			assert.equal(res.body.type, "RATE_LIMITED");
			assert.ok(Number(res.headers.get("retry-after")) > 0);
			assert.equal(res.headers.get("ratelimit-remaining"), "0");
			const spoofed = await call(gw, "/api/probe/open", { headers: { "X-Forwarded-For": "203.0.113.9" } });
			assert.equal(spoofed.status, 429);
		});
	});
});

describe("gateway behind a trusted proxy", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({ RATE_LIMIT_PER_IP: "2", TRUSTED_PROXIES: "127.0.0.1" }, [Probe]);
	});
	after(() => gw.stop());

	it("takes the client IP from X-Forwarded-For when the proxy is trusted", async () => {
		const a = await call(gw, "/api/probe/open", { headers: { "X-Forwarded-For": "198.51.100.7" } });
		assert.equal(a.body.clientIp, "198.51.100.7");
		await call(gw, "/api/probe/open", { headers: { "X-Forwarded-For": "198.51.100.7" } });
		assert.equal((await call(gw, "/api/probe/open", { headers: { "X-Forwarded-For": "198.51.100.7" } })).status, 429);
		assert.equal((await call(gw, "/api/probe/open", { headers: { "X-Forwarded-For": "198.51.100.8" } })).status, 200);
	});
});
