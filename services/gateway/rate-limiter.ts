import Redis from "ioredis";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { RateLimitSettings } from "../../types/platform";

export interface LimitResult {
	allowed: boolean;
	limit: number;
	remaining: number;
	/** Seconds until the window resets. */
	resetSeconds: number;
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
		if (points <= 0) return null;
		const duration = this.settings.windowSeconds;
		const memory = new RateLimiterMemory({ keyPrefix, points, duration });
		if (!this.redis) return memory;
		return new RateLimiterRedis({ storeClient: this.redis, keyPrefix, points, duration, insuranceLimiter: memory, rejectIfRedisNotReady: true });
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

async function consume(limiter: RateLimiterAbstract | null, key: string): Promise<LimitResult | null> {
	if (!limiter) return null;
	const result = (res: RateLimiterRes, allowed: boolean): LimitResult => ({
		allowed,
		limit: limiter.points,
		remaining: Math.max(0, res.remainingPoints),
		resetSeconds: Math.ceil(res.msBeforeNext / 1000),
	});
	try {
		return result(await limiter.consume(key), true);
	} catch (rejection) {
		if (rejection instanceof RateLimiterRes) return result(rejection, false);
		throw rejection;
	}
}
