import { Errors } from "moleculer";

/** What the caller did wrong, with the HTTP status and type the gateway answers it with. */
export function clientError(message: string, code: number, type: string, data?: unknown): Errors.MoleculerClientError {
	return new Errors.MoleculerClientError(message, code, type, data);
}

/** Messages a client may see for server-side failures; the details go to the log only. */
const SERVER_ERROR_MESSAGES: Record<number, string> = {
	502: "Bad gateway",
	503: "Service unavailable, try again shortly",
	504: "The service did not answer in time",
};
/** Server-side error types whose own message is meant for the client. */
const PUBLIC_SERVER_ERRORS = new Set(["NOT_READY", "SERVICE_NOT_AVAILABLE", "LICENSE_ISSUING_DISABLED", "BUSY"]);

/**
 * Moleculer answers a call to a service with no live node with a 404 naming the action: for the
 * client that is "try again shortly" (503), and the internal action's name is none of its business.
 */
export function withoutMissingService<E extends { code?: unknown; type?: unknown }>(err: E): E | Errors.MoleculerError {
	if (err.code === 404 && (err.type === "SERVICE_NOT_FOUND" || err.type === "SERVICE_NOT_AVAILABLE"))
		return new Errors.MoleculerError("Service unavailable, try again shortly", 503, "SERVER_ERROR");
	return err;
}

export interface PublicError {
	name: string;
	message: string;
	code: number;
	type?: string;
	data?: unknown;
}

/**
 * The error body of ARCHITECTURE.md for any channel (HTTP, socket.io, TCP): what the caller did
 * wrong as it is; a server-side failure says only what happened, never how.
 */
export function publicError(err: { name?: string; message?: string; code?: unknown; type?: unknown; data?: unknown }, requestId?: string | null): PublicError {
	err = withoutMissingService(err);
	const code = typeof err.code === "number" ? err.code : 500;
	if ((code >= 400 && code < 500) || PUBLIC_SERVER_ERRORS.has(String(err.type)))
		return { name: err.name ?? "Error", message: err.message ?? "", code, type: err.type == null ? undefined : String(err.type), data: err.data };
	return {
		name: "ServerError",
		message: SERVER_ERROR_MESSAGES[code] ?? "Internal server error",
		code: code >= 500 && code < 600 ? code : 500,
		type: "SERVER_ERROR",
		data: { requestId: requestId ?? null },
	};
}
