/**
 * Message types and their content, shared by 1:1 and group chat.
 *
 *   text, markdown       content is a string
 *   image, file, voice   content is `{ fileId }` (voice: also `durationMs`): a file of the `files`
 *                        service the sender may read; name, size and type are copied from it
 */
import type { Context } from "moleculer";
import { clientError } from "../errors";
import { idParam } from "../org/params";

export const MESSAGE_TYPES = ["text", "markdown", "image", "file", "voice"] as const;
export type MessageType = (typeof MESSAGE_TYPES)[number];

export const MAX_TEXT_CHARS = 5000;
export const MAX_MARKDOWN_CHARS = 20_000;

export interface FileContent {
	fileId: string;
	name: string;
	size: number;
	mime: string;
	durationMs?: number;
}
export type MessageContent = string | FileContent;

export const messageTypeParam = { type: "enum", values: MESSAGE_TYPES };
/** Checked in full by `messageContent` once the type is known. */
export const contentParam = [
	{ type: "string", min: 1, max: MAX_MARKDOWN_CHARS },
	{ type: "object", strict: true, props: { fileId: idParam, durationMs: { type: "number", integer: true, min: 1, max: 3_600_000, optional: true } } },
];
/** A client's own id of a message, for retries: the same id twice stores one message. */
export const clientMsgIdParam = { type: "string", min: 1, max: 64, pattern: /^[A-Za-z0-9._:-]+$/ };

const invalid = (message: string) => clientError(message, 422, "VALIDATION_ERROR", { field: "content" });

/** The content to store for a message of `type`: text as given, files described from the `files` service (404 when the sender may not read it). */
export async function messageContent(ctx: Context, type: MessageType, content: unknown): Promise<MessageContent> {
	if (type === "text" || type === "markdown") {
		const max = type === "text" ? MAX_TEXT_CHARS : MAX_MARKDOWN_CHARS;
		if (typeof content !== "string") throw invalid(`A ${type} message's content is a string`);
		if (content.trim().length === 0) throw invalid(`A ${type} message cannot be empty`);
		if (content.length > max) throw invalid(`A ${type} message has at most ${max} characters`);
		return content;
	}
	if (typeof content !== "object" || content === null || typeof (content as FileContent).fileId !== "string")
		throw invalid(`A ${type} message's content is { fileId${type === "voice" ? ", durationMs" : ""} }`);
	const { fileId, durationMs } = content as { fileId: string; durationMs?: number };
	if (durationMs !== undefined && type !== "voice") throw invalid("Only a voice message has a duration");
	// The caller's meta travels with the call: `files` answers 404 for a file the sender may not read.
	const file = await ctx.call<{ id: string; name: string; size: number; mime: string; status?: string }, { id: string }>("files.meta", { id: fileId });
	if (type === "image" && !file.mime.startsWith("image/")) throw invalid(`File '${fileId}' is not an image (${file.mime})`);
	if (type === "voice" && !file.mime.startsWith("audio/")) throw invalid(`File '${fileId}' is not audio (${file.mime})`);
	return { fileId: file.id, name: file.name, size: file.size, mime: file.mime, ...(durationMs !== undefined ? { durationMs } : {}) };
}
