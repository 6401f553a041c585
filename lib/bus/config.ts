/** The bus's run-time settings (config namespace `msgbus`), with defaults and bounds. */
import type { BusConfig } from "../../types/bus";
import { deliveryBudgetMs } from "./delivery";
import type { ConsumerTimings } from "./consumers";

export const BUS_CONFIG_NAMESPACE = "msgbus";

/** 6 attempts over about 31 s of back-off (1, 2, 4, 8, 16 s), 10 s each at most. */
export const BUS_DEFAULTS: BusConfig = {
	attempts: 6,
	backoffInitialMs: 1000,
	backoffFactor: 2,
	backoffMaxMs: 60_000,
	timeoutMs: 10_000,
	maxInFlight: 4,
	redeliverMarginMs: 30_000,
	claimIntervalMs: 1000,
	maxPayloadBytes: 256 * 1024,
	maxSubscriptionsPerCompany: 100,
	streamMaxLength: 10_000,
	reconcileIntervalMs: 60_000,
};

const BOUNDS: Record<keyof BusConfig, [number, number]> = {
	attempts: [1, 20],
	backoffInitialMs: [0, 3_600_000],
	backoffFactor: [1, 10],
	backoffMaxMs: [0, 3_600_000],
	timeoutMs: [100, 120_000],
	maxInFlight: [1, 100],
	redeliverMarginMs: [0, 3_600_000],
	claimIntervalMs: [10, 60_000],
	maxPayloadBytes: [1024, 900 * 1024],
	maxSubscriptionsPerCompany: [0, 10_000],
	streamMaxLength: [100, 10_000_000],
	reconcileIntervalMs: [1000, 3_600_000],
};

/** The values of the config centre, each a number within its bounds (the default where it is not a number). */
export function busConfig(values: Record<string, unknown>): BusConfig {
	const out = { ...BUS_DEFAULTS };
	for (const key of Object.keys(BOUNDS) as (keyof BusConfig)[]) {
		const value = values[key];
		if (typeof value !== "number" || !Number.isFinite(value)) continue;
		const [min, max] = BOUNDS[key];
		out[key] = Math.min(max, Math.max(min, value));
	}
	return out;
}

/**
 * A message is handed to another node when it stayed unacknowledged longer than a whole
 * delivery can take plus the margin: sooner would deliver it twice while a live node still retries.
 */
export function consumerTimings(config: BusConfig): ConsumerTimings {
	return {
		maxInFlight: config.maxInFlight,
		redeliverAfterMs: deliveryBudgetMs(config) + config.redeliverMarginMs,
		claimIntervalMs: config.claimIntervalMs,
	};
}
