import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import ApiGateway from "moleculer-web";
import proxyAddr from "proxy-addr";
import { getAbsoluteFSPath as swaggerUiPath } from "swagger-ui-dist";
import { Errors, type Context, type Service, type ServiceSchema } from "moleculer";
import { assertAccess, isPublic } from "../../lib/access";
import { serviceSchema } from "../../lib/service";
import { publicError, withoutMissingService } from "../../lib/errors";
import { PrometheusTextReporter } from "../../lib/metrics/prometheus-text.reporter";
import type { ActionAccess, AuthenticatedUser } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { PlatformSettings } from "../../types/platform";
import { buildOpenApi, type PublishedRoute } from "./openapi";
import { GatewayRateLimiter, type LimitResult } from "../../lib/rate-limit";
import { PrincipalCache, changesAccess } from "../../lib/principal-cache";
import type { SessionsRevokedEvent } from "../../types/org";

/** Services the platform cannot serve requests without; `GET /api/ready` answers 503 until all are up. */
const REQUIRED_SERVICES = ["config", "registry", "security"];
/** How long a resolved token is trusted without asking `security` again (events evict entries sooner). */
const PRINCIPAL_CACHE_SECONDS = 60;
const READ_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

type Req = IncomingMessage & {
	$action?: ActionAccess & { name: string };
	$ctx?: Context<unknown, RequestMeta>;
	$startTime?: [number, number];
	originalUrl?: string;
};
type Res = ServerResponse;
type Alias = { method: string; fullPath: string; action?: string };

type Gateway = Service & {
	sendError(req: Req, res: Res, err: Error): void;
	platform: PlatformSettings;
	limiter: GatewayRateLimiter;
	principals: PrincipalCache;
	trust: (addr: string, i: number) => boolean;
	aliases: Alias[];
	server: import("node:http").Server;
	clientIp(req: Req): string;
	applyLimit(res: Res, result: LimitResult | null): void;
	publishedRoutes(): PublishedRoute[];
};


/**
 * The HTTP gateway (moleculer-web). Routes are the actions' own `rest` declarations under `/api`
 * (autoAliases, mapping policy "restrict": nothing else is reachable). Every request gets a
 * request id, an IP budget, authentication through `security.resolveToken`, an authorisation check
 * against the action's declared permission (fail closed), and a user budget.
 */
const GatewayService = serviceSchema({
	name: "gateway",
	mixins: [ApiGateway as unknown as ServiceSchema],

	settings: {
		rest: "/",
		port: 3000,
		ip: "0.0.0.0",
		etag: "weak",
		log4XXResponses: false,
		logRequest: null,
		logResponse: null,
		// Request params and response data may carry secrets (passwords, config values, tokens).
		logRequestParams: null,
		logResponseData: null,
		logRouteRegistration: "debug",
		httpServerTimeout: 120_000,
		rootCallOptions(this: Gateway, options: Record<string, unknown>, req: Req) {
			const given = req.headers["x-request-id"];
			options.requestID = typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
		},
		routes: [],
		assets: { folder: "public", options: { index: "index.html", fallthrough: true } },
	},

	actions: {
		// moleculer-web's own actions: listing aliases is the OpenAPI document's job, and routes are not edited at run time.
		listAliases: false,
		addRoute: false,
		removeRoute: false,

		health: {
			rest: "GET /health",
			auth: false,
			description: "Liveness: the gateway node answers.",
			handler(this: Gateway) {
				return { status: "ok", nodeID: this.broker.nodeID, uptime: Math.round(process.uptime()) };
			},
		},

		ready: {
			rest: "GET /ready",
			auth: false,
			description: "Readiness: 200 when every required service is available and routed, else 503 with the missing ones.",
			handler(this: Gateway) {
				const registry = this.broker.registry as unknown as { hasService(name: string): boolean };
				// Aliases follow the registry a moment later: a service is ready once its routes exist too.
				const routed = (name: string) => this.aliases.some(a => a.action?.startsWith(`${name}.`));
				const missing = REQUIRED_SERVICES.filter(name => !registry.hasService(name) || !routed(name));
				if (missing.length || this.broker.stopping)
					throw new Errors.MoleculerError("Not ready", 503, "NOT_READY", { missing, stopping: Boolean(this.broker.stopping) });
				return { status: "ready", services: REQUIRED_SERVICES };
			},
		},

		openapi: {
			rest: "GET /openapi.json",
			auth: false,
			description: "The OpenAPI 3 document of every published route.",
			handler(this: Gateway) {
				return buildOpenApi(this.publishedRoutes(), { title: "cnbicloud API", version: this.platform.version });
			},
		},

		/** `security` calls this on every gateway node when it revokes sessions, and waits for it. */
		forgetSessions: {
			visibility: "public",
			params: { sessionIds: { type: "array", items: "string" }, userId: { type: "string", optional: true }, companyId: { type: "string", optional: true }, reason: "string" },
			handler(this: Gateway, ctx: Context<SessionsRevokedEvent>) {
				const { sessionIds, userId, companyId } = ctx.params;
				this.principals.forgetSessions(sessionIds);
				if (userId || companyId) this.principals.forgetWhere(u => u.id === userId || (companyId != null && u.companyId === companyId));
				return true;
			},
		},

		metrics: {
			auth: false,
			description: "This node's metrics in the Prometheus text format.",
			handler(this: Gateway, ctx: Context<unknown, { $responseType?: string }>) {
				const reporters = (this.broker.metrics as unknown as { reporter?: unknown[] }).reporter ?? [];
				const reporter = reporters.find(r => r instanceof PrometheusTextReporter) as PrometheusTextReporter | undefined;
				if (!reporter) throw new Errors.MoleculerClientError("Metrics are disabled on this node", 404, "NOT_FOUND");
				ctx.meta.$responseType = "text/plain; version=0.0.4; charset=utf-8";
				return reporter.render();
			},
		},
	},

	events: {
		/** A change to users, roles, grants, departments, companies or licences: every cached principal is resolved afresh. */
		"cache.clean.*"(this: Gateway, ctx: Context) {
			if (changesAccess(String(ctx.eventName))) this.principals.flush();
		},
	},

	methods: {
		/**
		 * moleculer-web logs every 5xx as an error. A 503 NOT_READY is the expected answer to a
		 * readiness probe while the platform starts: it goes to the debug log instead.
		 */
		errorHandler(this: Gateway, req: Req, res: Res, given: Errors.MoleculerError) {
			const err = withoutMissingService(given);
			if (err?.type === "NOT_READY") {
				this.logger.debug(`Not ready: ${JSON.stringify(err.data)}`);
				return this.sendError(req, res, err);
			}
			return (ApiGateway as unknown as { methods: { errorHandler: (...a: unknown[]) => unknown } }).methods.errorHandler.call(this, req, res, err);
		},

		/** The client's address: the socket's, or from X-Forwarded-For behind a trusted proxy only. */
		clientIp(this: Gateway, req: Req) {
			return proxyAddr(req, this.trust);
		},

		applyLimit(this: Gateway, res: Res, result: LimitResult | null) {
			if (!result) return;
			res.setHeader("RateLimit-Limit", result.limit);
			res.setHeader("RateLimit-Remaining", result.remaining);
			res.setHeader("RateLimit-Reset", result.resetSeconds);
			if (!result.allowed) {
				res.setHeader("Retry-After", result.resetSeconds);
				throw new Errors.MoleculerClientError("Too many requests, slow down", 429, "RATE_LIMITED", { retryAfter: result.resetSeconds });
			}
		},

		/** Route hook, before authentication: request metadata and the IP budget. */
		async beforeCall(this: Gateway, ctx: Context<unknown, RequestMeta>, _route: unknown, req: Req, res: Res) {
			const ip = this.clientIp(req);
			ctx.meta.clientIp = ip;
			const agent = req.headers["user-agent"];
			if (agent) ctx.meta.userAgent = agent.slice(0, 200);
			const { range, "if-none-match": ifNoneMatch } = req.headers;
			if (range || ifNoneMatch) ctx.meta.http = { range: range?.slice(0, 1000), ifNoneMatch: ifNoneMatch?.slice(0, 1000) };
			this.applyLimit(res, await this.limiter.consumeIp(ip));
		},

		/**
		 * A bearer token becomes `ctx.meta.user` through `security.resolveToken`, cached per node
		 * (see PrincipalCache); public actions skip it.
		 */
		async authenticate(this: Gateway, ctx: Context<unknown, RequestMeta>, _route: unknown, req: Req): Promise<AuthenticatedUser | null> {
			if (req.$action && isPublic(req.$action)) return null;
			const header = req.headers.authorization;
			if (!header) return null;
			const match = /^Bearer ([A-Za-z0-9._~+/=-]{1,4096})$/.exec(header);
			if (!match) throw new Errors.MoleculerClientError("The Authorization header must be 'Bearer <accessToken>'", 401, "INVALID_TOKEN");
			const cached = this.principals.get(match[1]);
			if (cached) return cached;
			try {
				const user = await ctx.call<AuthenticatedUser, { token: string }>("security.resolveToken", { token: match[1] });
				this.principals.set(match[1], user);
				return user;
			} catch (err) {
				// No security service, no access: a token that cannot be checked is refused.
				if (err instanceof Errors.ServiceNotFoundError || err instanceof Errors.ServiceNotAvailableError)
					throw new Errors.MoleculerError("Authentication is unavailable, try again shortly", 503, "SERVICE_NOT_AVAILABLE");
				throw err;
			}
		},

		/** The action's declared permission against the user (fail closed), then the user's budget. */
		async authorize(this: Gateway, ctx: Context<unknown, RequestMeta>, _route: unknown, req: Req, res: Res) {
			const action = req.$action;
			if (!action) throw new Errors.MoleculerClientError("Forbidden", 403, "FORBIDDEN");
			assertAccess(ctx.meta.user, action, action.name, { mutating: !READ_METHODS.has(req.method ?? "GET") });
			if (ctx.meta.user) this.applyLimit(res, await this.limiter.consumeUser(ctx.meta.user.id));
		},

		/** The error body of ARCHITECTURE.md; a server-side failure says only what happened, never how. */
		reformatError(this: Gateway, err: Errors.MoleculerError & { type?: string | number }, req: Req) {
			const bodyError = bodyParserError(err, this.platform.http.bodyLimit);
			if (bodyError) return bodyError;
			return publicError(err, req.$ctx?.requestID);
		},

		publishedRoutes(this: Gateway): PublishedRoute[] {
			const actions = new Map<string, Record<string, unknown>>();
			for (const item of this.broker.registry.getActionList({ onlyAvailable: false, skipInternal: true }) as { name: string; action?: Record<string, unknown> }[])
				if (item.action) actions.set(item.name, item.action);
			return this.aliases
				.filter(a => a.action && a.method !== "*")
				.map(a => ({ method: a.method, path: a.fullPath, action: a.action!, definition: actions.get(a.action!) }));
		},

		accessLog(this: Gateway, req: Req, res: Res) {
			const started = process.hrtime.bigint();
			// Read now: by the time the answer is sent the socket may be gone (a client that hung up).
			const ip = this.clientIp(req);
			res.once("finish", () => {
				const ms = Number(process.hrtime.bigint() - started) / 1e6;
				const user = req.$ctx?.meta.user?.username ?? "-";
				const url = (req.originalUrl ?? req.url ?? "").split("?")[0];
				this.logger.info(`${req.method} ${url} ${res.statusCode} ${ms.toFixed(1)}ms rid=${res.getHeader("X-Request-ID") ?? "-"} ip=${ip} user=${user}`);
			});
		},
	},

	/**
	 * moleculer-web reads its settings in its own `created()`, which runs before this service's:
	 * the environment-dependent settings are filled in here, when the schema is merged.
	 */
	merged(this: Gateway, schema: ServiceSchema) {
		const platform = this.broker.options.platform!;
		const http = platform.http;
		const settings = schema.settings!;
		settings.port = http.port;
		settings.ip = http.host;
		settings.assets.folder = platform.publicDir;

		const cors = http.corsOrigins.length
			? {
				origin: http.corsOrigins.includes("*") ? "*" : http.corsOrigins,
				methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
				allowedHeaders: ["Authorization", "Content-Type", "X-Request-ID", "If-None-Match", "Range"],
				exposedHeaders: ["X-Request-ID", "ETag", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After", "Content-Disposition"],
				credentials: false,
				maxAge: 3600,
			}
			: undefined;
		// Route hooks run with the service as `this`.
		const guarded = {
			mappingPolicy: "restrict",
			authentication: true,
			authorization: true,
			onBeforeCall(this: Gateway, ctx: Context<unknown, RequestMeta>, route: unknown, req: Req, res: Res) {
				return this.beforeCall(ctx, route, req, res);
			},
		};
		settings.routes = [
			{
				...guarded,
				name: "api",
				path: "/api",
				autoAliases: true,
				cors,
				bodyParsers: { json: { strict: true, limit: http.bodyLimit }, urlencoded: { extended: false, limit: http.bodyLimit } },
			},
			{
				name: "docs-assets",
				path: "/docs/swagger-ui",
				mappingPolicy: "restrict",
				aliases: {},
				use: [ApiGateway.serveStatic(swaggerUiPath(), { index: false, fallthrough: true })],
			},
			{ ...guarded, name: "root", path: "/", aliases: { "GET /metrics": "gateway.metrics" }, bodyParsers: false },
		];
	},

	created(this: Gateway) {
		this.platform = this.broker.options.platform!;
		this.trust = proxyAddr.compile(this.platform.http.trustedProxies);
		this.principals = new PrincipalCache(PRINCIPAL_CACHE_SECONDS);
		this.limiter = new GatewayRateLimiter(this.platform.http.rateLimit, this.platform.redisUrl, `${this.broker.namespace || "cnbicloud"}:ratelimit`);
	},

	started(this: Gateway) {
		this.server.prependListener("request", (req, res) => this.accessLog(req as Req, res));
		// Node ends any request not received whole within 5 minutes; a multi-gigabyte upload takes
		// longer. Idle connections are still cut by httpServerTimeout, and headers must come within headersTimeout.
		this.server.requestTimeout = 0;
	},

	async stopped(this: Gateway) {
		this.principals.close();
		await this.limiter.close();
	},
});

/** body-parser failures as clear 4xx answers. */
function bodyParserError(err: { type?: unknown; code?: unknown }, limit: number) {
	if (err.type === "entity.parse.failed")
		return { name: "BadRequestError", message: "The request body is not valid JSON", code: 400, type: "INVALID_JSON" };
	if (err.type === "entity.too.large")
		return { name: "PayloadTooLargeError", message: `The request body is larger than ${limit} bytes`, code: 413, type: "PAYLOAD_TOO_LARGE" };
	if (err.type === "charset.unsupported" || err.type === "encoding.unsupported")
		return { name: "UnsupportedMediaTypeError", message: "Unsupported body encoding", code: 415, type: "UNSUPPORTED_MEDIA_TYPE" };
	return null;
}

export default GatewayService;
