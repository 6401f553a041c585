import type Redis from "ioredis";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";

export interface LockoutSettings {
	/** Failures within the window that lock the key. */
	maxFailures: number;
	windowSeconds: number;
	/** How long a locked key stays locked. */
	lockSeconds: number;
}

/**
 * Login lockout with rate-limiter-flexible: failed logins are counted per key (a username, a
 * client IP); at `maxFailures` within `windowSeconds` the key is locked for `lockSeconds`, and
 * a locked key is refused whatever the password. With Redis the counters are shared by every
 * node (a brute force spread over the `security` replicas is still one brute force); if Redis
 * stops answering, a node counts in memory until it is back.
 */
export class LoginLockout {
	private readonly limiter: RateLimiterAbstract;

	constructor(private readonly settings: LockoutSettings, redis: Redis | null, keyPrefix: string) {
		const options = { keyPrefix, points: settings.maxFailures, duration: settings.windowSeconds };
		const memory = new RateLimiterMemory(options);
		this.limiter = redis ? new RateLimiterRedis({ ...options, storeClient: redis, insuranceLimiter: memory, rejectIfRedisNotReady: true }) : memory;
	}

	/** Seconds until the last of `keys` unlocks; 0 when none is locked. */
	async lockedFor(keys: string[]): Promise<number> {
		const results = await Promise.all(keys.map(key => this.limiter.get(key)));
		return Math.max(0, ...results.map(res => (res && res.consumedPoints > this.settings.maxFailures ? seconds(res) : 0)));
	}

	/** Counts a failure against each key; answers the seconds the worst of them is now locked for (0: none). */
	async recordFailure(keys: string[]): Promise<number> {
		const locks = await Promise.all(keys.map(key => this.fail(key)));
		return Math.max(0, ...locks);
	}

	/** Forgets a key's failures (a successful login clears its username). */
	async clear(key: string): Promise<void> {
		await this.limiter.delete(key);
	}

	private async fail(key: string): Promise<number> {
		let consumed: number;
		try {
			consumed = (await this.limiter.consume(key)).consumedPoints;
		} catch (rejection) {
			// Past the limit already (a race with other failures): it is locked, or about to be below.
			if (!(rejection instanceof RateLimiterRes)) throw rejection;
			consumed = rejection.consumedPoints;
		}
		if (consumed < this.settings.maxFailures) return 0;
		// The lock lasts `lockSeconds` from the failure that reached the limit, not to the end of the window.
		const res = await this.limiter.block(key, this.settings.lockSeconds);
		return seconds(res);
	}
}

function seconds(res: RateLimiterRes): number {
	return Math.max(1, Math.ceil(res.msBeforeNext / 1000));
}
