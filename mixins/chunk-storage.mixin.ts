import type { Service, ServiceSchema } from "moleculer";
import { createChunkStorage, type ChunkStorage } from "../lib/files/storage";
import { refuseUnsharedReplica } from "../lib/replicas";
import { serviceSchema } from "../lib/service";

/**
 * `this.storage`: the file-chunk storage the platform settings choose (local disk or S3),
 * ready once the service has started and closed when it stops. Chunks on a node's local disk
 * are that node's alone, so a second replica of the service on local disk refuses to start.
 */
export function ChunkStorageMixin(): Partial<ServiceSchema> {
	return serviceSchema({
		created(this: Service & { storage: ChunkStorage }) {
			this.storage = createChunkStorage(this.broker.options.platform!.files.storage);
		},

		async started(this: Service & { storage: ChunkStorage }) {
			if (this.storage.kind === "local")
				refuseUnsharedReplica(
					this,
					"FILES_NOT_SHARED",
					`this node keeps file chunks on its local disk. Replicas of ${this.name} share chunks through S3: set S3_BUCKET (and S3_ENDPOINT) on every node that runs it.`,
				);
			await this.storage.init();
		},

		async stopped(this: Service & { storage: ChunkStorage }) {
			await this.storage.close();
		},
	});
}
