import type { SessionStore } from "./base.store";
import { MemorySessionStore } from "./memory.store";
import { RedisSessionStore } from "./redis.store";

export * from "./base.store";
export { MemorySessionStore } from "./memory.store";
export { RedisSessionStore } from "./redis.store";

/** Redis when the platform has one (sessions shared by every node), memory otherwise. */
export function createSessionStore(redisUrl: string | null, prefix: string): SessionStore {
	return redisUrl ? new RedisSessionStore(redisUrl, prefix) : new MemorySessionStore();
}
