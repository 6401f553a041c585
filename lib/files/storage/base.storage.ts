/**
 * Content-addressed chunk storage: the contract both backends (local disk, S3) keep, its errors,
 * and the checks every backend does the same way (key shape, content hash, byte ranges).
 *
 * A chunk's key is the lowercase hex SHA-256 of its bytes, so a stored chunk never changes:
 * writing a key twice is a no-op and two nodes writing the same key race harmlessly.
 */
import { createHash } from "node:crypto";

export interface StoredChunk {
	key: string;
	size: number;
	modifiedAt: Date;
}

/** An inclusive byte range [start, end] of a chunk, as in HTTP's `Range: bytes=start-end`. */
export interface ChunkRange {
	start: number;
	end: number;
}

export interface ChunkStorage {
	readonly kind: "local" | "s3";
	/** Creates the directory / bucket when missing; safe to call from several nodes at once. */
	init(): Promise<void>;
	has(key: string): Promise<boolean>;
	/**
	 * Stores `data` under `key`. Verifies sha256(data) === key first and throws ChunkHashMismatchError
	 * otherwise (nothing stored). Idempotent: an existing key is kept. Never leaves a partial object
	 * visible under `key`.
	 */
	put(key: string, data: Buffer): Promise<void>;
	/**
	 * The chunk's bytes as a stream, or the inclusive byte range [start, end] of it (an `end` past the
	 * chunk is cut to its last byte, as HTTP does; a `start` past it is a RangeError).
	 * Throws ChunkNotFoundError when missing.
	 */
	get(key: string, range?: ChunkRange): Promise<NodeJS.ReadableStream>;
	/** Removes the chunk; no error when it is already gone. */
	delete(key: string): Promise<void>;
	/** Every stored chunk (for the garbage collector), paged internally. */
	list(): AsyncIterable<StoredChunk>;
	close(): Promise<void>;
}

/** Tuning that only tests and tools change. */
export interface ChunkStorageOptions {
	/** Objects per ListObjectsV2 page (S3; at most 1,000, S3's own limit). */
	listPageSize?: number;
}

export const CHUNK_KEY = /^[0-9a-f]{64}$/;

/** The bytes did not hash to the key they were offered under. */
export class ChunkHashMismatchError extends Error {
	override readonly name = "ChunkHashMismatchError";
	constructor(readonly expected: string, readonly actual: string) {
		super(`Chunk content does not match its key: expected SHA-256 ${expected}, got ${actual}`);
	}
}

export class ChunkNotFoundError extends Error {
	override readonly name = "ChunkNotFoundError";
	constructor(readonly key: string) {
		super(`Chunk ${key} not found`);
	}
}

/** A key that is not a lowercase hex SHA-256: refused before it can name a path or an object. */
export class InvalidChunkKeyError extends Error {
	override readonly name = "InvalidChunkKeyError";
	constructor(key: unknown) {
		super(`Invalid chunk key ${JSON.stringify(String(key).slice(0, 80))}: expected 64 lowercase hex digits (SHA-256)`);
	}
}

/** The backend itself failed (unreachable, refused, misconfigured): the message says which and where. */
export class ChunkStorageError extends Error {
	override readonly name = "ChunkStorageError";
	constructor(message: string, options?: { cause?: unknown }) {
		super(message, options);
	}
}

export function assertChunkKey(key: unknown): asserts key is string {
	if (typeof key !== "string" || !CHUNK_KEY.test(key)) throw new InvalidChunkKeyError(key);
}

export function sha256Hex(data: Buffer): string {
	return createHash("sha256").update(data).digest("hex");
}

/** The checks and the de-duplication of concurrent writes that every backend shares. */
export abstract class BaseChunkStorage implements ChunkStorage {
	abstract readonly kind: "local" | "s3";
	/** Writes under way on this node, by key: a second caller waits for the first instead of uploading again. */
	private readonly writing = new Map<string, Promise<void>>();

	abstract init(): Promise<void>;
	protected abstract exists(key: string): Promise<boolean>;
	/** Writes verified bytes that are not stored yet, atomically. */
	protected abstract write(key: string, data: Buffer): Promise<void>;
	protected abstract read(key: string, range?: ChunkRange): Promise<NodeJS.ReadableStream>;
	protected abstract remove(key: string): Promise<void>;
	abstract list(): AsyncIterable<StoredChunk>;
	abstract close(): Promise<void>;

	async has(key: string): Promise<boolean> {
		assertChunkKey(key);
		return this.exists(key);
	}

	async put(key: string, data: Buffer): Promise<void> {
		assertChunkKey(key);
		if (!Buffer.isBuffer(data)) throw new TypeError("Chunk data must be a Buffer");
		const actual = sha256Hex(data);
		if (actual !== key) throw new ChunkHashMismatchError(key, actual);
		const pending = this.writing.get(key);
		if (pending) return pending;
		const write = (async () => {
			if (!(await this.exists(key))) await this.write(key, data);
		})().finally(() => this.writing.delete(key));
		this.writing.set(key, write);
		return write;
	}

	async get(key: string, range?: ChunkRange): Promise<NodeJS.ReadableStream> {
		assertChunkKey(key);
		if (range) assertRange(range);
		return this.read(key, range);
	}

	async delete(key: string): Promise<void> {
		assertChunkKey(key);
		return this.remove(key);
	}
}

function assertRange(range: ChunkRange): void {
	const { start, end } = range;
	if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start)
		throw new RangeError(`Invalid chunk byte range ${start}-${end}: expected integers with 0 <= start <= end`);
}

/** A range whose start lies past the chunk's last byte. */
export function unsatisfiableRange(key: string, range: ChunkRange, size?: number): RangeError {
	const of = size == null ? "" : ` (${size} bytes)`;
	return new RangeError(`Byte range ${range.start}-${range.end} starts past the end of chunk ${key}${of}`);
}
