import { MetricReporters, type MetricRegistry } from "moleculer";

type PrometheusReporter = InstanceType<typeof MetricReporters.Prometheus> & {
	generatePrometheusResponse(): string;
	defaultLabels: unknown;
	opts: { defaultLabels: unknown };
};
const Prometheus = MetricReporters.Prometheus as unknown as new (opts?: object) => PrometheusReporter;
const BaseInit = MetricReporters.Base.prototype.init;

/**
 * Moleculer's Prometheus reporter without its own HTTP server: the gateway serves the text
 * at `GET /metrics`, so a node opens no extra port.
 */
export class PrometheusTextReporter extends Prometheus {
	override init(registry: MetricRegistry): void {
		BaseInit.call(this, registry);
		const labels = this.opts.defaultLabels;
		this.defaultLabels = typeof labels === "function" ? labels.call(this, registry) : labels;
	}

	stop(): Promise<void> {
		return Promise.resolve();
	}

	/** The node's metrics in the Prometheus text exposition format. */
	render(): string {
		return this.generatePrometheusResponse();
	}
}
