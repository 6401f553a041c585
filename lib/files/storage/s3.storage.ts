/**
 * Chunks in an S3 bucket (AWS or an S3-compatible server: MinIO, s3rver), object key `chunks/<key>`.
 *
 * S3 makes an object visible only once its PUT has completed, so no partial chunk can be read
 * under its key. Each PUT carries `x-amz-checksum-sha256` (the key itself, in base64): AWS checks
 * the bytes it received against it and refuses a corrupted upload. Servers that ignore the header
 * (s3rver does) simply store the bytes, which were already checked against the key here.
 *
 * AWS errors become ChunkStorageError / ChunkNotFoundError / RangeError with the operation, the
 * object and a hint; credentials never appear in a message.
 */
import {
	CreateBucketCommand,
	DeleteObjectCommand,
	GetObjectCommand,
	HeadBucketCommand,
	HeadObjectCommand,
	ListObjectsV2Command,
	PutObjectCommand,
	S3Client,
	type BucketLocationConstraint,
	type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Readable } from "node:stream";
import type { FileStorageSettings } from "../../../types/platform";
import {
	BaseChunkStorage,
	CHUNK_KEY,
	ChunkNotFoundError,
	ChunkStorageError,
	unsatisfiableRange,
	type ChunkRange,
	type ChunkStorageOptions,
	type StoredChunk,
} from "./base.storage";

export type S3StorageSettings = Extract<FileStorageSettings, { kind: "s3" }>;

const PREFIX = "chunks/";
const MAX_PAGE = 1000;

/** What the SDK's errors carry that we look at. */
interface AwsError {
	name?: string;
	Code?: string;
	code?: string;
	message?: string;
	$metadata?: { httpStatusCode?: number };
}

function statusOf(err: unknown): number | undefined {
	return (err as AwsError)?.$metadata?.httpStatusCode;
}

/** S3's error code, or the network error's (ECONNREFUSED…), or the error's name. */
function codeOf(err: unknown): string {
	const e = err as AwsError;
	return e?.Code ?? (typeof e?.code === "string" ? e.code : undefined) ?? e?.name ?? "Error";
}

function isNotFound(err: unknown): boolean {
	const code = codeOf(err);
	return statusOf(err) === 404 || code === "NotFound" || code === "NoSuchKey" || code === "NoSuchBucket";
}

/** What to check, for the errors an operator can fix. */
function hint(code: string, status: number | undefined): string {
	if (code === "InvalidAccessKeyId" || code === "SignatureDoesNotMatch" || code === "CredentialsProviderError")
		return " Check S3_ACCESS_KEY and S3_SECRET_KEY.";
	if (code === "AccessDenied" || status === 403) return " The credentials are not allowed this operation on the bucket.";
	if (code === "NoSuchBucket") return " The bucket does not exist.";
	if (code === "PermanentRedirect" || code === "AuthorizationHeaderMalformed" || status === 301) return " Check S3_REGION: the bucket is in another region.";
	if (code === "ECONNREFUSED" || code === "ENOTFOUND" || code === "ETIMEDOUT" || code === "TimeoutError") return " Check S3_ENDPOINT: the server cannot be reached.";
	return "";
}

/** An endpoint without any user:password part, for messages. */
function safeEndpoint(endpoint: string | null): string {
	if (!endpoint) return "AWS S3";
	try {
		const url = new URL(endpoint);
		url.username = "";
		url.password = "";
		return url.origin;
	} catch {
		return "the configured S3_ENDPOINT";
	}
}

export class S3ChunkStorage extends BaseChunkStorage {
	readonly kind = "s3" as const;
	private readonly client: S3Client;
	private readonly bucket: string;
	private readonly pageSize: number;

	constructor(private readonly settings: S3StorageSettings, options: ChunkStorageOptions = {}) {
		super();
		this.bucket = settings.bucket;
		this.pageSize = Math.max(1, Math.min(MAX_PAGE, options.listPageSize ?? MAX_PAGE));
		this.client = new S3Client(clientConfig(settings));
	}

	async init(): Promise<void> {
		if (await this.bucketReachable()) return;
		try {
			const location = this.settings.region === "us-east-1" ? undefined : { LocationConstraint: this.settings.region as BucketLocationConstraint };
			await this.client.send(new CreateBucketCommand({ Bucket: this.bucket, CreateBucketConfiguration: location }));
		} catch (err) {
			// Another node created it first (AWS: …OwnedByYou; s3rver and others: …Exists). It is only
			// ours to use if we can reach it now; a bucket of someone else's stays an error.
			const code = codeOf(err);
			if (code !== "BucketAlreadyOwnedByYou" && code !== "BucketAlreadyExists") throw this.failure("CreateBucket", null, err);
			if (!(await this.bucketReachable())) throw this.failure("CreateBucket", null, err);
		}
	}

	protected async exists(key: string): Promise<boolean> {
		try {
			await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: PREFIX + key }));
			return true;
		} catch (err) {
			if (statusOf(err) === 404 && codeOf(err) !== "NoSuchBucket") return false;
			throw this.failure("HeadObject", key, err);
		}
	}

	protected async write(key: string, data: Buffer): Promise<void> {
		try {
			await this.client.send(new PutObjectCommand({
				Bucket: this.bucket,
				Key: PREFIX + key,
				Body: data,
				ContentLength: data.length,
				ContentType: "application/octet-stream",
				ChecksumSHA256: Buffer.from(key, "hex").toString("base64"),
			}));
		} catch (err) {
			throw this.failure("PutObject", key, err);
		}
	}

	protected async read(key: string, range?: ChunkRange): Promise<NodeJS.ReadableStream> {
		try {
			const res = await this.client.send(new GetObjectCommand({
				Bucket: this.bucket,
				Key: PREFIX + key,
				Range: range ? `bytes=${range.start}-${range.end}` : undefined,
			}));
			if (!res.Body) throw new ChunkStorageError(`S3 GetObject of '${PREFIX}${key}' returned no body`);
			// In Node the body is the HTTP response itself: a readable stream, read as it arrives.
			const body = res.Body as Readable;
			return range ? exactly(body, served(res.ContentRange), range) : body;
		} catch (err) {
			if (err instanceof ChunkStorageError) throw err;
			if (isNotFound(err) && codeOf(err) !== "NoSuchBucket") throw new ChunkNotFoundError(key);
			if (range && (statusOf(err) === 416 || codeOf(err) === "InvalidRange")) throw unsatisfiableRange(key, range);
			throw this.failure("GetObject", key, err);
		}
	}

	protected async remove(key: string): Promise<void> {
		try {
			// S3 answers 204 whether or not the object existed
			await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: PREFIX + key }));
		} catch (err) {
			if (isNotFound(err) && codeOf(err) !== "NoSuchBucket") return;
			throw this.failure("DeleteObject", key, err);
		}
	}

	async *list(): AsyncIterable<StoredChunk> {
		let token: string | undefined;
		do {
			let page;
			try {
				page = await this.client.send(new ListObjectsV2Command({
					Bucket: this.bucket,
					Prefix: PREFIX,
					MaxKeys: this.pageSize,
					ContinuationToken: token,
				}));
			} catch (err) {
				throw this.failure("ListObjectsV2", null, err);
			}
			for (const object of page.Contents ?? []) {
				const key = object.Key?.slice(PREFIX.length) ?? "";
				// objects someone else put under the prefix are not chunks of ours
				if (!CHUNK_KEY.test(key)) continue;
				yield { key, size: object.Size ?? 0, modifiedAt: object.LastModified ?? new Date(0) };
			}
			token = page.IsTruncated ? page.NextContinuationToken : undefined;
		} while (token);
	}

	async close(): Promise<void> {
		this.client.destroy();
	}

	private async bucketReachable(): Promise<boolean> {
		try {
			await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
			return true;
		} catch (err) {
			if (statusOf(err) === 404 || codeOf(err) === "NotFound" || codeOf(err) === "NoSuchBucket") return false;
			throw this.failure("HeadBucket", null, err);
		}
	}

	private failure(operation: string, key: string | null, err: unknown): ChunkStorageError {
		const code = codeOf(err);
		const status = statusOf(err);
		const what = key ? `'${PREFIX}${key}' in bucket '${this.bucket}'` : `bucket '${this.bucket}'`;
		// answers without a body (HEAD) give the SDK nothing but "Unknown": the status says it all then
		const known = code !== "Unknown" && code !== "UnknownError";
		const message = (err as AwsError)?.message;
		const detail = [known ? code : null, message && message !== code && message !== "UnknownError" ? message : null].filter(Boolean).join(": ");
		const http = status ? `HTTP ${status}` : "";
		const reason = detail && http ? `${detail} (${http})` : detail || http || "unknown error";
		return new ChunkStorageError(
			`S3 ${operation} of ${what} at ${safeEndpoint(this.settings.endpoint)} failed: ${reason}.${hint(code, status)}`,
			{ cause: err },
		);
	}
}

/** The bytes a server sent, from Content-Range; null when it sent the whole object. */
function served(contentRange: string | undefined): { start: number; end: number } | null {
	const match = /^bytes (\d+)-(\d+)\//.exec(contentRange ?? "");
	return match ? { start: Number(match[1]), end: Number(match[2]) } : null;
}

/**
 * The bytes [range.start, range.end] out of a body holding `sent` (null: the whole object). S3
 * sends exactly the range asked for, and the body is passed on untouched; but some S3-compatible
 * servers send more (s3rver answers `bytes=0-0` with the whole object), which is cut here.
 */
function exactly(body: Readable, sent: { start: number; end: number } | null, range: ChunkRange): Readable {
	const from = sent?.start ?? 0;
	if (from === range.start && sent && sent.end <= range.end) return body;
	if (from > range.start) {
		body.destroy();
		throw new ChunkStorageError(`S3 server sent bytes from ${from} for a range starting at ${range.start}`);
	}
	let skip = range.start - from;
	let left = range.end - range.start + 1;
	async function* trim(): AsyncGenerator<Buffer> {
		// leaving the loop early (range complete, or the reader gave up) destroys the body
		for await (const part of body) {
			let bytes = part as Buffer;
			if (skip > 0) {
				const n = Math.min(skip, bytes.length);
				bytes = bytes.subarray(n);
				skip -= n;
			}
			if (bytes.length === 0) continue;
			if (bytes.length > left) bytes = bytes.subarray(0, left);
			left -= bytes.length;
			yield bytes;
			if (left === 0) return;
		}
	}
	return Readable.from(trim(), { objectMode: false });
}

function clientConfig(settings: S3StorageSettings): S3ClientConfig {
	return {
		region: settings.region,
		endpoint: settings.endpoint ?? undefined,
		forcePathStyle: settings.forcePathStyle,
		// null = the SDK's default chain (environment, instance role, …)
		credentials: settings.accessKeyId && settings.secretAccessKey
			? { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey }
			: undefined,
		// Our own SHA-256 header is the checksum; no extra CRC32 trailer (which needs aws-chunked
		// uploads that some S3-compatible servers do not understand).
		requestChecksumCalculation: "WHEN_REQUIRED",
		responseChecksumValidation: "WHEN_REQUIRED",
		// Fail fast on an unreachable endpoint; no idle limit on responses, since a download may be
		// paused for long by a slow client downstream.
		requestHandler: { connectionTimeout: 10_000 },
	};
}
