/**
 * Webhook signatures: `X-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`. A receiver
 * computes the same over the bytes it received (before parsing them) and compares in constant time.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export const SIGNATURE_HEADER = "X-Signature";
export const MESSAGE_ID_HEADER = "X-Message-Id";
/** Publication time of the message, in ms since the epoch (also in the signed body as `publishedAt`). */
export const TIMESTAMP_HEADER = "X-Timestamp";
export const TOPIC_HEADER = "X-Topic";
export const ATTEMPT_HEADER = "X-Delivery-Attempt";

export function sign(secret: string, body: string | Buffer): string {
	return "sha256=" + createHmac("sha256", secret).update(body).digest("hex");
}

/** True when `signature` is the signature of `body` with `secret`. */
export function verifySignature(secret: string, body: string | Buffer, signature: string | null | undefined): boolean {
	if (typeof signature !== "string") return false;
	const expected = Buffer.from(sign(secret, body));
	const given = Buffer.from(signature);
	return given.length === expected.length && timingSafeEqual(given, expected);
}
