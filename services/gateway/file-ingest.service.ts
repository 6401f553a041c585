import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import type { Context } from "moleculer";
import { chunkStream } from "../../lib/files/chunker";
import { checkFileName } from "../../lib/files/names";
import { serviceSchema } from "../../lib/service";
import type { RequestMeta } from "../../types/context";

type Ctx = Context<unknown, RequestMeta & { filename?: string }>;

/**
 * `POST /api/files` on the gateway's node: the multipart stream is cut into content-defined
 * chunks here, where the client's socket is, and each chunk goes to `files` as one call whose
 * answer is awaited before the next is read. Moleculer's streams between nodes have no
 * back-pressure from the receiver, so a whole upload streamed to another node would pile up in
 * its memory whenever the client sends faster than chunks are stored; one chunk per call keeps
 * every node's memory at about one chunk, and paces the client to the storage.
 */
const FileIngestService = serviceSchema({
	name: "fileingest",
	settings: { rest: "/files", app: "files" },

	actions: {
		upload: {
			rest: { method: "POST", path: "/", type: "multipart", busboyConfig: { preservePath: true, limits: { files: 20, fields: 20, fieldSize: 4096, parts: 40 } } },
			permission: "file:write",
			// Streams of gigabytes take their time; the gateway's inactivity timeout still applies.
			timeout: 0,
			description: "Upload one or more files (multipart/form-data), streamed: chunked, deduplicated, never held whole in memory.",
			async handler(ctx: Ctx) {
				const input = ctx.params as unknown as Readable;
				try {
					const name = checkFileName(ctx.meta.filename);
					const { uploadId } = await ctx.call<{ uploadId: string }, object>("files.ingestOpen", { name });
					try {
						const whole = createHash("sha256");
						for await (const chunk of chunkStream(input)) {
							whole.update(chunk.data);
							await ctx.call("files.ingestChunk", Readable.from([chunk.data]), { meta: { ingest: { uploadId, sha256: chunk.sha256, size: chunk.size } } });
						}
						return await ctx.call("files.ingestFinish", { uploadId, sha256: whole.digest("hex") });
					} catch (err) {
						await ctx.call("files.ingestAbort", { uploadId }).catch(() => undefined);
						throw err;
					}
				} finally {
					input.resume();
				}
			},
		},
	},
});

export default FileIngestService;
