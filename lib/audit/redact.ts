/**
 * What of a request's params the audit log keeps: plain JSON, secrets replaced, size bounded.
 *
 * Keys are matched by substring, case-insensitively ("newPassword", "refreshToken", "x-api-key",
 * "licenseKey", "client_secret"): a harmless key caught by mistake costs an auditor one value,
 * a secret missed would sit in the log for the whole retention period.
 */
export const REDACTED = "[redacted]";

const SECRET_KEY = /pass(word|wd|phrase)|pwd|secret|token|key|authori[sz]ation|credential|cookie|signature/i;
/** Values that are secrets whatever their key: bearer headers and JWTs. */
const SECRET_VALUE = /^(Bearer|Basic)\s+\S+|^eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*$/i;

export interface RedactLimits {
	/** Longest string kept, in characters; longer ones are cut and marked. */
	maxString: number;
	/** Largest JSON text of the whole result, in characters. */
	maxJson: number;
	/** Deepest nesting kept. */
	maxDepth: number;
}

export const DEFAULT_LIMITS: RedactLimits = { maxString: 1000, maxJson: 8 * 1024, maxDepth: 10 };

export function isSecretKey(key: string): boolean {
	return SECRET_KEY.test(key);
}

/** `params` as plain JSON with secrets replaced by "[redacted]", at any depth, within `limits`. */
export function redactParams(params: unknown, limits: RedactLimits = DEFAULT_LIMITS): Record<string, unknown> {
	const value = clean(params, limits, 0, new WeakSet());
	const record: Record<string, unknown> = isPlainRecord(value) ? value : value === undefined ? {} : { value };
	return capSize(record, limits.maxJson);
}

function clean(value: unknown, limits: RedactLimits, depth: number, seen: WeakSet<object>): unknown {
	if (value === null || typeof value === "boolean") return value;
	if (typeof value === "number") return Number.isFinite(value) ? value : null;
	if (typeof value === "bigint") return value.toString();
	if (typeof value === "string") return SECRET_VALUE.test(value) ? REDACTED : truncate(value, limits.maxString);
	if (typeof value !== "object") return undefined; // functions, symbols, undefined: not JSON
	if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
	if (Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return `[binary ${(value as ArrayBufferView).byteLength} bytes]`;
	if (typeof (value as { pipe?: unknown }).pipe === "function") return "[stream]";
	if (seen.has(value)) return "[circular]";
	if (depth >= limits.maxDepth) return "[too deep]";
	seen.add(value);
	try {
		if (Array.isArray(value)) return value.map(item => clean(item, limits, depth + 1, seen) ?? null);
		// fromEntries defines own properties: a "__proto__" key stays a key, never a prototype.
		return Object.fromEntries(
			Object.entries(value)
				.map(([key, item]) => [key, isSecretKey(key) && item != null ? REDACTED : clean(item, limits, depth + 1, seen)] as const)
				.filter(([, item]) => item !== undefined),
		);
	} finally {
		seen.delete(value);
	}
}

export function truncate(text: string, max: number): string {
	if (text.length <= max) return text;
	return `${text.slice(0, max)}…[${text.length - max} more characters]`;
}

/**
 * Keeps the JSON of the record within `maxJson` characters: the largest top-level values give
 * way first, each replaced by a note of its size, so the small ones (ids, names) stay readable.
 */
function capSize(record: Record<string, unknown>, maxJson: number): Record<string, unknown> {
	let size = JSON.stringify(record).length;
	if (size <= maxJson) return record;
	const out = { ...record };
	const bySize = Object.entries(record)
		.map(([key, value]) => [key, JSON.stringify(value)?.length ?? 0] as const)
		.sort((a, b) => b[1] - a[1]);
	for (const [key, length] of bySize) {
		const note = `[omitted: ${length} characters]`;
		Object.defineProperty(out, key, { value: note, enumerable: true, writable: true, configurable: true });
		size += note.length + 2 - length;
		if (size <= maxJson) return out;
	}
	// Too many keys even with every value omitted.
	return { "[omitted]": `${Object.keys(record).length} params, ${JSON.stringify(record).length} characters of JSON` };
}

function isPlainRecord(value: unknown): value is Record<string, unknown> {
	return value !== null && typeof value === "object" && !Array.isArray(value);
}
