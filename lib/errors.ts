import { Errors } from "moleculer";

/** What the caller did wrong, with the HTTP status and type the gateway answers it with. */
export function clientError(message: string, code: number, type: string, data?: unknown): Errors.MoleculerClientError {
	return new Errors.MoleculerClientError(message, code, type, data);
}
