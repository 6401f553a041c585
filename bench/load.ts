/**
 * Load generators. Both run a fixed concurrency for a fixed time and stop by themselves, and both
 * time every successful request with the high-resolution clock the same way, so their latency
 * figures compare (autocannon's own histogram has 1 ms resolution, too coarse here).
 */
import autocannon from "autocannon";

export interface LoadResult {
	/** Successful requests per second. */
	rps: number;
	p50: number;
	p99: number;
	/** Failed requests: connection errors, timeouts, non-2xx answers, rejected calls. */
	errors: number;
	firstError?: string;
}

/** Latencies in ms; percentiles by nearest rank. */
class Latencies {
	private readonly samples: number[] = [];

	add(ms: number): void {
		this.samples.push(ms);
	}

	get count(): number {
		return this.samples.length;
	}

	percentiles(): { p50: number; p99: number } {
		const sorted = Float64Array.from(this.samples).sort();
		const at = (q: number) => (sorted.length ? sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] : NaN);
		return { p50: at(0.5), p99: at(0.99) };
	}
}

export interface HttpRequest {
	method?: "GET" | "POST";
	headers?: Record<string, string>;
	body?: string;
}

/** Requests `url` (GET unless told) over `connections` keep-alive connections for `seconds` (autocannon, in this process). */
export function httpLoad(url: string, connections: number, seconds: number, request: HttpRequest = {}): Promise<LoadResult> {
	const latencies = new Latencies();
	let firstError: string | undefined;
	return new Promise((resolve, reject) => {
		const instance = autocannon({ url, connections, duration: seconds, timeout: 10, ...request }, (err, result) => {
			if (err) return reject(err);
			const errors = result.errors + result.non2xx;
			if (!firstError && result.non2xx) firstError = `non-2xx answers: ${JSON.stringify(result.statusCodeStats ?? {})}`;
			resolve({ rps: latencies.count / result.duration, ...latencies.percentiles(), errors, firstError });
		});
		instance.on("response", (_client, statusCode, _bytes, responseTime) => {
			if (statusCode >= 200 && statusCode < 300) latencies.add(responseTime);
		});
		instance.on("reqError", (err: unknown) => (firstError ??= String(err)));
	});
}

/** Runs `call` from `concurrency` loops in parallel until `seconds` have passed. */
export async function callLoad(call: () => Promise<unknown>, concurrency: number, seconds: number): Promise<LoadResult> {
	const latencies = new Latencies();
	let errors = 0;
	let firstError: string | undefined;
	const start = performance.now();
	const deadline = start + seconds * 1000;

	async function loop(): Promise<void> {
		while (performance.now() < deadline) {
			const t0 = performance.now();
			try {
				await call();
				latencies.add(performance.now() - t0);
			} catch (err) {
				errors++;
				firstError ??= String(err);
				// A call that fails at once would otherwise spin on microtasks and starve timers and I/O.
				await new Promise(resolve => setImmediate(resolve));
			}
		}
	}

	await Promise.all(Array.from({ length: concurrency }, loop));
	const elapsed = (performance.now() - start) / 1000;
	return { rps: latencies.count / elapsed, ...latencies.percentiles(), errors, firstError };
}
