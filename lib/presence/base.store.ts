/**
 * Presence: the live real-time connections (socket.io, TCP) of each session, and when each user
 * was last seen. Two stores with one contract: memory (embedded) and Redis (cluster), so that
 * every node answers "who is online" the same way whichever gateway holds a connection.
 */

export type Channel = "websocket" | "tcp";

export interface Connection {
	connectionId: string;
	sessionId: string;
	/** The session's user, so that a disconnect can say when the user was last seen. */
	userId: string;
	channel: Channel;
	/** The node holding the connection: its connections go when it leaves the cluster. */
	nodeID: string;
	/** Epoch milliseconds. */
	since: number;
}

/**
 * A connection is forgotten this long after it was announced unless announced again: a safety
 * net for connections whose node died without saying so.
 */
export const CONNECTION_TTL_SECONDS = 24 * 3600;
/** How long a user's last-seen time is kept. */
export const LAST_SEEN_TTL_SECONDS = 90 * 24 * 3600;

export abstract class PresenceStore {
	abstract connect(connection: Connection): Promise<void>;

	/** Forgets a connection; answers it, or null when it was not known. */
	abstract disconnect(connectionId: string): Promise<Connection | null>;

	/** The live connections of each of `sessionIds` (sessions without any are absent). */
	abstract connections(sessionIds: string[]): Promise<Map<string, Connection[]>>;

	/** Forgets every connection of the sessions (they were revoked); answers how many went. */
	abstract dropSessions(sessionIds: string[]): Promise<number>;

	/** Forgets every connection held by a node (it left the cluster); answers how many went. */
	abstract dropNode(nodeID: string): Promise<number>;

	abstract markSeen(userId: string, at: number): Promise<void>;

	/** Last-seen times (epoch ms) of the users that have one. */
	abstract lastSeen(userIds: string[]): Promise<Map<string, number>>;

	abstract close(): Promise<void>;
}
