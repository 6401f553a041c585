import { randomUUID } from "node:crypto";
import type { Context, Service } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { ConfigMixin } from "../../mixins/config.mixin";
import { BUS_CONFIG_NAMESPACE, BUS_DEFAULTS, busConfig, consumerTimings } from "../../lib/bus/config";
import { TopicConsumers, channelAdapter, publishMessage, HANDLER_FAILURES_BEFORE_DEAD_LETTER, STREAM_CONFIG } from "../../lib/bus/consumers";
import { SubscriptionEntity, isSpreadArray, secretParam, topicParam, urlParam, webhookUrlProblem, type Subscription } from "../../lib/bus/subscriptions";
import { deliverWithRetries, webhookBody, type DeliveryOutcome } from "../../lib/bus/delivery";
import { BRIDGED_EVENTS, bridgedMessage } from "../../lib/bus/bridge";
import { DEAD_LETTER_SERVICE, FAILED_CHANNEL, subscriptionOfGroup, webhookGroup } from "../../lib/bus/names";
import { idParam, listParams, pageOf, type ListQuery } from "../../lib/org/params";
import { internalContext, serviceSchema } from "../../lib/service";
import { syncOtherNodes } from "../../lib/replicas";
import { clientError } from "../../lib/errors";
import type { BusConfig, BusMessage, Published, PublishParams } from "../../types/bus";
import type { RequestMeta } from "../../types/context";
import type { EntityEvent } from "../../types/org";

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Svc = Service & DbMethods & TenantMethods & {
	config: BusConfig;
	consumers: TopicConsumers;
	/** Per subscription: aborts its deliveries in hand when it is deleted. */
	aborts: Map<string, AbortController>;
	consumersReady: Promise<void>;
	reconcileTimer: NodeJS.Timeout | null;
	running: boolean;
	settingsNow(): BusConfig;
	publishOne(ctx: Ctx, params: PublishInput): Promise<Published>;
	consumerOf(sub: Subscription): Parameters<TopicConsumers["add"]>[0];
	deliver(sub: Subscription, message: BusMessage, signal: AbortSignal): Promise<void>;
	recordDeadLetter(ctx: Ctx, sub: SubscriptionRef, message: BusMessage, outcome: DeliveryOutcome): Promise<void>;
	syncSubscription(ctx: Ctx, id: string): Promise<void>;
	dropConsumer(id: string, options?: Parameters<TopicConsumers["remove"]>[1]): Promise<void>;
	removeSubscription(ctx: Ctx, sub: Subscription): Promise<unknown>;
	reconcile(): Promise<void>;
	scheduleReconcile(): void;
};
type SubscriptionRef = Pick<Subscription, "id" | "companyId" | "topic" | "url">;
type PublishInput = PublishParams & { kind: BusMessage["source"]["kind"] };

/**
 * The integration bus: topics per company on @moleculer/channels (see lib/bus), outbound signed
 * webhooks with retries and dead letters, and the platform's domain events bridged onto topics.
 * Other services publish with `msgbus.publish` and consume with `TopicConsumers` (lib/bus/consumers).
 */
const MsgbusService = serviceSchema({
	name: "msgbus",
	mixins: [DbMixin(SubscriptionEntity), TenantMixin("Subscription"), ConfigMixin(BUS_CONFIG_NAMESPACE, BUS_DEFAULTS)],
	settings: {
		rest: "/bus",
		app: "messaging",
		permissions: {
			"bus:publish": { description: "Publish messages on my company's bus topics" },
			"bus:subscribe": { description: "Manage my company's webhook subscriptions and read its dead letters" },
		},
	},

	actions: {
		publishTopic: {
			rest: "POST /topics/:topic",
			permission: "bus:publish",
			description: "Publish the JSON object body on one of my company's topics; 202 with the message id. Subscribers receive it at least once.",
			params: { topic: topicParam },
			async handler(this: Svc, ctx: Ctx<Record<string, unknown> & { topic: string }>) {
				const { topic, ...payload } = ctx.params;
				// The platform administrator names the company; for everyone else `companyId` is part of the message.
				const named = this.caller(ctx).platformAdmin ? payload.companyId : undefined;
				if (named !== undefined) delete payload.companyId;
				const companyId = this.companyOf(ctx, typeof named === "string" ? named : undefined);
				if (isSpreadArray(payload)) throw clientError("The message must be a JSON object, not an array", 422, "VALIDATION_ERROR", { field: "body" });
				const published = await this.publishOne(ctx, { companyId, topic, payload, source: ctx.meta.user?.username, kind: "user" });
				ctx.meta.$statusCode = 202;
				return published;
			},
		},

		/** For other services: `msgbus.publish({ companyId, topic, payload })`. */
		publish: {
			visibility: "public",
			params: { $$strict: true, companyId: idParam, topic: topicParam, payload: "object", source: { type: "string", max: 100, optional: true } },
			handler(this: Svc, ctx: Ctx<PublishParams>) {
				return this.publishOne(ctx, { ...ctx.params, source: ctx.params.source ?? ctx.caller ?? undefined, kind: "service" });
			},
		},

		subscriptions: {
			rest: "GET /subscriptions",
			permission: "bus:subscribe",
			description: "My company's webhook subscriptions (without their secrets).",
			params: { $$strict: true, ...listParams, topic: { ...topicParam, optional: true }, companyId: companyIdParam },
			handler(this: Svc, ctx: Ctx<ListQuery & { topic?: string; companyId?: string }>) {
				const query = this.tenantQuery(ctx, ctx.params.topic ? { topic: ctx.params.topic } : {}, ctx.params.companyId);
				return this.listEntities(ctx, { query, ...pageOf(ctx.params, "-createdAt") });
			},
		},

		subscribe: {
			rest: "POST /subscriptions",
			permission: "bus:subscribe",
			description: "POST every message of a topic to `url` (http or https), signed `X-Signature: sha256=<HMAC-SHA256(secret, body)>`.",
			params: { $$strict: true, topic: topicParam, url: urlParam, secret: secretParam, companyId: companyIdParam },
			async handler(this: Svc, ctx: Ctx<{ topic: string; url: string; secret: string; companyId?: string }>) {
				const { topic, url, secret } = ctx.params;
				const companyId = this.companyOf(ctx, ctx.params.companyId);
				const problem = webhookUrlProblem(url);
				if (problem) throw clientError(problem, 422, "VALIDATION_ERROR", { field: "url" });
				const limit = this.settingsNow().maxSubscriptionsPerCompany;
				if ((await this.countEntities(ctx, { query: { companyId } })) >= limit)
					throw clientError(`A company has at most ${limit} subscriptions`, 422, "LIMIT_REACHED");
				if (await this.countEntities(ctx, { query: { companyId, topic, url } }))
					throw clientError(`'${url}' already receives '${topic}'`, 409, "CONFLICT", { topic, url });
				const created = await this.createEntity(ctx, { companyId, topic, url, secret, createdAt: new Date(), createdBy: this.caller(ctx).id });
				try {
					// The consumer group exists once this node subscribed: every message published from now on reaches the webhook.
					await this.syncSubscription(ctx, created.id as string);
				} catch (err) {
					await this.removeEntity(ctx, created.id as string);
					throw err;
				}
				await syncOtherNodes(this, ctx, created.id as string, "subscription");
				return created;
			},
		},

		unsubscribe: {
			rest: "DELETE /subscriptions/:id",
			permission: "bus:subscribe",
			description: "Stop a webhook: deliveries in hand are abandoned, pending messages dropped.",
			params: { $$strict: true, id: idParam },
			async handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.removeSubscription(ctx, (await this.getOwned(ctx, ctx.params.id)) as unknown as Subscription);
			},
		},

		/** Makes this node's consumer of one subscription match the store (called on every node after a change). */
		sync: {
			visibility: "public",
			params: { id: idParam },
			handler(this: Svc, ctx: Ctx<{ id: string }>) {
				return this.syncSubscription(ctx, ctx.params.id).then(() => true);
			},
		},

		/** The subscriptions this node consumes (operations, tests). */
		consumers: {
			visibility: "public",
			async handler(this: Svc) {
				await this.consumersReady;
				return { nodeID: this.broker.nodeID, subscriptions: this.consumers.keys().sort() };
			},
		},
	},

	/** Messages whose consumer threw too often: the channels library moved them here. Recorded as dead letters. */
	channels: {
		[FAILED_CHANNEL]: {
			group: "msgbus",
			maxRetries: 10,
			deadLettering: { enabled: false },
			// The same stream settings as the topic consumers, which create this stream too (JetStream refuses a second, different definition).
			nats: { streamConfig: STREAM_CONFIG },
			async handler(this: Svc, message: BusMessage, raw: unknown) {
				const headers = channelAdapter(this.broker).parseMessageHeaders(raw) ?? {};
				const id = subscriptionOfGroup(headers["x-original-group"]);
				if (!id || !message?.id) return this.logger.warn(`A message of '${headers["x-original-channel"]}' failed too often and was dropped`);
				const ctx = internalContext<Ctx>(this.broker);
				const sub = (await this.getEntity(ctx, id)) as Subscription | null;
				const error = `The delivery failed ${HANDLER_FAILURES_BEFORE_DEAD_LETTER} times inside the platform; see the msgbus logs`;
				await this.recordDeadLetter(ctx, sub ?? { id, companyId: message.companyId, topic: message.topic, url: "(deleted)" }, message, { delivered: false, attempts: 0, lastStatus: null, lastError: error });
			},
		},
	},

	events: {
		...Object.fromEntries(
			BRIDGED_EVENTS.map(name => [
				name,
				async function (this: Svc, ctx: Context<EntityEvent>) {
					const bridged = bridgedMessage(name, ctx.params);
					if (bridged) await this.publishOne(ctx as Ctx, { ...bridged, topic: name, source: name, kind: "event" });
				},
			]),
		),
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			const subs = await this.findEntities(ctx, { query: { companyId: ctx.params.entity.id } });
			for (const sub of subs) await this.removeSubscription(ctx as Ctx, sub as unknown as Subscription);
		},
	},

	methods: {
		settingsNow(this: Svc) {
			return busConfig(this.config);
		},

		async publishOne(this: Svc, ctx: Ctx, { companyId, topic, payload, source, kind }: PublishInput) {
			const max = this.settingsNow().maxPayloadBytes;
			if (Buffer.byteLength(JSON.stringify(payload)) > max) throw clientError(`The message is larger than ${max} bytes`, 413, "PAYLOAD_TOO_LARGE");
			const message: BusMessage = {
				id: randomUUID(), companyId, topic, payload, publishedAt: new Date().toISOString(),
				source: { kind, name: source ?? null, userId: ctx.meta.user?.id ?? null },
			};
			await publishMessage(this.broker, message, { streamMaxLength: this.settingsNow().streamMaxLength });
			return { id: message.id, topic, publishedAt: message.publishedAt };
		},

		consumerOf(this: Svc, sub: Subscription) {
			const current = this.aborts.get(sub.id);
			if (!current || current.signal.aborted) this.aborts.set(sub.id, new AbortController());
			return {
				key: sub.id, companyId: sub.companyId, topic: sub.topic, group: webhookGroup(sub.id),
				// A dropped subscription has no controller: its late messages are abandoned at once.
				handler: (message: BusMessage) => this.deliver(sub, message, this.aborts.get(sub.id)?.signal ?? AbortSignal.abort()),
			};
		},

		async deliver(this: Svc, sub: Subscription, message: BusMessage, signal: AbortSignal) {
			// The channel is the company's own; this guards against a bug ever crossing companies.
			if (message?.companyId !== sub.companyId || message.topic !== sub.topic)
				return this.logger.error(`Message ${message?.id} of another company or topic reached subscription ${sub.id}; dropped`);
			const outcome = await deliverWithRetries(sub, message, this.settingsNow(), {
				signal,
				userAgent: `cnbicloud-msgbus/${this.broker.options.platform?.version ?? "0"}`,
				onFailedAttempt: (attempt, error) => this.logger.debug(`Webhook ${sub.id}, message ${message.id}, attempt ${attempt}: ${error}`),
			});
			if (!outcome.delivered) await this.recordDeadLetter(internalContext<Ctx>(this.broker), sub, message, outcome);
		},

		async recordDeadLetter(this: Svc, ctx: Ctx, sub: SubscriptionRef, message: BusMessage, outcome: DeliveryOutcome) {
			this.logger.warn(`Webhook ${sub.id} refused message ${message.id} of '${sub.topic}' after ${outcome.attempts} attempt(s): ${outcome.lastError}`);
			await ctx.call(`${DEAD_LETTER_SERVICE}.record`, {
				companyId: sub.companyId, subscriptionId: sub.id, topic: sub.topic, url: sub.url, messageId: message.id,
				message: JSON.parse(webhookBody(message)), attempts: outcome.attempts, lastStatus: outcome.lastStatus, lastError: outcome.lastError ?? "unknown",
			});
		},

		async syncSubscription(this: Svc, ctx: Ctx, id: string) {
			await this.consumersReady;
			const sub = (await this.getEntity(ctx, id, { withHidden: true })) as Subscription | null;
			if (sub) return this.consumers.add(this.consumerOf(sub));
			await this.dropConsumer(id);
		},

		/** Deletes the subscription, stops its consumers everywhere and, once no node reads it, its consumer group. */
		async removeSubscription(this: Svc, ctx: Ctx, sub: Subscription) {
			const removed = await this.removeEntity(ctx, sub.id);
			// A reader of a deleted Redis group spins on errors: the group goes only when every node confirmed.
			const othersDropped = await syncOtherNodes(this, ctx, sub.id, "subscription");
			await this.dropConsumer(sub.id, othersDropped ? { destroyGroup: true, group: webhookGroup(sub.id), companyId: sub.companyId, topic: sub.topic } : {});
			return removed;
		},

		/** Abandons the deliveries in hand, then unsubscribes. */
		async dropConsumer(this: Svc, id: string, options?: Parameters<TopicConsumers["remove"]>[1]) {
			this.aborts.get(id)?.abort();
			await this.consumers.remove(id, options);
			this.aborts.delete(id);
		},

		/** This node's consumers become the stored subscriptions (at start, then every `reconcileIntervalMs`). */
		async reconcile(this: Svc) {
			const subs = (await this.findEntities(internalContext(this.broker), { withHidden: true })) as unknown as Subscription[];
			const wanted = new Set(subs.map(s => s.id));
			await Promise.all(this.consumers.keys().filter(key => !wanted.has(key)).map(key => this.dropConsumer(key)));
			await Promise.all(subs.map(sub => this.consumers.add(this.consumerOf(sub))));
		},

		scheduleReconcile(this: Svc) {
			this.reconcileTimer = setTimeout(() => {
				this.reconcile()
					.catch(err => this.running && this.logger.warn("Reconciling the bus consumers failed; trying again later", (err as Error).message))
					.finally(() => this.reconcileTimer && this.scheduleReconcile());
			}, this.settingsNow().reconcileIntervalMs);
		},

		/** ConfigMixin: new back-off or timeouts change how long a message may stay unacknowledged. */
		configChanged(this: Svc) {
			this.consumers.retune();
		},
	},

	created(this: Svc) {
		this.aborts = new Map();
		this.consumers = new TopicConsumers(this, () => consumerTimings(this.settingsNow()));
		this.consumersReady = Promise.resolve();
		this.reconcileTimer = null;
		this.running = false;
	},

	started(this: Svc) {
		this.running = true;
		// The Channels middleware connects its adapter after every service has started: subscribe once it has.
		this.consumersReady = this.consumers
			.whenConnected()
			.then(connected => (connected ? this.reconcile() : undefined))
			.catch(err => this.logger.error("Subscribing the bus consumers failed; the next reconcile tries again", err));
		this.scheduleReconcile();
	},

	async stopped(this: Svc) {
		this.running = false;
		if (this.reconcileTimer) clearTimeout(this.reconcileTimer);
		this.reconcileTimer = null;
		// Deliveries in hand finish (at most one delivery budget); a node killed instead leaves them to another node.
		await this.consumers.clear();
	},
});

export default MsgbusService;
