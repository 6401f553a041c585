/**
 * Chunks on local disk: `<dir>/chunks/<key[0..1]>/<key[2..3]>/<key>`, two levels of 256 folders
 * so that no folder grows past a few thousand entries.
 *
 * A chunk appears under its name only whole: it is written to a temp file beside it (same folder,
 * hence same file system), flushed to disk, then renamed, which is atomic. Temp files a crash left
 * behind (`<key>.tmp-*`) are never listed, and `init()` removes those older than an hour (younger
 * ones may be another node's write in progress).
 */
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import path from "node:path";
import { BaseChunkStorage, CHUNK_KEY, ChunkNotFoundError, unsatisfiableRange, type ChunkRange, type StoredChunk } from "./base.storage";

const TEMP_MARK = ".tmp-";
const STALE_TEMP_MS = 60 * 60 * 1000;
const SHARD = /^[0-9a-f]{2}$/;

function isMissing(err: unknown): boolean {
	return (err as NodeJS.ErrnoException)?.code === "ENOENT";
}

export class LocalChunkStorage extends BaseChunkStorage {
	readonly kind = "local" as const;
	private readonly root: string;

	constructor(dir: string) {
		super();
		this.root = path.join(path.resolve(dir), "chunks");
	}

	async init(): Promise<void> {
		// recursive mkdir does not fail when another node made it first
		await fsp.mkdir(this.root, { recursive: true });
		await this.removeStaleTemps(Date.now() - STALE_TEMP_MS);
	}

	protected async exists(key: string): Promise<boolean> {
		try {
			await fsp.access(this.pathOf(key));
			return true;
		} catch (err) {
			if (isMissing(err)) return false;
			throw err;
		}
	}

	protected async write(key: string, data: Buffer): Promise<void> {
		const target = this.pathOf(key);
		const dir = path.dirname(target);
		await fsp.mkdir(dir, { recursive: true });
		const temp = `${target}${TEMP_MARK}${process.pid}-${randomBytes(6).toString("hex")}`;
		try {
			const handle = await fsp.open(temp, "wx");
			try {
				await handle.writeFile(data);
				await handle.sync();
			} finally {
				await handle.close();
			}
			// Atomic: readers see no file or the whole chunk. A concurrent writer of the same key
			// renames identical bytes over it, which changes nothing a reader could notice.
			await fsp.rename(temp, target);
		} catch (err) {
			await fsp.rm(temp, { force: true });
			throw err;
		}
		await syncDir(dir);
	}

	protected async read(key: string, range?: ChunkRange): Promise<NodeJS.ReadableStream> {
		let handle: fsp.FileHandle;
		try {
			handle = await fsp.open(this.pathOf(key), "r");
		} catch (err) {
			if (isMissing(err)) throw new ChunkNotFoundError(key);
			throw err;
		}
		// Reading through the open handle keeps working if the collector unlinks the file meanwhile.
		try {
			if (!range) return handle.createReadStream();
			const { size } = await handle.stat();
			if (range.start >= size) throw unsatisfiableRange(key, range, size);
			return handle.createReadStream({ start: range.start, end: Math.min(range.end, size - 1) });
		} catch (err) {
			await handle.close();
			throw err;
		}
	}

	protected async remove(key: string): Promise<void> {
		await fsp.rm(this.pathOf(key), { force: true });
	}

	async *list(): AsyncIterable<StoredChunk> {
		for (const shard of await this.shards()) {
			for (const name of await readdirOrEmpty(shard)) {
				// only finished chunks in the folder their name belongs in; temp files and strays are skipped
				if (!CHUNK_KEY.test(name) || path.join(this.root, name.slice(0, 2), name.slice(2, 4)) !== shard) continue;
				try {
					const stat = await fsp.stat(path.join(shard, name));
					if (stat.isFile()) yield { key: name, size: stat.size, modifiedAt: stat.mtime };
				} catch (err) {
					if (!isMissing(err)) throw err; // deleted while listing: no longer stored
				}
			}
		}
	}

	async close(): Promise<void> {
		// nothing held open between calls
	}

	private pathOf(key: string): string {
		return path.join(this.root, key.slice(0, 2), key.slice(2, 4), key);
	}

	/** The second-level folders `<root>/xx/yy`, in order. */
	private async shards(): Promise<string[]> {
		const out: string[] = [];
		for (const a of (await readdirOrEmpty(this.root)).filter(n => SHARD.test(n)).sort()) {
			for (const b of (await readdirOrEmpty(path.join(this.root, a))).filter(n => SHARD.test(n)).sort()) {
				out.push(path.join(this.root, a, b));
			}
		}
		return out;
	}

	private async removeStaleTemps(olderThan: number): Promise<void> {
		for (const shard of await this.shards()) {
			for (const name of await readdirOrEmpty(shard)) {
				if (!name.includes(TEMP_MARK)) continue;
				const file = path.join(shard, name);
				try {
					if ((await fsp.stat(file)).mtimeMs < olderThan) await fsp.rm(file, { force: true });
				} catch (err) {
					if (!isMissing(err)) throw err;
				}
			}
		}
	}
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
	try {
		return await fsp.readdir(dir);
	} catch (err) {
		if (isMissing(err)) return [];
		throw err;
	}
}

/** Makes the rename durable: a crash right after it must not lose the new name. */
async function syncDir(dir: string): Promise<void> {
	let handle: fsp.FileHandle | null = null;
	try {
		handle = await fsp.open(dir, fs.constants.O_RDONLY);
		await handle.sync();
	} catch {
		// some file systems refuse fsync on a folder; the chunk itself is already on disk
	} finally {
		await handle?.close();
	}
}
