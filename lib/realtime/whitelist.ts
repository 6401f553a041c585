import { Utils } from "moleculer";

/**
 * What a real-time connection (socket.io or TCP) may call: these actions only, and of them only
 * the published ones, each with its declared permission checked as the gateway checks it.
 * Moleculer's own `$node.*` actions and everything internal stay out of reach.
 */
export const CHANNEL_WHITELIST: readonly string[] = [
	"chatmsg.send",
	"chatmsg.messages",
	"chatmsg.conversations",
	"chatmsg.read",
	"chatmsg.recall",
	"groupmsg.*",
	"group.*",
	"appmsg.*",
	"online.list",
	"online.user",
	"security.me",
];

/** Moleculer's own wildcard rule (`*` within one segment, `**` across dots). */
export function whitelisted(action: string, whitelist: readonly string[] = CHANNEL_WHITELIST): boolean {
	return whitelist.some(mask => Utils.match(action, mask));
}
