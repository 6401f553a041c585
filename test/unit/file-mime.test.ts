/**
 * MIME sniffing (lib/files/mime): the type comes from the bytes, never from the client's name,
 * and the name can only refine text into a passive text type.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { crc32, gzipSync } from "node:zlib";
import { isText, MIME_SNIFF_BYTES, OCTET_STREAM, sniffMime, TEXT_PLAIN } from "../../lib/files/mime";

/** A real 1×1 PNG. */
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "base64");
/** The start of a JFIF JPEG (SOI, APP0 "JFIF"), then filler as a truncated head would be. */
const JPEG = Buffer.concat([Buffer.from("ffd8ffe000104a46494600010101004800480000", "hex"), noise("jpeg", 200)]);
const PDF = Buffer.from("%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n");

/** A real ZIP archive holding one stored (uncompressed) file. */
function zip(name: string, content: Buffer): Buffer {
	const n = Buffer.from(name);
	const crc = crc32(content);
	const local = Buffer.alloc(30);
	local.writeUInt32LE(0x04034b50, 0);
	local.writeUInt16LE(20, 4);
	local.writeUInt32LE(crc, 14);
	local.writeUInt32LE(content.length, 18);
	local.writeUInt32LE(content.length, 22);
	local.writeUInt16LE(n.length, 26);
	const central = Buffer.alloc(46);
	central.writeUInt32LE(0x02014b50, 0);
	central.writeUInt16LE(20, 4);
	central.writeUInt16LE(20, 6);
	central.writeUInt32LE(crc, 16);
	central.writeUInt32LE(content.length, 20);
	central.writeUInt32LE(content.length, 24);
	central.writeUInt16LE(n.length, 28);
	const end = Buffer.alloc(22);
	end.writeUInt32LE(0x06054b50, 0);
	end.writeUInt16LE(1, 8);
	end.writeUInt16LE(1, 10);
	end.writeUInt32LE(46 + n.length, 12);
	end.writeUInt32LE(30 + n.length + content.length, 16);
	return Buffer.concat([local, n, content, central, n, end]);
}

/**
 * Fixed random-looking bytes (SHA-256 in counter mode): truly random heads would now and then
 * begin with a two-byte signature (BMP "BM", EXE "MZ", MP3 frames) and be sniffed as such.
 */
function noise(seed: string, size: number): Buffer {
	const parts: Buffer[] = [];
	for (let i = 0; i * 32 < size; i++) parts.push(createHash("sha256").update(`${seed}/${i}`).digest());
	return Buffer.concat(parts).subarray(0, size);
}

const HTML = Buffer.from("<!DOCTYPE html>\n<html><body><script>alert(document.cookie)</script></body></html>\n");
const SVG = Buffer.from('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\n');
const BARE_SVG = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>\n');

describe("MIME sniffing", () => {
	it("recognises PNG, JPEG, PDF, ZIP and gzip by their magic numbers whatever the name says", async () => {
		const samples: [Buffer, string][] = [
			[PNG, "image/png"],
			[JPEG, "image/jpeg"],
			[PDF, "application/pdf"],
			[zip("notes.txt", Buffer.from("hello\n")), "application/zip"],
			[gzipSync(Buffer.from("hello, world\n".repeat(100))), "application/gzip"],
		];
		for (const [bytes, mime] of samples)
			for (const name of [undefined, "file", "file.txt", "file.json", "evil.html", "x.svg", "photo.png", "report.pdf"])
				assert.equal(await sniffMime(bytes, name), mime, `${mime} named ${name}`);
	});

	it("calls a PNG named evil.html image/png, and HTML named x.html text/plain", async () => {
		assert.equal(await sniffMime(PNG, "evil.html"), "image/png");
		for (const name of ["x.html", "x.htm", "x.xhtml", "x.svg", "x.xml", "x.js", undefined])
			assert.equal(await sniffMime(HTML, name), TEXT_PLAIN, `HTML named ${name}`);
	});

	it("never returns an active type for SVG or XML content (file-type calls it application/xml)", async () => {
		for (const name of ["x.svg", "x.xml", "x.html", "x.json", undefined]) {
			assert.equal(await sniffMime(SVG, name), name === "x.json" ? "application/json" : TEXT_PLAIN, `SVG named ${name}`);
			assert.equal(await sniffMime(BARE_SVG, name), name === "x.json" ? "application/json" : TEXT_PLAIN, `bare SVG named ${name}`);
		}
	});

	it("calls UTF-8 text text/plain; charset=utf-8, with tabs, CR, LF, FF and multi-byte characters", async () => {
		assert.equal(await sniffMime(Buffer.from("Hello, world.\r\n\tGrüße — 世界 🌍\f\n"), "readme"), TEXT_PLAIN);
		assert.equal(await sniffMime(Buffer.from("\ufeffwith a byte-order mark\n")), TEXT_PLAIN);
		assert.equal(await sniffMime(Buffer.from("plain"), "photo.png"), TEXT_PLAIN, "a text named .png is still text");
		// A head cut in the middle of a multi-byte character is still text.
		const long = Buffer.from("ä".repeat(MIME_SNIFF_BYTES));
		assert.equal(await sniffMime(long.subarray(0, MIME_SNIFF_BYTES + 1)), TEXT_PLAIN);
	});

	it("calls random-looking bytes, invalid UTF-8 and text with control characters application/octet-stream", async () => {
		for (let i = 0; i < 20; i++) assert.equal(await sniffMime(noise(`bytes ${i}`, MIME_SNIFF_BYTES), "data.txt"), OCTET_STREAM);
		assert.equal(await sniffMime(Buffer.from([0x68, 0x69, 0xff, 0x0a]), "a.txt"), OCTET_STREAM, "0xff is never UTF-8");
		assert.equal(await sniffMime(Buffer.from([0x68, 0xc3, 0x28, 0x0a]), "a.csv"), OCTET_STREAM, "a broken two-byte sequence");
		assert.equal(await sniffMime(Buffer.from("text\u0000with NUL"), "a.json"), OCTET_STREAM);
		assert.equal(await sniffMime(Buffer.from("escape \u001b[31m"), "a.md"), OCTET_STREAM);
		assert.equal(await sniffMime(Buffer.from("C1 \u0085 control")), OCTET_STREAM);
		assert.equal(isText(Buffer.from("ok\t\r\n\f")), true);
		assert.equal(isText(Buffer.from("no\u000b")), false);
	});

	it("lets the name refine text only: .json, .csv, .md and the like", async () => {
		const json = Buffer.from('{"name": "Zoë", "items": [1, 2, 3]}\n');
		assert.equal(await sniffMime(json, "data.json"), "application/json");
		assert.equal(await sniffMime(json, "DATA.JSON"), "application/json");
		assert.equal(await sniffMime(json, "data"), TEXT_PLAIN, "JSON without the name is plain text");
		assert.equal(await sniffMime(Buffer.from("a,b\n1,2\n"), "table.csv"), "text/csv; charset=utf-8");
		assert.equal(await sniffMime(Buffer.from("# Title\n\nSome *text*.\n"), "README.md"), "text/markdown; charset=utf-8");
		assert.equal(await sniffMime(Buffer.from("a: 1\n"), "config.yaml"), "application/yaml");
		assert.equal(await sniffMime(Buffer.from("plain words\n"), "notes.txt"), TEXT_PLAIN);
		// Binary content named like text keeps its real type.
		assert.equal(await sniffMime(PNG, "data.json"), "image/png");
		assert.equal(await sniffMime(noise("csv", 1000), "table.csv"), OCTET_STREAM);
	});

	it("calls an empty file text/plain", async () => {
		assert.equal(await sniffMime(Buffer.alloc(0)), TEXT_PLAIN);
		assert.equal(await sniffMime(Buffer.alloc(0), "empty.json"), "application/json");
	});
});
