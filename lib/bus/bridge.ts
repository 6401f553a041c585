/**
 * Domain events bridged onto the bus: each goes to its company's topic named after the event
 * (`user.user.created`), so that a company can have its own changes pushed to its systems.
 */
import { isSecretKey } from "../audit/redact";
import type { EntityEvent } from "../../types/org";

export const BRIDGED_EVENTS = [
	"user.user.created",
	"user.user.updated",
	"user.user.removed",
	"dept.dept.created",
	"dept.dept.updated",
	"dept.dept.removed",
	"chatmsg.message.created",
	"groupmsg.message.created",
	// Groups are the `group` service's records (services/messaging/group.service.ts).
	"group.group.created",
	"group.group.updated",
	"group.group.removed",
	"appmsg.message.created",
] as const;

/**
 * Hashes are secrets too here: the audit log keeps a key like `contentHash` visible, a message
 * leaving the platform does not need it.
 */
const HASH_KEY = /hash|salt/i;

/**
 * The entity without any secret: DbMixin already strips an entity's hidden fields from its
 * events (a user's password hash), and this drops, at any depth, every key that names a
 * password, secret, token, key, hash or salt, whatever a service put in its event.
 */
export function withoutSecrets(value: unknown, depth = 0): unknown {
	if (value === null || typeof value !== "object") return value;
	if (depth > 20) return null;
	if (value instanceof Date) return value.toISOString();
	if (Array.isArray(value)) return value.map(item => withoutSecrets(item, depth + 1));
	return Object.fromEntries(
		Object.entries(value)
			.filter(([key]) => !isSecretKey(key) && !HASH_KEY.test(key))
			.map(([key, item]) => [key, withoutSecrets(item, depth + 1)]),
	);
}

/** The company and payload of a bridged event, or null when it belongs to no company (the platform administrator). */
export function bridgedMessage(event: string, params: EntityEvent): { companyId: string; payload: Record<string, unknown> } | null {
	const entity = params?.entity;
	if (!entity || typeof entity !== "object") return null;
	const companyId = typeof entity.companyId === "string" ? entity.companyId : null;
	if (!companyId) return null;
	const user = params.user ? { id: params.user.id, username: params.user.username } : null;
	return { companyId, payload: { event, entity: withoutSecrets(entity) as Record<string, unknown>, user } };
}
