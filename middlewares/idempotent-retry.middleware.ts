import type { ServiceSchema } from "moleculer";

/**
 * Turns Moleculer's retry policy on for actions that declare `idempotent: true`, and only for them.
 *
 * The broker's `retryPolicy.enabled` stays false, so a call that changes state is never sent
 * twice by accident. An idempotent action gets `retryPolicy: { enabled: true }` in its schema;
 * the schema travels to every node in the service INFO, so the retry runs on the calling node
 * (the gateway, usually) and the next attempt is balanced to another endpoint.
 */
const IdempotentRetryMiddleware = {
	name: "IdempotentRetry",

	serviceCreating(_service: unknown, schema: ServiceSchema) {
		for (const action of Object.values(schema.actions ?? {})) {
			if (action && typeof action === "object" && action.idempotent === true)
				action.retryPolicy = { ...action.retryPolicy, enabled: true };
		}
	},
};

export default IdempotentRetryMiddleware;
