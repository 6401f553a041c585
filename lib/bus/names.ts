/**
 * Names on the bus. A company's topic is its own channel: the company id is part of the channel
 * name, so no consumer of one company's channel can see another company's messages, whatever
 * the topic is called. (The channels adapter adds the Moleculer namespace in front.)
 */

/** Topic names: lowercase letters, digits, '.', '_', '-'; 1-100 characters, not starting with a separator. */
export const TOPIC_PATTERN = /^[a-z0-9][a-z0-9._-]{0,99}$/;
export const TOPIC_RULE = "1-100 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit";

/** Company ids are the platform's UUIDs; anything else never becomes part of a channel name. */
const COMPANY_ID = /^[A-Za-z0-9-]{1,64}$/;

export function isTopic(topic: unknown): topic is string {
	return typeof topic === "string" && TOPIC_PATTERN.test(topic);
}

/**
 * The channel of a company's topic: `bus.<companyId>.<topic>` with the topic's dots written `~`.
 * NATS JetStream names a stream after the channel with every '.' turned into '_': without the
 * `~`, topics `a.b` and `a_b` would share one stream.
 */
export function busChannel(companyId: string, topic: string): string {
	if (!COMPANY_ID.test(companyId)) throw new Error(`Not a company id: '${companyId}'`);
	if (!isTopic(topic)) throw new Error(`Not a topic name: '${topic}'`);
	return `bus.${companyId}.${topic.replace(/\./g, "~")}`;
}

/** Where the channels library moves a message whose consumer failed (threw) too often. */
export const FAILED_CHANNEL = "bus.failed";

const WEBHOOK_GROUP_PREFIX = "msgbus-webhook-";

/** The consumer group of one webhook subscription: each subscription reads its topic on its own. */
export function webhookGroup(subscriptionId: string): string {
	return WEBHOOK_GROUP_PREFIX + subscriptionId;
}

/** The subscription id of a webhook group, or null for another group. */
export function subscriptionOfGroup(group: unknown): string | null {
	return typeof group === "string" && group.startsWith(WEBHOOK_GROUP_PREFIX) ? group.slice(WEBHOOK_GROUP_PREFIX.length) : null;
}

/** The service that keeps the bus's dead letters (services/messaging/msgbus-dead-letters.service.ts). */
export const DEAD_LETTER_SERVICE = "msgbusDeadLetters";
