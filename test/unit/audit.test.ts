/**
 * The audit log's pure parts: redaction, which actions are audited, the canonical JSON and
 * hashes of the chain, the chain verifier, and the normalisation of events into records.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { REDACTED, redactParams } from "../../lib/audit/redact";
import { errorSummary, isAudited, isMutatingRest, targetOf } from "../../lib/audit/operation";
import { ChainVerifier, GENESIS_HASH, canonicalJson, genesisHead, recordHash, type AuditRecord, type ChainHead } from "../../lib/audit/chain";
import { columnText, loginFields, operationFields } from "../../lib/audit/record";
import { parseIsoDate, timeRange } from "../../lib/audit/query";

describe("redactParams", () => {
	it("replaces secrets at any depth, in arrays too, and keeps everything else verbatim", () => {
		const params = {
			name: "widget",
			password: "p1",
			profile: { newPassword: "p2", oldPassword: "p3", nick: "bob" },
			tokens: [{ refreshToken: "t1", accessToken: "t2", kind: "pair" }],
			license: { licenseKey: "k1", apiKey: "k2", "x-api-key": "k3", client_secret: "s1", seats: 5 },
			headers: { Authorization: "Basic abc", Cookie: "sid=1", credentials: { user: "u", pass: "v" } },
			note: "'; DROP TABLE audit_logs; --",
			html: "<script>alert(1)</script>",
			"$where": "1 == 1",
			"a.b": { "$gt": "" },
			bearerInText: "Bearer abc.def.ghi",
			count: 3,
			flag: false,
			nothing: null,
		};
		assert.deepEqual(redactParams(params), {
			name: "widget",
			password: REDACTED,
			profile: { newPassword: REDACTED, oldPassword: REDACTED, nick: "bob" },
			tokens: REDACTED,
			license: { licenseKey: REDACTED, apiKey: REDACTED, "x-api-key": REDACTED, client_secret: REDACTED, seats: 5 },
			headers: { Authorization: REDACTED, Cookie: REDACTED, credentials: REDACTED },
			note: "'; DROP TABLE audit_logs; --",
			html: "<script>alert(1)</script>",
			"$where": "1 == 1",
			"a.b": { "$gt": "" },
			bearerInText: REDACTED,
			count: 3,
			flag: false,
			nothing: null,
		});
	});

	it("redacts inside arrays of objects under harmless keys", () => {
		assert.deepEqual(redactParams({ items: [{ id: 1, secret: "x" }, [{ password: "y" }]] }), { items: [{ id: 1, secret: REDACTED }, [{ password: REDACTED }]] });
	});

	it("leaves a JWT nowhere, whatever its key", () => {
		const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl";
		assert.deepEqual(redactParams({ value: jwt, list: [jwt] }), { value: REDACTED, list: [REDACTED] });
	});

	it("cuts long strings and keeps the whole within the size cap, small values first", () => {
		const out = redactParams({ id: "x1", long: "a".repeat(5000) });
		assert.equal(out.id, "x1");
		assert.ok((out.long as string).startsWith("a".repeat(1000) + "…[4000 more characters]"));
		const big = redactParams({ id: "x2", a: "b".repeat(900), list: Array.from({ length: 100 }, (_, i) => `item-${i}-${"c".repeat(80)}`) });
		assert.ok(JSON.stringify(big).length <= 8 * 1024, `${JSON.stringify(big).length}`);
		assert.equal(big.id, "x2");
		assert.equal(big.a, "b".repeat(900));
		assert.match(big.list as string, /^\[omitted: \d+ characters\]$/);
		const wide = redactParams(Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, i])));
		assert.ok(JSON.stringify(wide).length <= 8 * 1024);
	});

	it("turns anything into plain JSON: cycles, depth, binary, dates, functions, prototypes", () => {
		const cyclic: Record<string, unknown> = { id: 1 };
		cyclic.self = cyclic;
		let deep: Record<string, unknown> = { end: true };
		for (let i = 0; i < 20; i++) deep = { deep };
		const parsed = JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}');
		const out = redactParams({ cyclic, deep, buf: Buffer.from("abc"), when: new Date("2024-01-02T03:04:05Z"), fn: () => 1, big: 10n, nan: NaN, parsed });
		assert.deepEqual(out.cyclic, { id: 1, self: "[circular]" });
		assert.match(JSON.stringify(out.deep), /\[too deep\]/);
		assert.equal(out.buf, "[binary 3 bytes]");
		assert.equal(out.when, "2024-01-02T03:04:05.000Z");
		assert.equal("fn" in out, false);
		assert.equal(out.big, "10");
		assert.equal(out.nan, null);
		const kept = out.parsed as Record<string, unknown>;
		assert.deepEqual(Object.keys(kept), ["__proto__", "ok"]);
		assert.equal(({} as Record<string, unknown>).polluted, undefined);
		assert.deepEqual(JSON.parse(JSON.stringify(out)), out, "the result survives JSON unchanged");
	});

	it("answers an object for params that are not one", () => {
		assert.deepEqual(redactParams(undefined), {});
		assert.deepEqual(redactParams("text"), { value: "text" });
	});
});

describe("which actions are audited", () => {
	it("reads the method of every form of rest", () => {
		assert.equal(isMutatingRest("POST /items"), true);
		assert.equal(isMutatingRest("put /items/:id"), true);
		assert.equal(isMutatingRest("DELETE /items/:id"), true);
		assert.equal(isMutatingRest("GET /items"), false);
		assert.equal(isMutatingRest("HEAD /items"), false);
		assert.equal(isMutatingRest("/items"), true, "no method: any method");
		assert.equal(isMutatingRest({ method: "PATCH", path: "/x" }), true);
		assert.equal(isMutatingRest({ method: "get", path: "/x" }), false);
		assert.equal(isMutatingRest({ path: "/x" }), true);
		assert.equal(isMutatingRest(["GET /x", "POST /x"]), true);
		assert.equal(isMutatingRest(["GET /x", { method: "GET", path: "/y" }]), false);
		assert.equal(isMutatingRest(undefined), false);
		assert.equal(isMutatingRest(true), true);
	});

	it("leaves out unpublished actions and those that say audit: false", () => {
		assert.equal(isAudited({ rest: "POST /x" }), true);
		assert.equal(isAudited({ rest: "POST /x", audit: false }), false);
		assert.equal(isAudited({ rest: "POST /x", visibility: "public" }), false);
		assert.equal(isAudited({}), false);
	});

	it("describes errors without server internals, and finds the target", () => {
		assert.deepEqual(errorSummary({ code: 409, type: "CONFLICT", message: "Already there" }), { code: 409, type: "CONFLICT", message: "Already there" });
		assert.deepEqual(errorSummary(new Error("password=hunter2 in SQL")), { code: 500, type: "Error", message: "Internal server error" });
		assert.equal(targetOf({ id: "a" }, { id: "b" }), "a");
		assert.equal(targetOf({}, { id: 7 }), "7");
		assert.equal(targetOf({}, null), null);
	});
});

function chainOfRecords(chain: string, count: number, from = 1, prevHash = GENESIS_HASH): AuditRecord[] {
	const out: AuditRecord[] = [];
	for (let seq = from; seq < from + count; seq++) {
		const unsealed = { ...operationFields({ at: new Date(Date.UTC(2024, 0, seq)).toISOString(), service: "s", action: "a", result: "ok", params: { n: seq } }), chain, seq, prevHash };
		const record = { ...unsealed, hash: recordHash(unsealed) };
		out.push(record);
		prevHash = record.hash;
	}
	return out;
}

function headOf(records: AuditRecord[], chain = "c1"): ChainHead {
	const last = records[records.length - 1];
	return { ...genesisHead(chain), headSeq: last.seq, headHash: last.hash };
}

function verify(records: AuditRecord[], head: ChainHead | null) {
	const verifier = new ChainVerifier("c1", head);
	for (const r of records) if (!verifier.feed(r)) break;
	return verifier.finish(records.length);
}

describe("the hash chain", () => {
	it("hashes a canonical JSON: key order does not matter, every value does", () => {
		assert.equal(canonicalJson({ b: 1, a: { d: [1, { f: 2, e: 3 }], c: null } }), '{"a":{"c":null,"d":[1,{"e":3,"f":2}]},"b":1}');
		const [record] = chainOfRecords("c1", 1);
		const reordered = Object.fromEntries(Object.entries(record).reverse()) as unknown as AuditRecord;
		assert.equal(recordHash(reordered), record.hash);
		for (const [field, value] of [["seq", 2], ["chain", "c2"], ["at", "2024-01-01T00:00:00.001Z"], ["params", { n: 2 }], ["result", "error"], ["prevHash", "f".repeat(64)], ["userId", "u"]] as const)
			assert.notEqual(recordHash({ ...record, [field]: value }), record.hash, field);
	});

	it("verifies an intact chain, and one that starts at a retention anchor", () => {
		const records = chainOfRecords("c1", 5);
		assert.deepEqual(verify(records, headOf(records)), { chain: "c1", records: 5, intact: true, headSeq: 5, anchorSeq: 1 });
		const kept = records.slice(2);
		const anchored = { ...headOf(records), anchorSeq: 3, anchorHash: records[1].hash };
		assert.equal(verify(kept, anchored).intact, true);
		assert.match(verify(kept, { ...anchored, anchorHash: GENESIS_HASH }).problem!, /retention anchor/);
	});

	it("finds a changed field, a missing record, a missing newest record and a missing head", () => {
		const records = chainOfRecords("c1", 5);
		const head = headOf(records);
		const changed = records.map(r => (r.seq === 3 ? { ...r, params: { n: 99 } } : r));
		assert.deepEqual([verify(changed, head).firstBrokenSeq, verify(changed, head).problem], [3, "record 3 was changed: its content does not match its hash"]);
		const rehashed = records.map(r => (r.seq === 3 ? { ...r, params: { n: 99 }, hash: recordHash({ ...r, params: { n: 99 } }) } : r));
		assert.equal(verify(rehashed, head).firstBrokenSeq, 4, "a recomputed hash breaks the next link");
		assert.deepEqual(verify(records.filter(r => r.seq !== 2), head).firstBrokenSeq, 2);
		const withoutNewest = verify(records.slice(0, 4), head);
		assert.deepEqual([withoutNewest.intact, withoutNewest.firstBrokenSeq], [false, 5]);
		assert.match(verify(records, null).problem!, /head is missing/);
		const lastRehashed = records.map(r => (r.seq === 5 ? { ...r, result: "error", hash: recordHash({ ...r, result: "error" }) } : r));
		assert.match(verify(lastRehashed, head).problem!, /record 5 is not the record the chain head holds/);
		assert.equal(verify(records, { ...head, headSeq: 4, headHash: records[3].hash }).intact, true, "records past a lagging head are fine");
	});
});

describe("records from events", () => {
	it("keeps only the fields of the login contract", () => {
		const fields = loginFields({ at: "2024-05-01T00:00:00Z", username: "bob", result: "failure", password: "hunter2", token: "t" } as never);
		assert.equal(JSON.stringify(fields).includes("hunter2"), false);
		assert.equal(fields.at, "2024-05-01T00:00:00.000Z");
		assert.equal(fields.kind, "login");
		assert.equal(loginFields({ result: "bogus" as never }).result, "failure");
	});

	it("keeps text a column can hold and every store gives back the same", () => {
		assert.equal(columnText("a\u0000b\ud800c", 10), "a\uFFFDb\uFFFDc");
		assert.equal(columnText("😀😀😀", 2), "😀😀");
		assert.equal(columnText({}, 10), null);
		assert.equal(operationFields({ params: { password: "x" } }).params!.password, REDACTED, "events emitted by hand are redacted too");
	});
});

describe("log query filters", () => {
	it("parses ISO dates and refuses days that do not exist", () => {
		assert.equal(parseIsoDate("from", "2024-05-01T12:00:00Z").date.toISOString(), "2024-05-01T12:00:00.000Z");
		for (const bad of ["2024-02-30", "2024-13-01", "yesterday", "2024-05-01T25:00:00Z", "1714564800000"])
			assert.throws(() => parseIsoDate("from", bad), (err: { code: number }) => err.code === 422, bad);
		assert.deepEqual(timeRange(undefined, "2024-05-01"), { at: { $lt: new Date("2024-05-02T00:00:00Z") } });
		assert.throws(() => timeRange("2024-05-02", "2024-05-01T00:00:00Z"), /must not be after/);
	});
});
