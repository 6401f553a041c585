/**
 * Robots that post what arrives on their company's bus topics: the bus part of the `machine`
 * service (services/messaging/machine.service.ts).
 *
 * Each (robot, topic) is a consumer of the company's topic (TopicConsumers, lib/bus/consumers.ts)
 * in a consumer group shared by every machine node, so a message is posted once however many
 * nodes run. A change of a robot's topics is applied on the node that made it, then on every
 * other node (`machine.sync`); a topic or robot that is gone loses its consumer group once every
 * node has dropped it. Every node also compares its consumers with the store at start and every
 * minute.
 */
import { setTimeout as delay } from "node:timers/promises";
import type { Context, Service } from "moleculer";
import { TopicConsumers, type ConsumerTimings, type TopicConsumerSpec } from "../bus/consumers";
import { TOPIC_RULE, isTopic } from "../bus/names";
import { clientError } from "../errors";
import { syncOtherNodes } from "../replicas";
import { MAX_MARKDOWN_CHARS } from "./content";
import type { BusMessage } from "../../types/bus";

/** Topics one robot may follow. */
export const MAX_ROBOT_TOPICS = 20;
/** Beyond one rate window (the longest a message is held), before a message held by a silent (killed) node is handed to another. */
const REDELIVER_MARGIN_MS = 30_000;
const RECONCILE_INTERVAL_MS = 60_000;

/** What this module needs of a robot. */
export interface TopicRobot {
	id: string;
	companyId: string;
	groupId: string;
	topics: string[];
}

type Doc = Record<string, unknown>;

/** What the machine service provides. */
export interface RobotTopicsHost {
	/** The stored robot, null when there is none. */
	robot(id: string): Promise<Doc | null>;
	/** Every stored robot. */
	robots(): Promise<Doc[]>;
	/** Takes one message of the robot's budget: 0 when taken, else the milliseconds until it has room again. */
	take(robotId: string): Promise<number>;
	/** The length of the budget's window. */
	windowMs(): number;
}

/** A request's `topics`: checked in full by `checkedTopics`, for a 422 that names the bad ones. */
export const topicsParam = { type: "array", items: "string", max: MAX_ROBOT_TOPICS };

/**
 * The consumer group of a robot's topic, the same on every machine node. A topic's '.' is written
 * '~' (as in channel names): the NATS adapter turns '.' into '_' for a durable name, which could
 * make two topics' names meet.
 */
export function robotTopicGroup(robotId: string, topic: string): string {
	return `machine-robot-${robotId}-${topic.replace(/\./g, "~")}`;
}

/** A stored robot's topics (none for a robot stored before robots followed topics). */
export function topicsOf(robot: Doc): string[] {
	return Array.isArray(robot.topics) ? robot.topics.filter(isTopic) : [];
}

export function topicRobotOf(robot: Doc): TopicRobot {
	return { id: robot.id as string, companyId: robot.companyId as string, groupId: robot.groupId as string, topics: topicsOf(robot) };
}

/** The topics asked for, without repeats; 422 naming those that are not topic names. */
export function checkedTopics(asked: unknown[]): string[] {
	const invalid = asked.filter(t => !isTopic(t));
	if (invalid.length) throw clientError(`Topics are ${TOPIC_RULE}`, 422, "VALIDATION_ERROR", { field: "topics", invalid });
	return [...new Set(asked as string[])];
}

/**
 * What a robot posts for a bus message: the topic as a heading and the payload as a fenced JSON
 * block (its fence longer than any run of backticks inside), cut to stay within `max` characters
 * with a note saying so.
 */
export function topicMarkdown(topic: string, payload: unknown, max = MAX_MARKDOWN_CHARS): string {
	const json = JSON.stringify(payload ?? null, null, 2);
	const longestRun = Math.max(0, ...(json.match(/`+/g) ?? []).map(run => run.length));
	const fence = "`".repeat(Math.max(3, longestRun + 1));
	const head = `### ${topic}\n\n${fence}json\n`;
	const tail = `\n${fence}`;
	if (head.length + json.length + tail.length <= max) return head + json + tail;
	const note = (shown: number) => `\n\n_Truncated: the first ${shown} of ${json.length} characters of the payload._`;
	let cut = json.slice(0, Math.max(0, max - head.length - tail.length - note(json.length).length));
	// Never half a surrogate pair.
	if (/[\uD800-\uDBFF]$/.test(cut)) cut = cut.slice(0, -1);
	return head + cut + tail + note(cut.length);
}

const keyOf = (robotId: string, topic: string) => `${robotId} ${topic}`;
const robotOfKey = (key: string) => key.split(" ")[0];

export class RobotTopics {
	readonly consumers: TopicConsumers;
	/** Per consumer: stops waiting for the budget when its robot or topic is dropped. */
	private readonly aborts = new Map<string, AbortController>();
	private ready: Promise<void> = Promise.resolve();
	private timer: NodeJS.Timeout | null = null;
	private running = false;

	constructor(
		private readonly service: Service,
		private readonly host: RobotTopicsHost,
	) {
		this.consumers = new TopicConsumers(service, () => this.timings());
	}

	/**
	 * One message at a time per consumer and node (robots post at a human pace, and a held message
	 * then waits at most one window); a message is handed to another node only after it could have
	 * been held a whole window.
	 */
	timings(): ConsumerTimings {
		return { maxInFlight: 1, redeliverAfterMs: this.host.windowMs() + REDELIVER_MARGIN_MS, claimIntervalMs: 1000 };
	}

	/** From the service's `started()`: subscribes once the Channels adapter is connected (after every service started), without waiting for it. */
	start(): void {
		this.running = true;
		this.ready = this.consumers
			.whenConnected()
			.then(connected => (connected ? this.reconcile() : undefined))
			.catch(err => this.service.logger.error("Subscribing the robots' topics failed; the next reconcile tries again", err));
		this.schedule();
	}

	/** From `stopped()`: messages in hand are posted first (a held one waits for its budget, at most one window). */
	async stop(): Promise<void> {
		this.running = false;
		if (this.timer) clearTimeout(this.timer);
		this.timer = null;
		await this.consumers.clear();
	}

	/** The consumers of this node (operations, tests). */
	keys(): string[] {
		return this.consumers.keys().sort();
	}

	/** New timings (the rate window changed) for the consumers already subscribed. */
	retune(): void {
		this.consumers.retune();
	}

	/** This node's consumers of one robot become what the store says. */
	async sync(robotId: string): Promise<void> {
		await this.ready;
		const robot = await this.robot(robotId);
		const wanted = new Set(robot ? robot.topics.map(t => keyOf(robot.id, t)) : []);
		const unwanted = this.consumers.keys().filter(key => robotOfKey(key) === robotId && !wanted.has(key));
		await Promise.all(unwanted.map(key => this.drop(key)));
		if (robot) await Promise.all(robot.topics.map(topic => this.consumers.add(this.spec(robot, topic))));
	}

	/**
	 * After a robot's topics changed in the store (`before`: the robot as it was, null for a new
	 * one): this node subscribes first (what is published once the change is answered is posted),
	 * then every other node; the groups of the topics it left go once every node dropped them.
	 */
	async changed(ctx: Context, robotId: string, before: TopicRobot | null): Promise<void> {
		await this.sync(robotId);
		const everywhere = await syncOtherNodes(this.service, ctx, robotId, "robot");
		const after = await this.robot(robotId);
		const left = (before?.topics ?? []).filter(topic => !after?.topics.includes(topic));
		if (before && left.length) await this.destroyGroups(before, left, everywhere);
	}

	/** After a robot was deleted: every node drops its consumers, then their groups go. */
	async removed(ctx: Context, robot: TopicRobot): Promise<void> {
		if (!robot.topics.length) return;
		await this.sync(robot.id);
		await this.destroyGroups(robot, robot.topics, await syncOtherNodes(this.service, ctx, robot.id, "robot"));
	}

	/** A reader of a deleted Redis group spins on errors: groups go only when every node confirmed it dropped them (else they stay). */
	private async destroyGroups(robot: TopicRobot, topics: string[], everywhere: boolean): Promise<void> {
		if (!everywhere) return;
		await Promise.all(
			topics.map(topic =>
				this.consumers.remove(keyOf(robot.id, topic), { destroyGroup: true, group: robotTopicGroup(robot.id, topic), companyId: robot.companyId, topic }),
			),
		);
	}

	/** This node's consumers become the stored robots' topics (at start, then every minute). */
	private async reconcile(): Promise<void> {
		const robots = (await this.host.robots()).map(topicRobotOf);
		const specs = robots.flatMap(robot => robot.topics.map(topic => this.spec(robot, topic)));
		const wanted = new Set(specs.map(s => s.key));
		await Promise.all(this.consumers.keys().filter(key => !wanted.has(key)).map(key => this.drop(key)));
		await Promise.all(specs.map(spec => this.consumers.add(spec)));
	}

	private schedule(): void {
		this.timer = setTimeout(() => {
			this.reconcile()
				.catch(err => this.running && this.service.logger.warn("Reconciling the robots' topics failed; trying again later", (err as Error).message))
				.finally(() => this.timer && this.schedule());
		}, RECONCILE_INTERVAL_MS);
	}

	/** Stops waiting for the budget, then unsubscribes (the group stays). */
	private async drop(key: string): Promise<void> {
		this.aborts.get(key)?.abort();
		await this.consumers.remove(key);
		this.aborts.delete(key);
	}

	private spec(robot: TopicRobot, topic: string): TopicConsumerSpec {
		const key = keyOf(robot.id, topic);
		const current = this.aborts.get(key);
		if (!current || current.signal.aborted) this.aborts.set(key, new AbortController());
		return { key, companyId: robot.companyId, topic, group: robotTopicGroup(robot.id, topic), handler: message => this.handle(robot, topic, message) };
	}

	private async handle(subscribed: TopicRobot, topic: string, message: BusMessage): Promise<void> {
		// The channel is the company's own; this guards against a bug ever crossing companies.
		if (message?.companyId !== subscribed.companyId || message.topic !== topic)
			return this.service.logger.error(`Message ${message?.id} of another company or topic reached robot ${subscribed.id}; dropped`);
		// Read again: a node that has not synced yet may still consume a topic the robot left.
		const robot = await this.robot(subscribed.id);
		if (!robot?.topics.includes(topic)) return;
		if (!(await this.budget(robot.id, topic))) return;
		// The bus message's id as the group message's: a message delivered twice is posted once.
		await this.service.broker.call("groupmsg.post", {
			companyId: robot.companyId, groupId: robot.groupId, senderId: `robot:${robot.id}`, type: "markdown", content: topicMarkdown(topic, message.payload), clientMsgId: message.id,
		});
	}

	private async robot(id: string): Promise<TopicRobot | null> {
		const robot = await this.host.robot(id);
		return robot ? topicRobotOf(robot) : null;
	}

	/**
	 * Takes one message of the robot's budget; false when the robot or topic was dropped meanwhile.
	 *
	 * Over the limit the message must stay unacknowledged: a handler that returns acknowledges it
	 * (it would be lost), one that throws leaves it on the bus to be delivered again later. But
	 * throwing at once is not enough: JetStream redelivers a refused message at once (nak) and the
	 * fifth refusal sends it to the dead letters within milliseconds; the in-process adapter never
	 * delivers it again; Redis Streams only after `redeliverAfterMs`, each time counting towards the
	 * dead letters too. So the handler holds the message, unacknowledged, until the budget has room
	 * (at most one window, `timings()` keeps other nodes from taking it meanwhile); still no room
	 * after that (other nodes took it), it throws and the bus delivers the message again later.
	 */
	private async budget(robotId: string, topic: string): Promise<boolean> {
		const signal = this.aborts.get(keyOf(robotId, topic))?.signal ?? AbortSignal.abort();
		const inProcess = (this.service.broker.options.platform?.channels.kind ?? "memory") === "memory";
		const deadline = inProcess ? Infinity : Date.now() + this.host.windowMs();
		for (;;) {
			if (signal.aborted) return false;
			const wait = await this.host.take(robotId);
			if (wait <= 0) return true;
			if (Date.now() + wait > deadline) throw new Error(`Robot ${robotId} is over its rate: '${topic}' message left on the bus, to be delivered again`);
			await delay(wait, undefined, { signal }).catch(() => undefined);
		}
	}
}
