/**
 * Chunk storage for the files service: `createChunkStorage(platform.files.storage)` gives the
 * backend the settings name (local disk or S3), behind one contract (base.storage.ts).
 */
import type { FileStorageSettings } from "../../../types/platform";
import type { ChunkStorage, ChunkStorageOptions } from "./base.storage";
import { LocalChunkStorage } from "./local.storage";
import { S3ChunkStorage } from "./s3.storage";

export * from "./base.storage";
export { LocalChunkStorage } from "./local.storage";
export { S3ChunkStorage } from "./s3.storage";

export function createChunkStorage(settings: FileStorageSettings, options: ChunkStorageOptions = {}): ChunkStorage {
	switch (settings.kind) {
		case "local":
			return new LocalChunkStorage(settings.dir);
		case "s3":
			return new S3ChunkStorage(settings, options);
		default:
			throw new Error(`Unknown file storage kind '${(settings as { kind: string }).kind}'`);
	}
}
