import type { PresenceStore } from "./base.store";
import { MemoryPresenceStore } from "./memory.store";
import { RedisPresenceStore } from "./redis.store";

export * from "./base.store";
export { MemoryPresenceStore } from "./memory.store";
export { RedisPresenceStore } from "./redis.store";

/** Redis when the platform has one (presence shared by every node), memory otherwise. */
export function createPresenceStore(redisUrl: string | null, prefix: string): PresenceStore {
	return redisUrl ? new RedisPresenceStore(redisUrl, prefix) : new MemoryPresenceStore();
}
