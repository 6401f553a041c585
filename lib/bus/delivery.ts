/**
 * Delivering one bus message to one webhook: a signed JSON POST, retried with exponential
 * back-off until it is accepted (2xx) or the attempts run out.
 *
 * The retries run inside the consumer's handler, while the channels library still holds the
 * message unacknowledged. The library's own retries do not fit per-subscription back-off: Redis
 * Streams re-delivers a failed message only after the consumer's fixed `minIdleTime`, JetStream
 * re-delivers a NAKed one at once, and the in-process adapter does not retry at all. Holding the
 * message keeps at-least-once: a node killed between two attempts never acknowledged it, so the
 * stream hands it to another node once the delivery budget (`deliveryBudgetMs`) has passed.
 */
import type { BusMessage, WebhookBody } from "../../types/bus";
import { ATTEMPT_HEADER, MESSAGE_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOPIC_HEADER, sign } from "./signing";

export interface RetryPolicy {
	attempts: number;
	backoffInitialMs: number;
	backoffFactor: number;
	backoffMaxMs: number;
	timeoutMs: number;
}

export interface WebhookTarget {
	url: string;
	secret: string;
}

export interface DeliveryOutcome {
	delivered: boolean;
	attempts: number;
	/** HTTP status of the last attempt; null for a network error or a timeout. */
	lastStatus: number | null;
	lastError: string | null;
}

/** Thrown when the node stops mid-delivery: the message must stay unacknowledged for another node. */
export class DeliveryAborted extends Error {
	constructor() {
		super("Delivery interrupted: the node is stopping");
		this.name = "DeliveryAborted";
	}
}

/** The waits between attempts: initial, ×factor each time, capped. */
export function backoffDelays(policy: RetryPolicy): number[] {
	return Array.from({ length: Math.max(0, policy.attempts - 1) }, (_, i) =>
		Math.min(policy.backoffMaxMs, Math.round(policy.backoffInitialMs * policy.backoffFactor ** i)),
	);
}

/** The longest one delivery can take: every attempt timing out and every back-off waited. */
export function deliveryBudgetMs(policy: RetryPolicy): number {
	return policy.attempts * policy.timeoutMs + backoffDelays(policy).reduce((a, b) => a + b, 0);
}

/** The exact bytes sent (and signed). */
export function webhookBody(message: BusMessage): string {
	const body: WebhookBody = { id: message.id, topic: message.topic, publishedAt: message.publishedAt, payload: message.payload };
	return JSON.stringify(body);
}

/** One POST; answers the status and error of a failed attempt, nothing for an accepted one. */
export async function postWebhook(
	target: WebhookTarget,
	message: BusMessage,
	attempt: number,
	options: { timeoutMs: number; signal: AbortSignal; userAgent: string },
): Promise<{ status: number | null; error: string } | null> {
	const body = webhookBody(message);
	const timeout = AbortSignal.timeout(options.timeoutMs);
	try {
		const res = await fetch(target.url, {
			method: "POST",
			headers: {
				"Content-Type": "application/json",
				"User-Agent": options.userAgent,
				[SIGNATURE_HEADER]: sign(target.secret, body),
				[MESSAGE_ID_HEADER]: message.id,
				[TIMESTAMP_HEADER]: String(Date.parse(message.publishedAt)),
				[TOPIC_HEADER]: message.topic,
				[ATTEMPT_HEADER]: String(attempt),
			},
			body,
			// A redirect is a refusal: following it would send the signed message somewhere nobody subscribed.
			redirect: "manual",
			signal: AbortSignal.any([timeout, options.signal]),
		});
		if (res.status >= 200 && res.status < 300) {
			await res.body?.cancel().catch(() => undefined);
			return null;
		}
		const text = (await res.text().catch(() => "")).replace(/\s+/g, " ").trim().slice(0, 200);
		return { status: res.status, error: `HTTP ${res.status}${text ? `: ${text}` : ""}` };
	} catch (err) {
		if (options.signal.aborted) throw new DeliveryAborted();
		if (timeout.aborted) return { status: null, error: `No answer within ${options.timeoutMs} ms` };
		const cause = (err as { cause?: { code?: string; message?: string } }).cause;
		return { status: null, error: `Network error: ${cause?.code ?? cause?.message ?? (err as Error).message}` };
	}
}

/** Every attempt of the policy, with back-off between them; answers how it ended. */
export async function deliverWithRetries(
	target: WebhookTarget,
	message: BusMessage,
	policy: RetryPolicy,
	options: { signal: AbortSignal; userAgent: string; onFailedAttempt?(attempt: number, error: string): void },
): Promise<DeliveryOutcome> {
	const delays = backoffDelays(policy);
	let failure: { status: number | null; error: string } | null = null;
	for (let attempt = 1; attempt <= policy.attempts; attempt++) {
		failure = await postWebhook(target, message, attempt, { timeoutMs: policy.timeoutMs, signal: options.signal, userAgent: options.userAgent });
		if (!failure) return { delivered: true, attempts: attempt, lastStatus: null, lastError: null };
		options.onFailedAttempt?.(attempt, failure.error);
		if (attempt < policy.attempts) await sleep(delays[attempt - 1], options.signal);
	}
	return { delivered: false, attempts: policy.attempts, lastStatus: failure?.status ?? null, lastError: failure?.error ?? "not attempted" };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
	return new Promise((resolve, reject) => {
		if (signal.aborted) return reject(new DeliveryAborted());
		const onAbort = () => {
			clearTimeout(timer);
			reject(new DeliveryAborted());
		};
		const timer = setTimeout(() => {
			signal.removeEventListener("abort", onAbort);
			resolve();
		}, ms);
		signal.addEventListener("abort", onAbort, { once: true });
	});
}
