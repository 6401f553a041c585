/**
 * The audit log's hash chain. Records of one chain (a company, or "platform" for records of no
 * company) are numbered 1, 2, 3 … without gaps, and each carries
 *   hash = sha256(prevHash + canonicalJson(the record's fields but id and hash))
 * with prevHash the hash of the record before. A changed field breaks the record's own hash, a
 * removed record leaves a gap or a broken link, and the chain head (kept apart) catches the
 * newest records being removed. Retention removes the oldest records and moves the chain's
 * anchor (the first kept seq and the hash before it), so a purged chain still verifies.
 *
 * Plain sha256 proves that records were not changed by someone who did not also recompute the
 * hashes; it is no signature.
 */
import { createHash } from "node:crypto";

export const GENESIS_HASH = "0".repeat(64);
/** The chain of records that belong to no company (the platform administrator, unknown usernames). */
export const PLATFORM_CHAIN = "platform";

export type RecordKind = "operation" | "login";

export interface AuditRecord {
	id?: string;
	kind: RecordKind;
	chain: string;
	seq: number;
	at: string;
	requestId: string | null;
	userId: string | null;
	username: string | null;
	companyId: string | null;
	deptId: string | null;
	service: string | null;
	action: string | null;
	target: string | null;
	params: Record<string, unknown> | null;
	result: string;
	error: { code: number; type: string; message: string } | null;
	reason: string | null;
	durationMs: number | null;
	ip: string | null;
	device: string | null;
	prevHash: string;
	hash: string;
}

/** The fields a record's hash covers, in a fixed list: a field added later must not change old hashes. */
export const HASHED_FIELDS = [
	"kind", "chain", "seq", "at", "requestId", "userId", "username", "companyId", "deptId", "service", "action",
	"target", "params", "result", "error", "reason", "durationMs", "ip", "device", "prevHash",
] as const;

/** Where a chain stands: its newest record (head) and, after retention, its first kept one (anchor). */
export interface ChainHead {
	chain: string;
	headSeq: number;
	headHash: string;
	/** The first seq the chain still holds; the records before it were purged. */
	anchorSeq: number;
	/** The hash of the record before `anchorSeq` (GENESIS_HASH while nothing was purged). */
	anchorHash: string;
}

export function genesisHead(chain: string): ChainHead {
	return { chain, headSeq: 0, headHash: GENESIS_HASH, anchorSeq: 1, anchorHash: GENESIS_HASH };
}

export function chainOf(companyId: string | null | undefined): string {
	return companyId || PLATFORM_CHAIN;
}

/** JSON with object keys sorted at every depth: the same value always gives the same text. */
export function canonicalJson(value: unknown): string {
	if (value === null || value === undefined) return "null";
	if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
	if (value instanceof Date) return JSON.stringify(value.toISOString());
	if (typeof value === "object") {
		const entries = Object.entries(value as Record<string, unknown>)
			.filter(([, v]) => v !== undefined)
			.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
		return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
	}
	return JSON.stringify(value) ?? "null";
}

export function recordHash(record: Omit<AuditRecord, "hash" | "id"> | AuditRecord): string {
	const fields: Record<string, unknown> = {};
	for (const name of HASHED_FIELDS) fields[name] = (record as unknown as Record<string, unknown>)[name] ?? null;
	return createHash("sha256").update(record.prevHash).update(canonicalJson(fields)).digest("hex");
}

export interface ChainReport {
	chain: string;
	records: number;
	intact: boolean;
	firstBrokenSeq?: number;
	problem?: string;
	headSeq: number;
	anchorSeq: number;
}

/**
 * Checks a chain's records fed in seq order, from the anchor on. Stops at the first break:
 * everything after it is suspect anyway.
 */
export class ChainVerifier {
	private expected: number;
	private prev: string;
	private broken: { seq: number; problem: string } | null = null;

	constructor(readonly chain: string, private readonly head: ChainHead | null) {
		this.expected = head?.anchorSeq ?? 1;
		this.prev = head?.anchorHash ?? GENESIS_HASH;
	}

	get intact(): boolean {
		return this.broken === null;
	}

	/** Answers false once the chain is broken (no need to feed more). */
	feed(record: AuditRecord): boolean {
		if (this.broken) return false;
		const { seq } = record;
		if (!this.head) return this.fail(seq, "the chain head is missing");
		if (seq < this.expected) return this.fail(seq, `record ${seq} appears more than once`);
		if (seq > this.expected) return this.fail(this.expected, `record ${this.expected} is missing`);
		if (record.prevHash !== this.prev)
			return this.fail(seq, seq === this.head.anchorSeq ? `record ${seq} does not link to the retention anchor` : `record ${seq} does not link to record ${seq - 1}`);
		if (recordHash(record) !== record.hash) return this.fail(seq, `record ${seq} was changed: its content does not match its hash`);
		if (seq === this.head.headSeq && record.hash !== this.head.headHash) return this.fail(seq, `record ${seq} is not the record the chain head holds`);
		this.prev = record.hash;
		this.expected = seq + 1;
		return true;
	}

	/** The verdict, once every record was fed; `records` is the number the chain holds. */
	finish(records: number): ChainReport {
		const head = this.head;
		// Records past the head are fine (a writer advances the head just after its insert); fewer are not.
		if (!this.broken && head && this.expected - 1 < head.headSeq)
			this.fail(this.expected, `record ${this.expected} is missing (the chain head is at ${head.headSeq})`);
		const report: ChainReport = {
			chain: this.chain,
			records,
			intact: !this.broken,
			headSeq: Math.max(head?.headSeq ?? 0, this.expected - 1),
			anchorSeq: head?.anchorSeq ?? 1,
		};
		if (this.broken) Object.assign(report, { firstBrokenSeq: this.broken.seq, problem: this.broken.problem });
		return report;
	}

	private fail(seq: number, problem: string): false {
		this.broken = { seq, problem };
		return false;
	}
}
