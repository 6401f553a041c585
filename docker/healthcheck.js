// Container health check (the image's HEALTHCHECK). Exit 0 = healthy, 1 = unhealthy.
//
// - The container must run a moleculer-runner process (found in /proc, so it works whether
//   node is PID 1 or runs under `--init`).
// - If that process runs the gateway group (its service paths include dist/services/gateway,
//   or dist/services = every group), GET /api/health must answer 200.
// - A node without the gateway group has no HTTP port: a live process is all there is to check.
//   Cluster-level health of such nodes is the registry service's job, not Docker's.
//
// HEALTHCHECK_URL overrides the URL probed on gateway nodes.
"use strict";

const fs = require("node:fs");

const TIMEOUT_MS = 4000; // below the HEALTHCHECK --timeout of 5 s

/** The argument list of the moleculer-runner process of this container, or null. */
function runnerArgs() {
	for (const entry of fs.readdirSync("/proc")) {
		if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
		let args;
		try {
			args = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
		} catch {
			continue; // the process ended while we looked
		}
		const at = args.findIndex(arg => arg.endsWith("moleculer-runner.js"));
		if (at >= 0) return args.slice(at + 1);
	}
	return null;
}

function runsGateway(args) {
	return args
		.map(arg => arg.replace(/\/+$/, ""))
		.some(arg => /(^|\/)dist\/services(\/gateway)?$/.test(arg));
}

function healthUrl() {
	if (process.env.HEALTHCHECK_URL) return process.env.HEALTHCHECK_URL;
	const bind = process.env.HOST;
	const host = !bind || bind === "0.0.0.0" || bind === "::" ? "127.0.0.1" : bind.includes(":") ? `[${bind}]` : bind;
	return `http://${host}:${process.env.PORT || 3000}/api/health`;
}

async function main() {
	const args = runnerArgs();
	if (!args) {
		console.error("unhealthy: no moleculer-runner process");
		return 1;
	}
	if (!runsGateway(args)) return 0;

	const url = healthUrl();
	try {
		const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
		if (res.ok) return 0;
		console.error(`unhealthy: ${url} answered ${res.status}`);
	} catch (err) {
		console.error(`unhealthy: ${url}: ${err.message}`);
	}
	return 1;
}

main().then(code => process.exit(code), err => {
	console.error(`unhealthy: ${err.message}`);
	process.exit(1);
});
