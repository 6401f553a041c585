/** Contracts of the messaging services (chat, groups, app messages). */
import type { MessageContent, MessageType } from "../lib/messaging/content";

// --- 1:1 chat (chatmsg, chatconv)

/** A 1:1 message as clients see it (routes, `chat.message` pushes). */
export interface ChatMessage {
	id: string;
	conversationId: string;
	seq: number;
	from: string;
	to: string;
	type: MessageType;
	/** null once recalled. */
	content: MessageContent | null;
	clientMsgId: string;
	sentAt: string;
	recalledAt: string | null;
}

/** One participant's position in a conversation (`chatconv`). */
export interface ConversationState {
	id: string;
	companyId: string;
	conversationId: string;
	userId: string;
	peerId: string;
	readSeq: number;
	lastSeq: number;
	lastMessageAt: string;
}

/** `chat.receipt`: `userId` has read the conversation up to `seq`. */
export interface ChatReceipt {
	conversationId: string;
	userId: string;
	seq: number;
	readAt: string;
}

// --- App messages (appmsg)

/** Who an app message goes to: the union of these, deduplicated; `company: true` is everyone of the company. */
export interface AppMessageTargets {
	userIds?: string[];
	deptIds?: string[];
	roleIds?: string[];
	company?: boolean;
}

/** What `POST /api/app-messages` and the internal `appmsg.send` take. */
export interface AppMessageInput {
	/** Short code of the sending application (`bi`, `machine`, …). */
	app: string;
	title: string;
	content: string;
	to: AppMessageTargets;
}

/** Who sent an app message: a user, or null for the platform itself. */
export interface AppMessageSender {
	id: string;
	username: string;
	name: string | null;
}

/** One message in a user's inbox (list rows and `app.message` pushes); `id` is the message's, the same for every recipient. */
export interface AppMessage {
	id: string;
	app: string;
	title: string;
	content: string;
	sentAt: string;
	/** null while unread. */
	readAt: string | null;
	sender: AppMessageSender | null;
}

/** The answer to a send. */
export interface AppMessageSent {
	id: string;
	recipients: number;
}

/** `appmsg.message.created`'s entity: the message once, with its company and recipient count (not the recipients). */
export interface AppMessageCreated extends Omit<AppMessage, "readAt"> {
	companyId: string;
	recipients: number;
}

// --- Groups (group, groupmember, groupmsg)

export type GroupRole = "owner" | "admin" | "member";

export interface Group {
	id: string;
	companyId: string;
	name: string;
	ownerId: string;
	/** The sequence number of the group's newest message (0: none yet). */
	lastSeq: number;
	lastMessageAt: string | null;
	createdAt: string;
	updatedAt: string;
}

export interface GroupMember {
	id: string;
	companyId: string;
	groupId: string;
	userId: string;
	role: GroupRole;
	readSeq: number;
	readAt: string | null;
	joinedAt: string;
}

/** A group message as clients see it (routes, `group.message` pushes). */
export interface GroupMessage {
	id: string;
	groupId: string;
	seq: number;
	from: string;
	type: import("../lib/messaging/content").MessageType;
	content: import("../lib/messaging/content").MessageContent | null;
	/** Mentioned member ids; `all` when an administrator mentioned everyone. */
	mentions: string[];
	mentionAll: boolean;
	clientMsgId: string;
	sentAt: string;
	recalledAt: string | null;
	recalledBy: string | null;
}

/** `group.member`: the group's membership or the group itself changed. */
export interface GroupMemberEvent {
	groupId: string;
	change: "created" | "added" | "removed" | "left" | "role" | "renamed" | "deleted";
	userIds: string[];
	role?: GroupRole;
	name?: string;
	by: string;
}
