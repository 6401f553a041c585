/**
 * Pushes to connected clients, from any service on any node.
 *
 * Every real-time connection (socket.io or TCP) joins rooms: its user's, its company's and its
 * groups'. A service names rooms and an event; the two channel services deliver it:
 *   - `websocket` gets the event once (balanced) and emits it to the rooms through socket.io,
 *     whose Redis adapter reaches the sockets of every gateway node;
 *   - `socket` (TCP) has no adapter: every node gets the event and writes to its own connections.
 * A connection in several of the named rooms gets the event once.
 */
import type { Context } from "moleculer";

export const PUSH_EVENT = "realtime.push";
export const ROOMS_EVENT = "realtime.rooms";

/** Events clients receive (API.md, Messaging). */
export type PushEventName =
	| "chat.message"
	| "chat.receipt"
	| "chat.recall"
	| "group.message"
	| "group.receipt"
	| "group.recall"
	| "group.member"
	| "app.message"
	| "presence"
	| "session.revoked";

export const room = {
	user: (userId: string) => `user:${userId}`,
	company: (companyId: string) => `company:${companyId}`,
	group: (groupId: string) => `group:${groupId}`,
};

export interface Push {
	rooms: string[];
	event: PushEventName;
	data: unknown;
}

/** Users' connections join or leave rooms (group membership changes). */
export interface RoomChange {
	userIds: string[];
	join?: string[];
	leave?: string[];
}

type Emitter = Pick<Context, "emit" | "broadcast">;

/** Sends `event` with `data` to every connection in `rooms`, on every gateway node. */
export async function push(ctx: Emitter, message: Push): Promise<void> {
	if (message.rooms.length === 0) return;
	await Promise.all([ctx.emit(PUSH_EVENT, message, ["websocket"]), ctx.broadcast(PUSH_EVENT, message, ["socket"])]);
}

/** Every connection of `userIds` joins and/or leaves rooms, on every gateway node. */
export async function changeRooms(ctx: Emitter, change: RoomChange): Promise<void> {
	if (change.userIds.length === 0) return;
	await Promise.all([ctx.emit(ROOMS_EVENT, change, ["websocket"]), ctx.broadcast(ROOMS_EVENT, change, ["socket"])]);
}
