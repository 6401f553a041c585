/**
 * Platform settings: everything a service needs to know about its environment.
 * `moleculer.config.ts` builds them from the environment (and nothing else reads it);
 * services reach them as `this.broker.options.platform`.
 */
export type StoreSettings =
	| { kind: "nedb"; dataDir: string }
	| { kind: "sql"; url: string }
	| { kind: "mongo"; url: string };

export interface RateLimitSettings {
	/** Length of the counting window in seconds. */
	windowSeconds: number;
	/** Requests a client IP may make per window; 0 turns the limit off. */
	perIp: number;
	/** Requests an authenticated user may make per window; 0 turns the limit off. */
	perUser: number;
}

export interface HttpSettings {
	port: number;
	/** Address the gateway listens on. */
	host: string;
	/** Allowed CORS origins; `["*"]` allows any origin (without credentials). */
	corsOrigins: string[];
	/** proxy-addr trust list: the client IP is read from X-Forwarded-For only behind these. */
	trustedProxies: string[];
	/** Largest accepted JSON/urlencoded body, in bytes. */
	bodyLimit: number;
	rateLimit: RateLimitSettings;
}

export interface SecuritySettings {
	/** HMAC secret of access tokens (`JWT_SECRET`); null = a random one per process (embedded mode only). */
	jwtSecret: string | null;
	/** The platform administrator (`ADMIN_USERNAME`, `ADMIN_PASSWORD`), created on first start. */
	adminUsername: string;
	/** null = generate one and print it once. */
	adminPassword: string | null;
}

export interface LicenseSettings {
	/** Ed25519 public key (PEM) licences are verified with: `LICENSE_PUBLIC_KEY` (PEM or file), else the shipped `keys/license-public.pem`. */
	publicKey: string;
	/** Ed25519 private key (PEM) this node issues licences with: `LICENSE_PRIVATE_KEY` (PEM or file); null = issuing is off. */
	privateKey: string | null;
}

/** Where file chunks live: local disk under DATA_DIR (embedded default) or an S3 bucket. */
export type FileStorageSettings =
	| { kind: "local"; dir: string }
	| {
			kind: "s3";
			/** null = AWS itself; set for S3-compatible servers (MinIO, s3rver). */
			endpoint: string | null;
			bucket: string;
			region: string;
			accessKeyId: string | null;
			secretAccessKey: string | null;
			/** Path-style addressing (`endpoint/bucket/key`), which S3-compatible servers need. */
			forcePathStyle: boolean;
	  };

/** The TCP real-time channel for native clients (the `socket` service). */
export interface SocketSettings {
	/** `SOCKET_PORT` (default 7070); 0 = any free port. */
	port: number;
	/** Address it listens on (`SOCKET_HOST`, default the gateway's `HOST`). */
	host: string;
}

/**
 * The message bus transport (@moleculer/channels), from `CHANNELS`: in-process (embedded),
 * Redis Streams on `REDIS_URL`, or NATS JetStream on the transporter's NATS servers.
 */
export type ChannelsSettings =
	| { kind: "memory" }
	| { kind: "redis"; url: string }
	| { kind: "nats"; url: string };

export interface PlatformSettings {
	/** The platform's version (package.json). */
	version: string;
	/** `production`, `development` or `test`. */
	env: string;
	/** Root of the embedded stores and local files. */
	dataDir: string;
	/** Where entities live. */
	store: StoreSettings;
	/** Redis for shared state across nodes (rate limits, sessions, presence); unset = in memory. */
	redisUrl: string | null;
	/** True when this node talks to other nodes (a transporter is set). */
	clustered: boolean;
	http: HttpSettings;
	security: SecuritySettings;
	license: LicenseSettings;
	files: { storage: FileStorageSettings };
	socket: SocketSettings;
	channels: ChannelsSettings;
	/** Directory served at `/` by the gateway. */
	publicDir: string;
}

declare module "moleculer" {
	interface BrokerOptions {
		platform?: PlatformSettings;
	}
}
