/**
 * The Channels middleware's options from the platform settings (`CHANNELS`): @moleculer/channels'
 * in-process "Fake" adapter (embedded), Redis Streams, or NATS JetStream. Topic prefixes are the
 * Moleculer namespace (the adapters' default), so clusters sharing a server stay apart.
 * Consumers set their own retries, in-flight limits and dead-lettering (see `consumers.ts`).
 */
import type { Middleware } from "@moleculer/channels";
import type { ChannelsSettings } from "../../types/platform";

export type ChannelsMiddlewareOptions = Parameters<typeof Middleware>[0];

/** The library's defaults, said out loud: lib/bus relies on `broker.channelAdapter` and `broker.sendToChannel`. */
const NAMES = {
	schemaProperty: "channels",
	sendMethodName: "sendToChannel",
	adapterPropertyName: "channelAdapter",
	channelHandlerTrigger: "emitLocalChannelHandler",
	// Handlers get `(payload, raw)`, not a Context: the bus message carries what they need.
	context: false,
};

function adapterOf(settings: ChannelsSettings): { type: string; options: object } {
	switch (settings.kind) {
		case "memory":
			// Moleculer events inside the broker: no durability, no retries. Embedded mode only.
			return { type: "Fake", options: {} };
		case "redis":
			return { type: "Redis", options: { redis: { url: settings.url } } };
		case "nats":
			return {
				type: "NATS",
				options: {
					nats: {
						url: settings.url,
						// As the transporter: a NATS restart must not take the bus down.
						connectionOptions: { maxReconnectAttempts: -1, reconnectTimeWait: 500 },
					},
				},
			};
	}
}

export function channelsMiddlewareOptions(settings: ChannelsSettings): ChannelsMiddlewareOptions {
	// The adapters' option types are an intersection of every adapter's options, each field required: no literal satisfies it.
	return { ...NAMES, adapter: adapterOf(settings) as ChannelsMiddlewareOptions["adapter"] };
}
