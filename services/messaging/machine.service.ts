import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Context } from "moleculer";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import Redis from "ioredis";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, type TenantMethods } from "../../mixins/tenant.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { idParam, nameParam } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";
import type { GroupAccess } from "./group.service";

const RobotEntity: EntityDefinition = {
	name: "robots",
	event: "robot",
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		groupId: { type: "string", required: true, max: 64 },
		name: { type: "string", required: true, max: 100 },
		/** The secret part of the webhook URL. */
		token: { type: "string", required: true, max: 64 },
		/** HMAC key of the signature; shown once, when the robot is created. */
		secret: { type: "string", required: true, max: 128 },
		createdBy: { type: "string", required: true, max: 64 },
		createdAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["token"], unique: true }, { fields: ["groupId"] }, { fields: ["companyId"] }],
	hidden: ["token", "secret"],
};

/** A signature is good for an hour either side of the sender's clock (the workplace-chat robot convention). */
const SIGNATURE_WINDOW_MS = 60 * 60_000;

interface RobotConfig extends Record<string, unknown> {
	/** Messages one robot may post per minute. */
	messagesPerMinute: number;
	/** Public base URL the webhook URLs start with (e.g. https://chat.example.com); empty = a path on this platform. */
	publicBaseUrl: string;
}

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Doc = Record<string, unknown>;
type HookBody = { msgtype?: unknown; text?: { content?: unknown }; markdown?: { title?: unknown; text?: unknown } };
type Svc = DbMethods &
	TenantMethods & {
		config: RobotConfig;
		broker: Context["broker"];
		redis: Redis | null;
		limiter: RateLimiterAbstract;
		limit: number;
		webhookUrl(token: string): string;
		groupAdmin(ctx: Ctx, groupId: string): Promise<GroupAccess>;
		verify(robot: Doc, timestamp: string, sign: string): void;
		consume(robotId: string): Promise<void>;
		view(robot: Doc): Doc;
	};

/** `sign` of the workplace-chat robot convention: base64(HMAC-SHA256(key = secret, message = timestamp + "\n" + secret)). */
export function robotSignature(secret: string, timestamp: string): string {
	return createHmac("sha256", secret).update(`${timestamp}\n${secret}`).digest("base64");
}

/** The message a hook body asks for, or 422. */
function hookMessage(body: HookBody): { type: "text" | "markdown"; content: string } {
	if (body.msgtype === "text" && typeof body.text?.content === "string") return { type: "text", content: body.text.content };
	if (body.msgtype === "markdown" && typeof body.markdown?.text === "string") {
		const title = typeof body.markdown.title === "string" && body.markdown.title.trim() ? `### ${body.markdown.title.trim()}\n\n` : "";
		return { type: "markdown", content: title + body.markdown.text };
	}
	throw clientError("The body is { msgtype: 'text', text: { content } } or { msgtype: 'markdown', markdown: { title, text } }", 422, "VALIDATION_ERROR", { field: "msgtype" });
}

/**
 * Group robots, as users know them from workplace chat apps: a group's owner or administrator
 * adds a robot and gets an incoming webhook URL and a secret; a POST to the URL signed with the
 * secret (timestamp + HMAC, good for an hour) posts text or markdown into the group as the robot,
 * at most `robots.messagesPerMinute` a minute per robot (shared across nodes through Redis).
 */
const MachineService = serviceSchema({
	name: "machine",
	mixins: [DbMixin(RobotEntity), TenantMixin("Robot"), ConfigMixin<RobotConfig>("robots", { messagesPerMinute: 20, publicBaseUrl: "" })],
	settings: {
		rest: "/robots",
		app: "messaging",
		permissions: {
			"robot:manage": { description: "Add and remove robots in the groups I administer", member: true },
		},
	},

	actions: {
		create: {
			rest: "POST /",
			permission: "robot:manage",
			description: "Adds a robot to a group I own or administer; answers its webhook URL and secret (the secret is shown this once).",
			params: { $$strict: true, name: nameParam, groupId: idParam },
			async handler(this: Svc, ctx: Ctx<{ name: string; groupId: string }>) {
				const { group } = await this.groupAdmin(ctx, ctx.params.groupId);
				const token = randomBytes(24).toString("base64url");
				const secret = `SEC${randomBytes(32).toString("hex")}`;
				const robot = await this.createEntity(ctx, { companyId: group.companyId, groupId: group.id, name: ctx.params.name, token, secret, createdBy: this.caller(ctx).id, createdAt: new Date() });
				return { ...this.view(robot), webhookUrl: this.webhookUrl(token), secret };
			},
		},

		list: {
			rest: "GET /",
			permission: "robot:manage",
			description: "The robots of a group I own or administer.",
			params: { $$strict: true, groupId: idParam },
			async handler(this: Svc, ctx: Ctx<{ groupId: string }>) {
				await this.groupAdmin(ctx, ctx.params.groupId);
				return (await this.findEntities(ctx, { query: { groupId: ctx.params.groupId }, sort: ["createdAt"] })).map(r => this.view(r));
			},
		},

		remove: {
			rest: "DELETE /:id",
			permission: "robot:manage",
			description: "Removes a robot (its webhook stops working at once).",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				const robot = await this.getOwned(ctx, ctx.params.id);
				await this.groupAdmin(ctx, robot.groupId as string);
				await this.removeEntity(ctx, robot.id as string);
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		hook: {
			rest: "POST /hooks/:token",
			auth: false,
			audit: false,
			description: "A robot's incoming webhook (no bearer token): `?timestamp=<ms>&sign=<base64 HMAC-SHA256(secret, timestamp + \"\\n\" + secret)>`, body `{ msgtype: 'text', text: { content } }` or `{ msgtype: 'markdown', markdown: { title, text } }`.",
			params: {
				token: { type: "string", min: 1, max: 64 },
				timestamp: { type: "string", pattern: /^\d{10,16}$/ },
				sign: { type: "string", min: 1, max: 200 },
				msgtype: { type: "enum", values: ["text", "markdown"] },
				text: { type: "object", optional: true, props: { content: { type: "string", min: 1, max: 5000 } } },
				markdown: { type: "object", optional: true, props: { title: { type: "string", max: 100, optional: true }, text: { type: "string", min: 1, max: 20_000 } } },
			},
			async handler(this: Svc, ctx: Ctx<{ token: string; timestamp: string; sign: string } & HookBody>) {
				const [robot] = await this.findEntities(ctx, { query: { token: ctx.params.token }, limit: 1, withHidden: true });
				// An unknown token and a bad signature look alike from outside.
				if (!robot) throw clientError("Invalid robot signature", 401, "INVALID_SIGNATURE");
				this.verify(robot, ctx.params.timestamp, ctx.params.sign);
				const message = hookMessage(ctx.params);
				await this.consume(robot.id as string);
				const sent = await ctx.call<{ id: string; seq: number }, object>("groupmsg.post", {
					companyId: robot.companyId, groupId: robot.groupId, senderId: `robot:${robot.id}`, ...message,
				});
				return { errcode: 0, errmsg: "ok", messageId: sent.id, seq: sent.seq };
			},
		},
	},

	events: {
		async "group.group.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { groupId: ctx.params.entity.id });
		},
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		webhookUrl(this: Svc, token: string) {
			return `${this.config.publicBaseUrl.replace(/\/+$/, "")}/api/robots/hooks/${token}`;
		},

		/** The group, when I am its owner or an administrator (404 when I am not in it). */
		async groupAdmin(this: Svc, ctx: Ctx, groupId: string) {
			const me = this.caller(ctx);
			if (!me.companyId) throw clientError("Robots belong to a company's groups; this account belongs to none", 403, "FORBIDDEN");
			const access = await ctx.call<GroupAccess, object>("group.access", { groupId, userId: me.id, companyId: me.companyId });
			if (access.member.role === "member") throw clientError("Only the group's owner or administrators manage its robots", 403, "FORBIDDEN");
			return access;
		},

		verify(robot: Doc, timestamp: string, sign: string) {
			const sentAt = Number(timestamp);
			if (Math.abs(Date.now() - sentAt) > SIGNATURE_WINDOW_MS)
				throw clientError("The signature's timestamp is more than an hour away from now", 401, "SIGNATURE_EXPIRED");
			const expected = Buffer.from(robotSignature(robot.secret as string, timestamp));
			// A '+' of base64 sent without URL encoding arrives as a space.
			const given = Buffer.from(sign.replace(/ /g, "+"));
			if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw clientError("Invalid robot signature", 401, "INVALID_SIGNATURE");
		},

		async consume(this: Svc, robotId: string) {
			try {
				await this.limiter.consume(robotId);
			} catch (rejection) {
				if (!(rejection instanceof RateLimiterRes)) throw rejection;
				throw clientError(`A robot posts at most ${this.limit} messages a minute`, 429, "RATE_LIMITED", { retryAfter: Math.ceil(rejection.msBeforeNext / 1000) });
			}
		},

		view(robot: Doc) {
			const { id, companyId, groupId, name, createdBy, createdAt } = robot;
			return { id, companyId, groupId, name, createdBy, createdAt };
		},

		/** A new per-minute budget when the configuration changes. */
		configChanged(this: Svc) {
			this.limit = this.config.messagesPerMinute;
			const keyPrefix = `${this.broker.namespace || "cnbicloud"}:robots:${this.limit}`;
			const memory = new RateLimiterMemory({ keyPrefix, points: this.limit, duration: 60 });
			this.limiter = this.redis ? new RateLimiterRedis({ storeClient: this.redis, keyPrefix, points: this.limit, duration: 60, insuranceLimiter: memory }) : memory;
		},
	},

	created(this: Svc) {
		const redisUrl = this.broker.options.platform?.redisUrl;
		this.redis = redisUrl ? new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 }) : null;
		(this as unknown as { configChanged(): void }).configChanged();
	},

	stopped(this: Svc) {
		this.redis?.disconnect();
	},
});

export default MachineService;
