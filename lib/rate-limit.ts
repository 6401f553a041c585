import Redis from "ioredis";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { RateLimitSettings } from "../types/platform";

export interface LimitResult {
	allowed: boolean;
	limit: number;
	remaining: number;
	/** Seconds until the window resets. */
	resetSeconds: number;
	/** The same in milliseconds. */
	resetMs: number;
}

/**
 * A limiter of `points` per `durationSeconds` and key: in Redis when there is one (shared by every
 * node, atomic increments), falling back to an in-memory limiter of the same size while Redis does
 * not answer; in memory otherwise.
 */
export function createLimiter(redis: Redis | null, keyPrefix: string, points: number, durationSeconds: number): RateLimiterAbstract {
	const memory = new RateLimiterMemory({ keyPrefix, points, duration: durationSeconds });
	if (!redis) return memory;
	return new RateLimiterRedis({ storeClient: redis, keyPrefix, points, duration: durationSeconds, insuranceLimiter: memory, rejectIfRedisNotReady: true });
}

/**
 * Request budgets per client IP and per user, with rate-limiter-flexible.
 * With Redis the counters are shared by every gateway node (atomic increments in Redis), so the
 * limit holds however many gateways there are; if Redis stops answering, each node falls back to
 * an in-memory limiter of the same size until it is back. Without Redis the counters are per node.
 */
export class GatewayRateLimiter {
	private readonly redis: Redis | null;
	private readonly byIp: RateLimiterAbstract | null;
	private readonly byUser: RateLimiterAbstract | null;

	constructor(private readonly settings: RateLimitSettings, redisUrl: string | null, keyPrefix: string) {
		this.redis = redisUrl ? new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 1 }) : null;
		this.byIp = this.create(`${keyPrefix}:ip`, settings.perIp);
		this.byUser = this.create(`${keyPrefix}:user`, settings.perUser);
	}

	private create(keyPrefix: string, points: number): RateLimiterAbstract | null {
		return points > 0 ? createLimiter(this.redis, keyPrefix, points, this.settings.windowSeconds) : null;
	}

	consumeIp(ip: string): Promise<LimitResult | null> {
		return consume(this.byIp, ip);
	}

	consumeUser(userId: string): Promise<LimitResult | null> {
		return consume(this.byUser, userId);
	}

	async close(): Promise<void> {
		this.redis?.disconnect();
	}
}

/** Takes one point of `key`'s budget; null when there is no limit. */
export async function consume(limiter: RateLimiterAbstract | null, key: string): Promise<LimitResult | null> {
	if (!limiter) return null;
	const result = (res: RateLimiterRes, allowed: boolean): LimitResult => ({
		allowed,
		limit: limiter.points,
		remaining: Math.max(0, res.remainingPoints),
		resetSeconds: Math.ceil(res.msBeforeNext / 1000),
		resetMs: res.msBeforeNext,
	});
	try {
		return result(await limiter.consume(key), true);
	} catch (rejection) {
		if (rejection instanceof RateLimiterRes) return result(rejection, false);
		throw rejection;
	}
}
