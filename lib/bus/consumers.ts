/**
 * Consumers of company topics that come and go at run time (a webhook subscription, a robot),
 * on the adapter of the Channels middleware (`broker.channelAdapter`).
 *
 * The middleware only subscribes the `channels` a schema declares when the service is created;
 * a company's topic channel is named after the company, so its consumers are subscribed here, with
 * the same channel objects the middleware builds: the name prefixed by the namespace, a consumer
 * group (each group receives every message once; the nodes of a group share them), `maxInFlight`,
 * `maxRetries` and dead-lettering for a handler that throws, and the handler wrapped by the
 * `localChannel` middlewares. A handler that returns acknowledges the message; one that throws (or
 * a node that dies) leaves it to be delivered again, on Redis Streams after `redeliverAfterMs`
 * (XAUTOCLAIM), on JetStream after `ack_wait`.
 *
 *   const consumers = new TopicConsumers(service, () => ({ maxInFlight: 4, redeliverAfterMs: 60_000, claimIntervalMs: 1000 }));
 *   await consumers.add({ key: robot.id, companyId, topic: "orders", group: `machine-robot-${robot.id}`, handler });
 *   await consumers.remove(robot.id, { destroyGroup: true });   // the robot is gone for good
 *   await consumers.clear();                                    // in the service's stopped()
 */
import type { Service, ServiceBroker } from "moleculer";
import type { BusMessage } from "../../types/bus";
import type { ChannelsSettings } from "../../types/platform";
import { FAILED_CHANNEL, busChannel } from "./names";

/** A handler that threw this often (a node dying mid-message counts) sends the message to `bus.failed`. */
export const HANDLER_FAILURES_BEFORE_DEAD_LETTER = 5;

/** JetStream streams of company topics: a message lives until every consumer group acknowledged it, at most a week. */
export const STREAM_CONFIG = { retention: "interest", max_age: 7 * 24 * 3600 * 1e9 };

export interface ConsumerTimings {
	/** Messages this node handles at once for one consumer. */
	maxInFlight: number;
	/** How long a message may stay unacknowledged before it is delivered again (to any node of the group). */
	redeliverAfterMs: number;
	/** Redis Streams: how often each consumer looks for such messages. */
	claimIntervalMs: number;
}

export interface TopicConsumerSpec {
	/** Unique among this service's consumers. */
	key: string;
	companyId: string;
	topic: string;
	/** The consumer group; the same on every node, so that the nodes share the messages. */
	group: string;
	/** Return to acknowledge; throw to have the message delivered again. Must be idempotent (by `message.id`). */
	handler(message: BusMessage, raw: unknown): Promise<void>;
}

/** What this module uses of @moleculer/channels' adapters (they are untyped JavaScript). */
interface ChannelAdapter {
	connected: boolean;
	opts: { servicePrefix?: string };
	addPrefixTopic(name: string): string;
	subscribe(chan: Chan, svc: Service): Promise<void>;
	unsubscribe(chan: Chan): Promise<void>;
	parseMessageHeaders(raw: unknown): Record<string, string> | null;
	clients?: Map<string, { xgroup(...args: string[]): Promise<unknown>; exists(key: string): Promise<number> }>;
	manager?: { consumers: { delete(stream: string, durable: string): Promise<unknown> }; streams: { info(stream: string): Promise<unknown> } };
}

interface Chan {
	id: string;
	name: string;
	group: string;
	unsubscribing: boolean;
	handler(message: unknown, raw: unknown): Promise<void>;
	[option: string]: unknown;
}

type ChannelBroker = ServiceBroker & {
	channelAdapter?: ChannelAdapter;
	sendToChannel?(channel: string, payload: unknown, opts?: Record<string, unknown>): Promise<void>;
	middlewares: { wrapHandler(hook: string, handler: Chan["handler"], def: Chan): Chan["handler"] };
};

export function channelAdapter(broker: ServiceBroker): ChannelAdapter {
	const adapter = (broker as ChannelBroker).channelAdapter;
	if (!adapter) throw new Error("The Channels middleware is not configured on this broker (see moleculer.config.ts)");
	return adapter;
}

function channelsKind(broker: ServiceBroker): ChannelsSettings["kind"] {
	return broker.options.platform?.channels.kind ?? "memory";
}

/** Topic streams this node has seen: a stream, once made by a consumer group, stays. */
const knownStreams = new WeakMap<ServiceBroker, Set<string>>();

/**
 * Whether the topic has a stream, made by its first consumer group. Without one nobody could
 * receive the message (JetStream would even refuse it: "503 no responders"), and publishing
 * would only make one: bridged events would give every company a stream per event, read by no one.
 */
async function streamExists(broker: ServiceBroker, kind: ChannelsSettings["kind"], channel: string): Promise<boolean> {
	if (kind === "memory") return true;
	const known = knownStreams.get(broker) ?? new Set<string>();
	knownStreams.set(broker, known);
	if (known.has(channel)) return true;
	const adapter = channelAdapter(broker);
	const name = adapter.addPrefixTopic(channel);
	if (kind === "redis") {
		if (!(await adapter.clients?.get("Pub")?.exists(name))) return false;
	} else {
		try {
			// The adapter names a channel's stream with '_' for '.'.
			await adapter.manager?.streams.info(name.split(".").join("_"));
		} catch (err) {
			const api = (err as { api_error?: { code?: number } }).api_error;
			if (api?.code === 404 || /not found/i.test((err as Error).message)) return false;
			throw err;
		}
	}
	known.add(channel);
	return true;
}

/**
 * Puts `message` on its company's topic. Each consumer group receives it once; a group created
 * later does not (on every transport a group starts at the messages published after it).
 */
export async function publishMessage(broker: ServiceBroker, message: BusMessage, options: { streamMaxLength: number }): Promise<void> {
	const send = (broker as ChannelBroker).sendToChannel;
	if (!send) throw new Error("The Channels middleware is not configured on this broker (see moleculer.config.ts)");
	const kind = channelsKind(broker);
	const channel = busChannel(message.companyId, message.topic);
	if (!(await streamExists(broker, kind, channel))) return;
	// Redis Streams keep entries after delivery: each topic stream is trimmed to about this many.
	const opts = kind === "redis" ? { xaddMaxLen: `~${options.streamMaxLength}` } : {};
	try {
		await send.call(broker, channel, message, opts);
	} catch (err) {
		// The stream may have been deleted (an operator): look again next time.
		knownStreams.get(broker)?.delete(channel);
		throw err;
	}
}

export class TopicConsumers {
	private readonly chans = new Map<string, { spec: TopicConsumerSpec; chan: Chan }>();
	/** One change at a time per key: an add and a remove of the same consumer never interleave. */
	private readonly queues = new Map<string, Promise<void>>();
	/** Set by `clear()`: a stopping service subscribes nothing more. */
	private closed = false;

	constructor(
		private readonly service: Service,
		private readonly timings: () => ConsumerTimings,
	) {}

	private get broker(): ChannelBroker {
		return this.service.broker as ChannelBroker;
	}

	keys(): string[] {
		return [...this.chans.keys()];
	}

	has(key: string): boolean {
		return this.chans.has(key);
	}

	/**
	 * Resolves once the adapter is connected (false if the broker stops first). The middleware
	 * connects it after every service has started, so a service's `started()` must not wait for it.
	 */
	async whenConnected(): Promise<boolean> {
		while (!channelAdapter(this.broker).connected) {
			if (this.broker.stopping) return false;
			await new Promise(resolve => setTimeout(resolve, 20));
		}
		return true;
	}

	/** Subscribes the consumer (a no-op when `key` is already subscribed). Messages published from now on reach it. */
	add(spec: TopicConsumerSpec): Promise<void> {
		return this.serial(spec.key, async () => {
			if (this.closed || this.chans.has(spec.key) || !(await this.whenConnected()) || this.closed) return;
			const chan = this.channelOf(spec);
			const adapter = channelAdapter(this.broker);
			await adapter.subscribe(chan, this.service);
			this.chans.set(spec.key, { spec, chan });
			if (channelsKind(this.broker) === "memory") await this.inProcessReady(adapter, chan);
		});
	}

	/** Unsubscribes this node; `destroyGroup` also deletes the group on the server (the consumer is gone for good, on every node). */
	remove(key: string, options: { destroyGroup?: boolean; group?: string; companyId?: string; topic?: string } = {}): Promise<void> {
		return this.serial(key, async () => {
			const entry = this.chans.get(key);
			this.chans.delete(key);
			if (entry)
				await channelAdapter(this.broker)
					.unsubscribe(entry.chan)
					.catch(err => this.service.logger.warn(`Unsubscribing '${entry.chan.name}' (${entry.chan.group}) failed`, (err as Error).message));
			const group = entry?.spec.group ?? options.group;
			const companyId = entry?.spec.companyId ?? options.companyId;
			const topic = entry?.spec.topic ?? options.topic;
			if (options.destroyGroup && group && companyId && topic) await this.destroyGroup(busChannel(companyId, topic), group);
		});
	}

	/** Makes this node's consumers exactly `specs`: subscribes the missing ones, unsubscribes the others (their groups stay). */
	async reconcile(specs: TopicConsumerSpec[]): Promise<void> {
		const wanted = new Set(specs.map(s => s.key));
		await Promise.all(this.keys().filter(key => !wanted.has(key)).map(key => this.remove(key)));
		await Promise.all(specs.map(spec => this.add(spec)));
	}

	/**
	 * Applies the current timings to the subscribed consumers, where the adapters read them at
	 * each turn (`maxInFlight`; Redis Streams' claim idle time and interval). A JetStream group
	 * keeps the `ack_wait` it was created with.
	 */
	retune(): void {
		const timings = this.timings();
		for (const { chan } of this.chans.values()) {
			chan.maxInFlight = timings.maxInFlight;
			Object.assign(chan.redis as object, { minIdleTime: timings.redeliverAfterMs, claimInterval: timings.claimIntervalMs });
		}
	}

	/** Unsubscribes every consumer of this node (waiting for the messages in hand) for good; groups stay. */
	async clear(): Promise<void> {
		this.closed = true;
		await Promise.all(this.keys().map(key => this.remove(key)));
	}

	private serial(key: string, work: () => Promise<void>): Promise<void> {
		const next = (this.queues.get(key) ?? Promise.resolve()).then(work, work);
		const settled = next.catch(() => undefined);
		this.queues.set(key, settled);
		void settled.then(() => {
			if (this.queues.get(key) === settled) this.queues.delete(key);
		});
		return next;
	}

	private channelOf(spec: TopicConsumerSpec): Chan {
		const adapter = channelAdapter(this.broker);
		const timings = this.timings();
		const channel = busChannel(spec.companyId, spec.topic);
		const chan: Chan = {
			// Unique per node, service and group: the adapters key their connections and bookkeeping by it.
			id: adapter.addPrefixTopic(`${this.broker.nodeID}.${this.service.fullName}.${spec.group}.${channel}`),
			name: adapter.addPrefixTopic(channel),
			group: spec.group,
			context: false,
			unsubscribing: false,
			maxInFlight: timings.maxInFlight,
			maxRetries: HANDLER_FAILURES_BEFORE_DEAD_LETTER,
			deadLettering: { enabled: true, queueName: FAILED_CHANNEL },
			redis: { minIdleTime: timings.redeliverAfterMs, claimInterval: timings.claimIntervalMs, processingAttemptsInterval: Math.max(1000, timings.claimIntervalMs), startID: "$" },
			nats: { streamConfig: STREAM_CONFIG, consumerOptions: { config: { ack_wait: timings.redeliverAfterMs * 1e6 } } },
			handler: async () => undefined,
		};
		const handler = (message: unknown, raw: unknown) => spec.handler(message as BusMessage, raw);
		chan.handler = this.broker.middlewares.wrapHandler("localChannel", handler, chan);
		return chan;
	}

	/** The in-process adapter subscribes by creating a service that starts a moment later: wait for it, or the first messages miss it. */
	private async inProcessReady(adapter: ChannelAdapter, chan: Chan): Promise<void> {
		const name = `${adapter.opts.servicePrefix ?? "$channel"}:${this.service.fullName}:${chan.name}:${chan.group}`;
		const registry = this.broker.registry as unknown as { hasService(name: string): boolean };
		const deadline = Date.now() + 5000;
		while (!registry.hasService(name) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5));
	}

	/** Deletes a group on the server, so that the stream stops keeping messages for it. */
	private async destroyGroup(channel: string, group: string): Promise<void> {
		const adapter = channelAdapter(this.broker);
		const name = adapter.addPrefixTopic(channel);
		try {
			switch (channelsKind(this.broker)) {
				case "redis":
					await adapter.clients?.get("Pub")?.xgroup("DESTROY", name, group);
					break;
				case "nats":
					// The adapter names streams and durable consumers with '_' for '.'.
					await adapter.manager?.consumers.delete(name.split(".").join("_"), group.split(".").join("_"));
					break;
				default:
					// In-process: a group is only the subscription itself.
			}
		} catch (err) {
			this.service.logger.warn(`Could not delete consumer group '${group}' of '${name}'`, (err as Error).message);
		}
	}
}
