/**
 * Contracts of the integration bus (`msgbus`): the message that travels on a company's topic,
 * webhook subscriptions, dead letters, and the run-time settings (config namespace `msgbus`).
 */

/** One message on a company's topic, as every consumer (webhooks, other services) receives it. */
export interface BusMessage {
	/** Unique per message: receivers drop a second delivery with an id they have seen (delivery is at-least-once). */
	id: string;
	companyId: string;
	topic: string;
	/** Any JSON object. */
	payload: Record<string, unknown>;
	/** ISO time of publication. */
	publishedAt: string;
	/** Who put it on the bus: a user (REST), a service (internal publish), or a bridged domain event. */
	source: { kind: "user" | "service" | "event"; name: string | null; userId: string | null };
}

/** `msgbus.publish` (internal, visibility "public"). */
export interface PublishParams {
	companyId: string;
	topic: string;
	payload: Record<string, unknown>;
	/** The publishing service, for `source.name` (default: the caller's service). */
	source?: string;
}

/** What a publish answers. */
export interface Published {
	id: string;
	topic: string;
	publishedAt: string;
}

/** An outbound webhook of a company, as the API shows it (the secret never leaves the service). */
export interface BusSubscription {
	id: string;
	companyId: string;
	topic: string;
	url: string;
	createdAt: string;
	createdBy: string | null;
}

/** A message that could not be delivered to a subscription after every attempt. */
export interface DeadLetter {
	id: string;
	companyId: string;
	subscriptionId: string;
	topic: string;
	url: string;
	messageId: string;
	/** The webhook body that was refused: `{ id, topic, publishedAt, payload }`. */
	message: Record<string, unknown>;
	attempts: number;
	/** The HTTP status of the last attempt, null for a network error or timeout. */
	lastStatus: number | null;
	lastError: string;
	failedAt: string;
}

/** The webhook body: what receivers parse (and what the signature covers, as raw bytes). */
export interface WebhookBody {
	id: string;
	topic: string;
	publishedAt: string;
	payload: Record<string, unknown>;
}

/**
 * Run-time settings, config namespace `msgbus` (applied live; transport timings apply to
 * consumers as they are (re)subscribed, which happens on every change).
 */
export interface BusConfig extends Record<string, unknown> {
	/** Delivery attempts per message and subscription, the first included. */
	attempts: number;
	/** Wait before the second attempt; each next wait is `backoffFactor` times longer, at most `backoffMaxMs`. */
	backoffInitialMs: number;
	backoffFactor: number;
	backoffMaxMs: number;
	/** One webhook request: connect, send, answer. */
	timeoutMs: number;
	/** Messages of one subscription a node delivers at the same time. */
	maxInFlight: number;
	/**
	 * Margin beyond the longest delivery (every attempt timing out, every back-off) before a
	 * message held by a silent consumer (a killed node) is handed to another one.
	 */
	redeliverMarginMs: number;
	/** How often (Redis Streams) each consumer looks for such abandoned messages. */
	claimIntervalMs: number;
	/** Largest payload, as JSON bytes. */
	maxPayloadBytes: number;
	maxSubscriptionsPerCompany: number;
	/** Redis Streams: entries kept per topic stream (approximate trimming). */
	streamMaxLength: number;
	/** How often every node compares its consumers with the stored subscriptions. */
	reconcileIntervalMs: number;
}
