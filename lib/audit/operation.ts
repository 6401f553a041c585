/**
 * What the audit middleware needs to decide about an action and to describe a call.
 */

/** Services that call actions on behalf of clients: only their calls are operations of a user. */
export const EDGE_CALLERS = new Set(["gateway", "websocket", "socket"]);

const READ_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/**
 * True when an action's `rest` publishes it for a method that may change something.
 * `rest` is "POST /x", "/x" (any method), `{ method, path }`, `true` (any method), or an array of those.
 */
export function isMutatingRest(rest: unknown): boolean {
	if (Array.isArray(rest)) return rest.some(isMutatingRest);
	if (rest === true) return true;
	if (typeof rest === "string") {
		const [first, second] = rest.trim().split(/\s+/);
		return second === undefined ? true : !READ_METHODS.has(first.toUpperCase());
	}
	if (rest && typeof rest === "object") {
		const method = (rest as { method?: unknown }).method;
		return typeof method !== "string" || !READ_METHODS.has(method.toUpperCase());
	}
	return false;
}

/** What an action definition says about auditing. */
export function isAudited(action: { rest?: unknown; audit?: unknown; visibility?: unknown }): boolean {
	return action.audit !== false && isMutatingRest(action.rest) && (action.visibility === undefined || action.visibility === "published");
}

/** Messages of server faults may name internals (SQL, paths): the log keeps only what a client would see. */
const SERVER_ERROR_MESSAGE = "Internal server error";

export function errorSummary(err: unknown): { code: number; type: string; message: string } {
	const e = (err ?? {}) as { code?: unknown; type?: unknown; name?: unknown; message?: unknown };
	const code = typeof e.code === "number" && e.code >= 400 && e.code < 600 ? e.code : 500;
	const type = typeof e.type === "string" && e.type ? e.type : typeof e.name === "string" && e.name ? e.name : "ERROR";
	const message = code < 500 && typeof e.message === "string" ? e.message : SERVER_ERROR_MESSAGE;
	return { code, type, message };
}

/** The record an operation was about: the `id` param, else the result's `id`. */
export function targetOf(params: unknown, result: unknown): string | null {
	const fromParams = (params as { id?: unknown } | null)?.id;
	if (typeof fromParams === "string" || typeof fromParams === "number") return String(fromParams);
	const fromResult = (result as { id?: unknown } | null)?.id;
	if (typeof fromResult === "string" || typeof fromResult === "number") return String(fromResult);
	return null;
}
