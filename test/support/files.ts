/** Bytes for file tests: deterministic pseudo-random content and streamed multipart bodies. */
import { createCipheriv, createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { replyOf, type Api, type Reply } from "./org";

/** `size` pseudo-random bytes from `seed`, generated piece by piece (never held whole). */
export async function* randomContent(size: number, seed: string, pieceSize = 1 << 20): AsyncGenerator<Buffer> {
	// AES-128-CTR over zeros: fast, and the same bytes for the same seed on every run.
	const key = createHash("sha256").update(seed).digest();
	const cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
	const zeros = Buffer.alloc(pieceSize);
	for (let done = 0; done < size; ) {
		const n = Math.min(pieceSize, size - done);
		done += n;
		yield cipher.update(zeros.subarray(0, n));
	}
}

export async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
	const parts: Buffer[] = [];
	for await (const part of source) parts.push(part);
	return Buffer.concat(parts);
}

export const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

export interface UploadPart {
	name: string;
	content: Buffer | AsyncIterable<Buffer>;
	type?: string;
}

/** A multipart/form-data body streamed from its parts. */
export function multipartBody(parts: UploadPart[]): { body: Readable; contentType: string } {
	const boundary = `----cnbicloud${randomBytes(12).toString("hex")}`;
	async function* generate() {
		for (const part of parts) {
			const filename = encodeURIComponent(part.name) === part.name ? `filename="${part.name}"` : `filename="${part.name.replace(/"/g, "%22")}"`;
			yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; ${filename}\r\nContent-Type: ${part.type ?? "application/octet-stream"}\r\n\r\n`);
			// An empty piece would stall the request body: a stream reads it as "nothing yet".
			if (Buffer.isBuffer(part.content)) {
				if (part.content.length) yield part.content;
			} else for await (const piece of part.content) if (piece.length) yield piece;
			yield Buffer.from("\r\n");
		}
		yield Buffer.from(`--${boundary}--\r\n`);
	}
	return { body: Readable.from(generate()), contentType: `multipart/form-data; boundary=${boundary}` };
}

/** POST /api/files with the parts, streamed. */
export async function uploadFiles(api: Api, parts: UploadPart[]): Promise<Reply> {
	const { body, contentType } = multipartBody(parts);
	const res = await fetch(`${api.url}/api/files`, {
		method: "POST",
		headers: { "Content-Type": contentType, ...(api.token ? { Authorization: `Bearer ${api.token}` } : {}) },
		body: body as unknown as RequestInit["body"],
		duplex: "half",
	} as RequestInit);
	return replyOf(res);
}

/** GET a file's bytes (optionally with more headers): status, headers and the body as a Buffer. */
export async function download(api: Api, id: string, headers: Record<string, string> = {}) {
	const res = await fetch(`${api.url}/api/files/${id}`, { headers: { ...(api.token ? { Authorization: `Bearer ${api.token}` } : {}), ...headers } });
	return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

/** PUT one chunk of a resumable upload. */
export async function putChunk(api: Api, uploadId: string, index: number | string, data: Buffer): Promise<Reply> {
	const res = await fetch(`${api.url}/api/files/uploads/${uploadId}/chunks/${index}`, {
		method: "PUT",
		headers: { "Content-Type": "application/octet-stream", ...(api.token ? { Authorization: `Bearer ${api.token}` } : {}) },
		body: data,
	});
	return replyOf(res);
}

/** Fixed-size split of `data` as a resumable upload's chunk list. */
export function fixedChunks(data: Buffer, size: number): { sha256: string; size: number; data: Buffer }[] {
	const out = [];
	for (let at = 0; at < data.length; at += size) {
		const piece = data.subarray(at, Math.min(at + size, data.length));
		out.push({ sha256: sha256(piece), size: piece.length, data: piece });
	}
	return out;
}
