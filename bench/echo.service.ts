/**
 * Bench-only service: the smallest published action there can be, so that the figures measure the
 * path to it (HTTP, the gateway's hooks, NATS, serialisation) and not any work.
 *
 * It must stay self-contained (type imports only): the bench transpiles this one file into a temp
 * folder and runs it from there with moleculer-runner and dist/moleculer.config.js, the way a
 * production node runs from dist/, without tsx loaded in the measured process.
 */
import type { ServiceSchema } from "moleculer";

const EchoService: ServiceSchema = {
	name: "echo",
	settings: { rest: "/bench", app: "bench", permissions: { "bench:read": { description: "Call the bench's guarded ping" } } },
	actions: {
		ping: {
			rest: "GET /ping",
			auth: false,
			handler: () => ({ pong: true, at: Date.now() }),
		},
		/** The same answer behind a permission: the difference to `ping` is the token and permission check. */
		guardedPing: {
			rest: "GET /guarded-ping",
			permission: "bench:read",
			handler: () => ({ pong: true, at: Date.now() }),
		},
	},
};

export default EchoService;
