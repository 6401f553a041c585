import { Errors, type Context, type ServiceSchema } from "moleculer";
import { serviceSchema } from "../lib/service";
import type { DbMethods } from "./db.mixin";

type Doc = Record<string, unknown>;

/** How many times an append retries after losing the race for a sequence number to another node. */
const MAX_APPEND_ATTEMPTS = 50;
/** Streams whose last sequence number this node remembers (it saves a query per message). */
const SEQ_HINTS = 10_000;

export interface MessagePageParams {
	afterSeq?: number;
	beforeSeq?: number;
	limit: number;
}

/** What `MessageLogMixin` adds to a service (beside `DbMixin`'s methods). */
export interface MessageLogMethods {
	/**
	 * Stores a message as the next of its stream. Answers the stored message, or the one stored
	 * earlier with the same `senderId` and `clientMsgId` (`duplicate: true`): a retry stores nothing.
	 */
	appendMessage(ctx: Context, streamId: string, message: Doc & { senderId: string; clientMsgId: string }): Promise<{ message: Doc; duplicate: boolean }>;
	/** Up to `limit` messages after `afterSeq`, or before `beforeSeq`, or the newest ones; in sequence order. */
	messagePage(ctx: Context, streamId: string, page: MessagePageParams, query?: Doc): Promise<{ rows: Doc[]; hasMore: boolean }>;
	/** The stream's highest sequence number, 0 when it has no message. */
	lastSeq(ctx: Context, streamId: string): Promise<number>;
}

type Svc = DbMethods &
	MessageLogMethods & {
		seqHints: Map<string, number>;
		appendQueues: Map<string, Promise<unknown>>;
		appendNow(ctx: Context, streamId: string, message: Doc & { senderId: string; clientMsgId: string }): Promise<{ message: Doc; duplicate: boolean }>; findDuplicate(ctx: Context, streamId: string, senderId: string, clientMsgId: string): Promise<Doc | null> };

/**
 * An append-only log of messages per stream (a conversation, a group), numbered 1, 2, 3… with
 * no gap and no repeat, whichever node appends. The entity (declared by the service, with
 * `DbMixin`) has the stream field, `seq`, `senderId` and `clientMsgId`, and two unique keys:
 * `[stream, seq]` and `[stream, senderId, clientMsgId]`.
 *
 * The store assigns the number: a node inserts `last + 1` and, when another node took that number
 * first (the unique key refuses it), reads the last number again and retries. A message is
 * acknowledged only once it is stored, and a number is only ever taken by a stored message, so
 * a node dying mid-append leaves no hole for a device catching up by `afterSeq` to wait for.
 */
export function MessageLogMixin(streamField: string): Partial<ServiceSchema> {
	return serviceSchema({
		methods: {
			/** Appends of one stream run one at a time on this node: they would only race each other for the same number. */
			appendMessage(this: Svc, ctx: Context, streamId: string, message: Doc & { senderId: string; clientMsgId: string }) {
				const previous = this.appendQueues.get(streamId) ?? Promise.resolve();
				const mine = previous.then(() => this.appendNow(ctx, streamId, message));
				const tail = mine.catch(() => undefined);
				this.appendQueues.set(streamId, tail);
				void tail.then(() => {
					if (this.appendQueues.get(streamId) === tail) this.appendQueues.delete(streamId);
				});
				return mine;
			},

			async appendNow(this: Svc, ctx: Context, streamId: string, message: Doc & { senderId: string; clientMsgId: string }) {
				const earlier = await this.findDuplicate(ctx, streamId, message.senderId, message.clientMsgId);
				if (earlier) return { message: earlier, duplicate: true };
				for (let attempt = 0; attempt < MAX_APPEND_ATTEMPTS; attempt++) {
					const seq = (this.seqHints.get(streamId) ?? (await this.lastSeq(ctx, streamId))) + 1;
					try {
						const stored = await this.createEntity(ctx, { ...message, [streamField]: streamId, seq });
						this.seqHints.delete(streamId);
						if (this.seqHints.size >= SEQ_HINTS) this.seqHints.delete(this.seqHints.keys().next().value as string);
						this.seqHints.set(streamId, seq);
						return { message: stored, duplicate: false };
					} catch (err) {
						if ((err as Errors.MoleculerError).code !== 409) throw err;
						// Either a retry of this very message won (same clientMsgId) or another message took the number.
						const raced = await this.findDuplicate(ctx, streamId, message.senderId, message.clientMsgId);
						if (raced) return { message: raced, duplicate: true };
						this.seqHints.delete(streamId);
						await new Promise(resolve => setTimeout(resolve, Math.random() * Math.min(50, 2 ** attempt)));
					}
				}
				throw new Errors.MoleculerRetryableError("Too many messages at once in this conversation, try again", 503, "BUSY");
			},

			async messagePage(this: Svc, ctx: Context, streamId: string, page: MessagePageParams, query: Doc = {}) {
				const { afterSeq, beforeSeq, limit } = page;
				const seq: Doc = {};
				if (afterSeq !== undefined) seq.$gt = afterSeq;
				if (beforeSeq !== undefined) seq.$lt = beforeSeq;
				// Catching up reads forwards from afterSeq; otherwise the newest (before beforeSeq) come first and are turned round.
				const forwards = afterSeq !== undefined;
				const rows = await this.findEntities(ctx, {
					query: { ...query, [streamField]: streamId, ...(Object.keys(seq).length ? { seq } : {}) },
					sort: [forwards ? "seq" : "-seq"],
					limit: limit + 1,
				});
				const hasMore = rows.length > limit;
				const page_ = rows.slice(0, limit);
				return { rows: forwards ? page_ : page_.reverse(), hasMore };
			},

			async lastSeq(this: Svc, ctx: Context, streamId: string) {
				const [last] = await this.findEntities(ctx, { query: { [streamField]: streamId }, sort: ["-seq"], limit: 1 });
				return last ? Number(last.seq) : 0;
			},

			async findDuplicate(this: Svc, ctx: Context, streamId: string, senderId: string, clientMsgId: string) {
				const [found] = await this.findEntities(ctx, { query: { [streamField]: streamId, senderId, clientMsgId }, limit: 1 });
				return found ?? null;
			},
		},

		created(this: Svc) {
			this.seqHints = new Map();
			this.appendQueues = new Map();
		},
	});
}
