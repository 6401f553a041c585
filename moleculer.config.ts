/**
 * Broker configuration: the one place that reads the environment.
 *
 * `createBrokerConfig(env)` turns environment variables into Moleculer broker options plus
 * the platform settings every service reads from `broker.options.platform`.
 * moleculer-runner loads the default export, built from `process.env`.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { BrokerOptions, LoggerConfig, MetricRegistryOptions, Middleware, TracerOptions } from "moleculer";
import type { ChannelsSettings, FileStorageSettings, PlatformSettings, StoreSettings } from "./types/platform";
import IdempotentRetryMiddleware from "./middlewares/idempotent-retry.middleware";
import AuditMiddleware from "./middlewares/audit.middleware";
import { PrometheusTextReporter } from "./lib/metrics/prometheus-text.reporter";
import { Middleware as ChannelsMiddleware } from "@moleculer/channels";
import { channelsMiddlewareOptions } from "./lib/bus/adapter";

type Env = Record<string, string | undefined>;

const PROJECT_ROOT = path.basename(__dirname) === "dist" ? path.dirname(__dirname) : __dirname;

function int(env: Env, name: string, fallback: number): number {
	const raw = env[name];
	if (raw == null || raw === "") return fallback;
	const value = Number(raw);
	if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, got '${raw}'`);
	return value;
}

function list(raw: string | undefined): string[] {
	return (raw ?? "").split(",").map(s => s.trim()).filter(Boolean);
}

/** The transporter option: unset = local bus, `TCP`, or a comma-separated NATS URL list. */
function transporter(raw: string | undefined): BrokerOptions["transporter"] {
	if (!raw) return null;
	if (raw.startsWith("nats://") || raw.startsWith("tls://")) {
		return {
			type: "NATS",
			options: {
				servers: list(raw),
				// Keep trying for ever: a NATS restart must not take the node down.
				maxReconnectAttempts: -1,
				reconnectTimeWait: 500,
			},
		};
	}
	return raw;
}

function store(env: Env, dataDir: string): StoreSettings {
	if (env.DATABASE_URL && env.MONGO_URI) throw new Error("Set either DATABASE_URL or MONGO_URI, not both");
	if (env.DATABASE_URL) return { kind: "sql", url: env.DATABASE_URL };
	if (env.MONGO_URI) return { kind: "mongo", url: env.MONGO_URI };
	return { kind: "nedb", dataDir: path.join(dataDir, "db") };
}

function tracing(env: Env, nodeEnv: string): TracerOptions | boolean {
	const exporter = env.TRACING_EXPORTER ?? (nodeEnv === "development" ? "console" : "none");
	if (exporter === "none") return false;
	// Params and meta may carry passwords and tokens: spans never record them.
	const tags = { action: { params: false, meta: false, response: false }, event: { params: false, meta: false } };
	switch (exporter) {
		case "console":
			return { enabled: true, tags, exporter: { type: "Console", options: { colors: true, width: 100 } } };
		case "event":
			return { enabled: true, tags, exporter: { type: "Event", options: { eventName: "$tracing.spans", interval: 5 } } };
		case "zipkin":
		case "jaeger":
			// Jaeger's collector accepts the Zipkin v2 format (port 9411), so both go through Moleculer's Zipkin exporter.
			return {
				enabled: true,
				tags,
				exporter: { type: "Zipkin", options: { baseURL: env.TRACING_ENDPOINT ?? "http://localhost:9411" } },
			};
		default:
			throw new Error(`TRACING_EXPORTER must be none, console, event, zipkin or jaeger, got '${exporter}'`);
	}
}

function logger(env: Env): LoggerConfig {
	return {
		type: "Console",
		options: {
			level: env.LOG_LEVEL ?? "info",
			colors: !env.NO_COLOR,
			moduleColors: false,
			formatter: env.LOG_FORMAT === "json" ? "json" : "short",
			autoPadding: false,
		},
	};
}

/** File chunks in S3 when `S3_BUCKET` is set, else on local disk under DATA_DIR. */
function fileStorage(env: Env, dataDir: string): FileStorageSettings {
	if (!env.S3_BUCKET) return { kind: "local", dir: path.join(dataDir, "files") };
	const endpoint = env.S3_ENDPOINT || null;
	return {
		kind: "s3",
		endpoint,
		bucket: env.S3_BUCKET,
		region: env.S3_REGION || "us-east-1",
		accessKeyId: env.S3_ACCESS_KEY || null,
		secretAccessKey: env.S3_SECRET_KEY || null,
		// S3-compatible servers want path-style addressing; AWS itself prefers virtual hosts.
		forcePathStyle: env.S3_FORCE_PATH_STYLE ? env.S3_FORCE_PATH_STYLE !== "false" : endpoint != null,
	};
}

/** The message bus transport: `CHANNELS=redis` (Redis Streams on REDIS_URL), `nats` (JetStream on TRANSPORTER's NATS), unset = in-process. */
function channels(env: Env): ChannelsSettings {
	const kind = env.CHANNELS || "memory";
	switch (kind) {
		case "memory":
			return { kind };
		case "redis":
			if (!env.REDIS_URL) throw new Error("CHANNELS=redis needs REDIS_URL");
			return { kind, url: env.REDIS_URL };
		case "nats": {
			const nats = list(env.TRANSPORTER).filter(u => u.startsWith("nats://") || u.startsWith("tls://"));
			if (!nats.length) throw new Error("CHANNELS=nats needs a NATS TRANSPORTER (nats://host:4222) with JetStream enabled");
			return { kind, url: nats.join(",") };
		}
		default:
			throw new Error(`CHANNELS must be redis or nats (or unset for in-process), got '${kind}'`);
	}
}

/** A PEM given inline or as a path to a file holding it. */
function pem(name: string, raw: string | undefined): string | null {
	if (!raw) return null;
	if (raw.includes("-----BEGIN")) return raw.replace(/\\n/g, "\n");
	try {
		return fs.readFileSync(raw, "utf8");
	} catch (err) {
		throw new Error(`${name} must be a PEM key or the path of a file holding one: ${(err as Error).message}`);
	}
}

export function createPlatformSettings(env: Env = process.env): PlatformSettings {
	const dataDir = path.resolve(env.DATA_DIR ?? path.join(PROJECT_ROOT, "data"));
	return {
		version: (JSON.parse(fs.readFileSync(path.join(PROJECT_ROOT, "package.json"), "utf8")) as { version: string }).version,
		env: env.NODE_ENV ?? "production",
		dataDir,
		store: store(env, dataDir),
		redisUrl: env.REDIS_URL || null,
		clustered: Boolean(env.TRANSPORTER),
		publicDir: path.join(PROJECT_ROOT, "public"),
		security: {
			jwtSecret: env.JWT_SECRET || null,
			adminUsername: env.ADMIN_USERNAME || "admin",
			adminPassword: env.ADMIN_PASSWORD || null,
		},
		files: { storage: fileStorage(env, dataDir) },
		socket: { port: int(env, "SOCKET_PORT", 7070), host: env.SOCKET_HOST ?? env.HOST ?? "0.0.0.0" },
		channels: channels(env),
		license: {
			publicKey: pem("LICENSE_PUBLIC_KEY", env.LICENSE_PUBLIC_KEY) ?? fs.readFileSync(path.join(PROJECT_ROOT, "keys", "license-public.pem"), "utf8"),
			privateKey: pem("LICENSE_PRIVATE_KEY", env.LICENSE_PRIVATE_KEY),
		},
		http: {
			port: int(env, "PORT", 3000),
			host: env.HOST ?? "0.0.0.0",
			corsOrigins: list(env.CORS_ORIGINS),
			trustedProxies: list(env.TRUSTED_PROXIES),
			bodyLimit: int(env, "BODY_LIMIT", 1024 * 1024),
			rateLimit: {
				windowSeconds: int(env, "RATE_LIMIT_WINDOW", 60),
				perIp: int(env, "RATE_LIMIT_PER_IP", 1200),
				perUser: int(env, "RATE_LIMIT_PER_USER", 600),
			},
		},
	};
}

export function createBrokerConfig(env: Env = process.env): BrokerOptions {
	const nodeEnv = env.NODE_ENV ?? "production";
	const metrics: MetricRegistryOptions = {
		enabled: env.METRICS !== "false",
		// The gateway renders the Prometheus text at GET /metrics; no extra port is opened.
		// (Moleculer accepts a reporter instance; its typings only list names and option objects.)
		reporter: [new PrometheusTextReporter() as unknown as string],
	};

	return {
		namespace: env.NAMESPACE ?? "cnbicloud",
		nodeID: env.NODE_ID || `${os.hostname().toLowerCase()}-${process.pid}`,
		metadata: {
			unit: env.NODE_UNIT ?? null,
			zone: env.NODE_ZONE ?? null,
		},

		logger: logger(env),
		transporter: transporter(env.TRANSPORTER),
		serializer: env.SERIALIZER ?? "JSON",
		cacher: env.REDIS_URL
			? { type: "Redis", options: { prefix: `${env.NAMESPACE ?? "cnbicloud"}-cache`, ttl: 3600, redis: env.REDIS_URL } }
			: { type: "Memory", options: { ttl: 3600, clone: true } },

		// --- Fault tolerance: every knob set on purpose, none left to Moleculer's defaults.
		// A call that gets no answer fails after REQUEST_TIMEOUT ms (Moleculer's default is never).
		requestTimeout: int(env, "REQUEST_TIMEOUT", 10_000),
		// Retries are off, except for actions marked `idempotent: true` (see middlewares/idempotent-retry).
		// They run on the calling node and pick a fresh endpoint, so a dead node's calls move to a live one.
		retryPolicy: {
			enabled: false,
			retries: int(env, "RETRIES", 5),
			delay: 100,
			maxDelay: 2000,
			factor: 2,
			check: (err: Error) => Boolean(err && (err as { retryable?: boolean }).retryable),
		},
		// A node that sends no heartbeat for HEARTBEAT_TIMEOUT seconds is declared dead and its
		// pending requests are rejected as retryable.
		heartbeatInterval: int(env, "HEARTBEAT_INTERVAL", 2),
		heartbeatTimeout: int(env, "HEARTBEAT_TIMEOUT", 6),
		circuitBreaker: {
			enabled: true,
			threshold: 0.5,
			minRequestCount: 20,
			windowTime: 60,
			halfOpenTime: 10_000,
			// Only faults of the callee trip the breaker; a client's bad input does not.
			check: (err: Error) => Boolean(err && ((err as { code?: number }).code ?? 500) >= 500),
		},
		bulkhead: {
			enabled: true,
			concurrency: int(env, "BULKHEAD_CONCURRENCY", 50),
			maxQueueSize: int(env, "BULKHEAD_QUEUE", 500),
		},
		// Graceful shutdown: on SIGTERM/SIGINT the broker stops taking work and waits for the
		// requests in flight (up to SHUTDOWN_TIMEOUT ms) before it leaves the cluster.
		tracking: { enabled: true, shutdownTimeout: int(env, "SHUTDOWN_TIMEOUT", 10_000) },
		contextParamsCloning: false,
		maxCallLevel: 100,

		registry: { strategy: "RoundRobin", preferLocal: true },
		transit: { maxQueueSize: 50_000, disableReconnect: false },

		validator: true,
		metrics,
		tracing: tracing(env, nodeEnv),

		// Moleculer's typings have no shape for hook-only middlewares such as this one.
		// Audit: every mutating call from a client is recorded by event (the `log` service keeps it).
		// The message bus (@moleculer/channels): `broker.sendToChannel`, `channels` in schemas, on the CHANNELS transport.
		middlewares: [
			IdempotentRetryMiddleware as unknown as Middleware,
			AuditMiddleware as unknown as Middleware,
			ChannelsMiddleware(channelsMiddlewareOptions(channels(env))) as unknown as Middleware,
		],
		replCommands: null,

		platform: createPlatformSettings(env),
	};
}

export default createBrokerConfig();
