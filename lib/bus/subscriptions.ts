/** Webhook subscriptions: the stored entity, and the schemas and checks of the bus's routes. */
import type { EntityDefinition } from "../../types/entity";
import { TOPIC_PATTERN, TOPIC_RULE } from "./names";

/** An outbound webhook: `topic` of `companyId` POSTed to `url`, signed with `secret` (which never leaves the service). */
export const SubscriptionEntity: EntityDefinition = {
	name: "bus_subscriptions",
	cached: false,
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		topic: { type: "string", required: true, max: 100 },
		url: { type: "string", required: true, max: 2048 },
		secret: { type: "string", required: true, max: 200 },
		createdAt: { type: "date", required: true },
		createdBy: { type: "string", max: 64 },
	},
	hidden: ["secret"],
	indexes: [{ fields: ["companyId", "topic"] }],
	searchFields: ["topic", "url"],
};

/** A subscription as the service reads it for delivering (with its secret). */
export interface Subscription {
	id: string;
	companyId: string;
	topic: string;
	url: string;
	secret: string;
}

export const SECRET_MIN_LENGTH = 16;

export const topicParam = { type: "string", pattern: TOPIC_PATTERN, messages: { stringPattern: `'topic' must be ${TOPIC_RULE}` } };
export const urlParam = { type: "string", min: 1, max: 2048 };
export const secretParam = {
	type: "string",
	min: SECRET_MIN_LENGTH,
	max: 200,
	messages: { stringMin: `'secret' must be at least ${SECRET_MIN_LENGTH} characters: it signs every delivery` },
};

/** Why `raw` cannot be a webhook URL, or null. */
export function webhookUrlProblem(raw: string): string | null {
	let url: URL;
	try {
		url = new URL(raw);
	} catch {
		return "'url' must be an absolute http(s) URL";
	}
	if (url.protocol !== "http:" && url.protocol !== "https:") return "'url' must use http or https";
	// A password in the URL would show in every list of subscriptions; the signature authenticates the platform.
	if (url.username || url.password) return "'url' must not carry credentials";
	return null;
}

/**
 * True for what a JSON array body becomes: moleculer-web spreads a body into the action's params,
 * an array into its indexes ("0", "1", …). (An object with exactly those keys reads the same.)
 */
export function isSpreadArray(params: Record<string, unknown>): boolean {
	const keys = Object.keys(params);
	return keys.length > 0 && keys.every((key, i) => key === String(i));
}
