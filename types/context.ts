import type { AuthenticatedUser } from "./access";

/** What the gateway (and the real-time channels) put in `ctx.meta` for the services. */
export interface RequestMeta {
	/** The signed-in user, or null/absent for an anonymous call. */
	user?: AuthenticatedUser | null;
	/** The client's IP address, as the gateway determined it. */
	clientIp?: string;
	/** The client's User-Agent, as the gateway received it. */
	userAgent?: string;
	/** Conditional and partial request headers, for actions that answer bytes (downloads). */
	http?: { range?: string; ifNoneMatch?: string };
	/** moleculer-web: the HTTP status of the answer (e.g. 204). */
	$statusCode?: number;
}
