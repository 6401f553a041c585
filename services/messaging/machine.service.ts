import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Context, Service } from "moleculer";
import type { RateLimiterAbstract } from "rate-limiter-flexible";
import Redis from "ioredis";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, type TenantMethods } from "../../mixins/tenant.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { idParam, nameParam } from "../../lib/org/params";
import { internalContext, serviceSchema } from "../../lib/service";
import { clientError } from "../../lib/errors";
import { consume, createLimiter } from "../../lib/rate-limit";
import { RobotTopics, checkedTopics, topicRobotOf, topicsOf, topicsParam } from "../../lib/messaging/robot-topics";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { EntityEvent } from "../../types/org";
import { companyMember, myGroup, type GroupAccess } from "../../lib/messaging/members";

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
		/** The company's bus topics whose messages the robot posts into its group. */
		topics: { type: "json" },
		createdBy: { type: "string", required: true, max: 64 },
		createdAt: { type: "date", required: true },
	},
	indexes: [{ fields: ["token"], unique: true }, { fields: ["groupId"] }, { fields: ["companyId"] }],
	hidden: ["token", "secret"],
};

/** A signature is good for an hour either side of the sender's clock (the workplace-chat robot convention). */
const SIGNATURE_WINDOW_MS = 60 * 60_000;

interface RobotConfig extends Record<string, unknown> {
	/** Messages one robot may post per window (webhook and bus together). */
	messagesPerWindow: number;
	/** The window of `messagesPerWindow`, in seconds (a minute unless changed). */
	rateWindowSeconds: number;
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
		windowMs: number;
		robotTopics: RobotTopics;
		webhookUrl(token: string): string;
		groupAdmin(ctx: Ctx, groupId: string): Promise<GroupAccess>;
		verify(robot: Doc, timestamp: string, sign: string): void;
		take(robotId: string): Promise<number>;
		consume(robotId: string): Promise<void>;
		removeRobots(ctx: Ctx, query: Doc): Promise<void>;
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
 * at most `robots.messagesPerWindow` per `robots.rateWindowSeconds` per robot (shared across nodes through Redis).
 * A robot can also follow its company's bus topics: what arrives is posted into the group as
 * markdown, once per message, within the same budget (lib/messaging/robot-topics.ts).
 */
const MachineService = serviceSchema({
	name: "machine",
	mixins: [DbMixin(RobotEntity), TenantMixin("Robot"), ConfigMixin<RobotConfig>("robots", { messagesPerWindow: 20, rateWindowSeconds: 60, publicBaseUrl: "" })],
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
			description: "Adds a robot to a group I own or administer; answers its webhook URL and secret (the secret is shown this once). `topics`: bus topics of my company it posts.",
			params: { $$strict: true, name: nameParam, groupId: idParam, topics: { ...topicsParam, optional: true } },
			async handler(this: Svc, ctx: Ctx<{ name: string; groupId: string; topics?: unknown[] }>) {
				const { group } = await this.groupAdmin(ctx, ctx.params.groupId);
				const topics = checkedTopics(ctx.params.topics ?? []);
				const token = randomBytes(24).toString("base64url");
				const secret = `SEC${randomBytes(32).toString("hex")}`;
				const robot = await this.createEntity(ctx, { companyId: group.companyId, groupId: group.id, name: ctx.params.name, token, secret, topics, createdBy: this.caller(ctx).id, createdAt: new Date() });
				if (topics.length) {
					try {
						await this.robotTopics.changed(ctx, robot.id as string, null);
					} catch (err) {
						// This node could not subscribe: no robot (the next reconcile settles what is left).
						await this.removeEntity(ctx, robot.id as string);
						throw err;
					}
				}
				return { ...this.view(robot), webhookUrl: this.webhookUrl(token), secret };
			},
		},

		setTopics: {
			rest: "PUT /:id/topics",
			permission: "robot:manage",
			description: "The bus topics of my company whose messages the robot posts into its group (each as markdown, once; within its rate). `[]` stops.",
			params: { $$strict: true, id: idParam, topics: topicsParam },
			async handler(this: Svc, ctx: Ctx<{ id: string; topics: unknown[] }>) {
				const robot = await this.getOwned(ctx, ctx.params.id);
				await this.groupAdmin(ctx, robot.groupId as string);
				const topics = checkedTopics(ctx.params.topics);
				const updated = await this.updateEntity(ctx, robot.id as string, { topics });
				if (!updated) throw clientError(`Robot '${ctx.params.id}' not found`, 404, "NOT_FOUND", { id: ctx.params.id });
				try {
					await this.robotTopics.changed(ctx, robot.id as string, topicRobotOf(robot));
				} catch (err) {
					// This node could not subscribe: back to the topics it had (the next reconcile settles what is left).
					await this.updateEntity(ctx, robot.id as string, { topics: topicsOf(robot) });
					throw err;
				}
				return this.view(updated);
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
				await this.robotTopics.removed(ctx, topicRobotOf(robot));
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

		/** Makes this node's consumers of one robot's topics match the store (called on every node after a change). */
		sync: {
			visibility: "public",
			params: { id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.robotTopics.sync(ctx.params.id).then(() => true);
			},
		},

		/** The robot topics this node consumes, as "<robotId> <topic>" (operations, tests). */
		consumers: {
			visibility: "public",
			handler(this: Svc) {
				return { nodeID: this.broker.nodeID, consumers: this.robotTopics.keys() };
			},
		},
	},

	events: {
		async "group.group.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeRobots(ctx as Ctx, { groupId: ctx.params.entity.id });
		},
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeRobots(ctx as Ctx, { companyId: ctx.params.entity.id });
		},
	},

	methods: {
		webhookUrl(this: Svc, token: string) {
			return `${this.config.publicBaseUrl.replace(/\/+$/, "")}/api/robots/hooks/${token}`;
		},

		/** The group, when I am its owner or an administrator (404 when I am not in it). */
		async groupAdmin(this: Svc, ctx: Ctx, groupId: string) {
			const me = companyMember(ctx, "Robots belong to a company's groups");
			return myGroup(ctx, me, groupId, ["owner", "admin"], "Only the group's owner or administrators manage its robots");
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

		/** Takes one message of the robot's budget: 0, or the milliseconds until the budget has room again. */
		async take(this: Svc, robotId: string) {
			const result = (await consume(this.limiter, robotId))!;
			return result.allowed ? 0 : Math.max(1, result.resetMs);
		},

		/** The webhook's budget: over it, 429. */
		async consume(this: Svc, robotId: string) {
			const wait = await this.take(robotId);
			const per = this.windowMs === 60_000 ? "a minute" : `per ${this.windowMs / 1000} seconds`;
			if (wait > 0) throw clientError(`A robot posts at most ${this.limit} messages ${per}`, 429, "RATE_LIMITED", { retryAfter: Math.ceil(wait / 1000) });
		},

		/** Deletes the robots of a group or company, and their consumers everywhere. */
		async removeRobots(this: Svc, ctx: Ctx, query: Doc) {
			const robots = await this.findEntities(ctx, { query });
			await this.removeEntities(ctx, query);
			for (const robot of robots) await this.robotTopics.removed(ctx, topicRobotOf(robot));
		},

		view(robot: Doc) {
			const { id, companyId, groupId, name, createdBy, createdAt } = robot;
			return { id, companyId, groupId, name, topics: topicsOf(robot), createdBy, createdAt };
		},

		/** A new budget when the configuration changes. */
		configChanged(this: Svc) {
			this.limit = Math.max(1, Math.floor(Number(this.config.messagesPerWindow)) || 20);
			const seconds = Math.min(3600, Math.max(1, Math.floor(Number(this.config.rateWindowSeconds)) || 60));
			this.windowMs = seconds * 1000;
			const keyPrefix = `${this.broker.namespace || "cnbicloud"}:robots:${this.limit}:${seconds}`;
			this.limiter = createLimiter(this.redis, keyPrefix, this.limit, seconds);
			// A held message may now wait a longer window before other nodes may take it.
			this.robotTopics?.retune();
		},
	},

	created(this: Svc) {
		const redisUrl = this.broker.options.platform?.redisUrl;
		this.redis = redisUrl ? new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 }) : null;
		(this as unknown as { configChanged(): void }).configChanged();
		this.robotTopics = new RobotTopics(this as unknown as Service, {
			robot: id => this.getEntity(internalContext(this.broker), id),
			robots: () => this.findEntities(internalContext(this.broker)),
			take: robotId => this.take(robotId),
			windowMs: () => this.windowMs,
		});
	},

	started(this: Svc) {
		// Not awaited: the Channels adapter connects after every service has started.
		this.robotTopics.start();
	},

	async stopped(this: Svc) {
		await this.robotTopics.stop();
		this.redis?.disconnect();
	},
});

export default MachineService;
