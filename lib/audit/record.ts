/**
 * Audit events turned into the fields of a log record: only the fields of the event contracts
 * (types/audit.ts) are kept, whatever else an event carries, and every value is cut to what its
 * column holds, so that what is hashed is exactly what every store gives back.
 */
import type { LoginAttemptedEvent, OperationPerformedEvent } from "../../types/audit";
import type { EntityDefinition } from "../../types/entity";
import type { AuditRecord } from "./chain";
import { redactParams } from "./redact";

/** A record before it takes its place in a chain. */
export type RecordFields = Omit<AuditRecord, "id" | "chain" | "seq" | "prevHash" | "hash">;

const LIMITS = {
	requestId: 128, id: 64, username: 128, service: 64, action: 128, target: 128, type: 64, message: 1000, reason: 255, ip: 64, device: 128,
};

export const AuditLogEntity: EntityDefinition = {
	name: "audit_logs",
	// Written on every request, read without a cache: no cache-cleaning broadcast per record.
	cached: false,
	fields: {
		kind: { type: "string", required: true, max: 16 },
		chain: { type: "string", required: true, max: 64 },
		seq: { type: "integer", required: true },
		at: { type: "date", required: true },
		requestId: { type: "string", max: LIMITS.requestId },
		userId: { type: "string", max: LIMITS.id },
		username: { type: "string", max: LIMITS.username },
		companyId: { type: "string", max: LIMITS.id },
		deptId: { type: "string", max: LIMITS.id },
		service: { type: "string", max: LIMITS.service },
		action: { type: "string", max: LIMITS.action },
		target: { type: "string", max: LIMITS.target },
		params: { type: "json" },
		result: { type: "string", required: true, max: 16 },
		error: { type: "json" },
		reason: { type: "string", max: LIMITS.reason },
		durationMs: { type: "integer" },
		ip: { type: "string", max: LIMITS.ip },
		device: { type: "string", max: LIMITS.device },
		prevHash: { type: "string", required: true, max: 64 },
		hash: { type: "string", required: true, max: 64 },
	},
	indexes: [
		// One record per place in a chain: concurrent writers race for seq = head + 1 and one wins.
		{ fields: ["chain", "seq"], unique: true },
		{ fields: ["companyId", "kind", "at"] },
		{ fields: ["kind", "at"] },
		{ fields: ["chain"] },
		{ fields: ["at"] },
	],
};

export const AuditChainEntity: EntityDefinition = {
	name: "audit_chains",
	cached: false,
	fields: {
		chain: { type: "string", required: true, max: 64 },
		headSeq: { type: "integer", required: true },
		headHash: { type: "string", required: true, max: 64 },
		anchorSeq: { type: "integer", required: true },
		anchorHash: { type: "string", required: true, max: 64 },
		updatedAt: { type: "date" },
	},
	indexes: [{ fields: ["chain"], unique: true }],
};

/**
 * Text as a column keeps it: lone surrogates and NUL (which PostgreSQL refuses or rewrites, and
 * which would then no longer match the hash) become U+FFFD, and the length is cut in code points.
 */
export function columnText(value: unknown, max: number): string | null {
	if (typeof value !== "string" && typeof value !== "number") return null;
	const text = String(value).replace(/\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
	return text.length > max ? [...text].slice(0, max).join("") : text;
}

/** An ISO timestamp at millisecond precision (what every store gives back); now when `value` is not a date. */
export function isoTime(value: unknown): string {
	const time = typeof value === "string" || typeof value === "number" ? new Date(value).getTime() : Number.NaN;
	return new Date(Number.isFinite(time) ? time : Date.now()).toISOString();
}

function count(value: unknown): number | null {
	return typeof value === "number" && Number.isFinite(value) ? Math.min(Math.max(0, Math.round(value)), 2 ** 31 - 1) : null;
}

export function operationFields(event: Partial<OperationPerformedEvent>): RecordFields {
	const error = event.error && typeof event.error === "object" ? event.error : null;
	return {
		kind: "operation",
		at: isoTime(event.at),
		requestId: columnText(event.requestId, LIMITS.requestId),
		userId: columnText(event.userId, LIMITS.id),
		username: columnText(event.username, LIMITS.username),
		companyId: columnText(event.companyId, LIMITS.id),
		deptId: columnText(event.deptId, LIMITS.id),
		service: columnText(event.service, LIMITS.service) ?? "unknown",
		action: columnText(event.action, LIMITS.action),
		target: columnText(event.target, LIMITS.target),
		// Redacted again: an event emitted by hand must not bring a secret in either.
		params: redactParams(event.params ?? {}),
		result: event.result === "ok" && !error ? "ok" : "error",
		error: error
			? {
				code: count(error.code) ?? 500,
				type: columnText(error.type, LIMITS.type) ?? "ERROR",
				message: columnText(error.message, LIMITS.message) ?? "",
			}
			: event.result === "ok" ? null : { code: 500, type: "ERROR", message: "" },
		reason: null,
		durationMs: count(event.durationMs),
		ip: columnText(event.ip, LIMITS.ip),
		device: null,
	};
}

const LOGIN_RESULTS = new Set<LoginAttemptedEvent["result"]>(["ok", "failure", "locked", "disabled"]);

/** Only the fields of the login contract: a password (or anything else) an event carries is dropped. */
export function loginFields(event: Partial<LoginAttemptedEvent>): RecordFields {
	return {
		kind: "login",
		at: isoTime(event.at),
		requestId: columnText(event.requestId, LIMITS.requestId),
		userId: columnText(event.userId, LIMITS.id),
		username: columnText(event.username, LIMITS.username) ?? "",
		companyId: columnText(event.companyId, LIMITS.id),
		deptId: null,
		service: "security",
		action: "login",
		target: null,
		params: null,
		result: event.result && LOGIN_RESULTS.has(event.result) ? event.result : "failure",
		error: null,
		reason: columnText(event.reason, LIMITS.reason),
		durationMs: null,
		ip: columnText(event.ip, LIMITS.ip),
		device: columnText(event.device, LIMITS.device),
	};
}
