/**
 * `npm run bench:files` (builds first): upload and download throughput of one large file through
 * the gateway (HTTP multipart up, HTTP GET down), on local disk and on S3 (an s3rver process),
 * beside two baselines measured in the same run on the same machine: the same bytes written and
 * read with plain `fs` streams, and sent and fetched with a single PutObject/GetObject to the
 * same S3 server.
 *
 * The source is one file of pseudo-random bytes generated first (so every scenario reads the
 * same bytes from the page cache); each download is hashed and checked against the source.
 *
 * Environment: BENCH_FILE_MB (size in MiB, default 1024).
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { freePort, waitFor } from "../test/support/servers";
import { startS3 } from "../test/support/s3";
import { multipartBody, randomContent } from "../test/support/files";
import { BenchProcess, RssSampler, startReaper, stopReaper, cleanups, runBench } from "./processes";

const ROOT = path.resolve(__dirname, "..");
const MiB = 1 << 20;
const SIZE_MB = Number(process.env.BENCH_FILE_MB ?? 1024);
if (!Number.isFinite(SIZE_MB) || SIZE_MB < 1) throw new Error(`BENCH_FILE_MB must be a number >= 1, got '${process.env.BENCH_FILE_MB}'`);
const SIZE = Math.round(SIZE_MB * MiB);
const ADMIN_PASSWORD = "Bench-admin-1";

interface Row {
	name: string;
	upMBs: number;
	downMBs: number;
	peakRssMb: number | null;
}

/** Seconds `work` takes. */
async function timed(work: () => Promise<void>): Promise<number> {
	const t0 = performance.now();
	await work();
	return (performance.now() - t0) / 1000;
}

/** Reads a stream to its end, answering its SHA-256. */
async function hashOf(stream: AsyncIterable<Uint8Array>): Promise<string> {
	const hash = createHash("sha256");
	for await (const piece of stream) hash.update(piece);
	return hash.digest("hex");
}

const mbs = (seconds: number) => SIZE / MiB / seconds;

/** The embedded platform as its own process, storing chunks where `env` says. */
async function platform(name: string, env: Record<string, string>, dataDir: string): Promise<{ url: string; proc: BenchProcess; token: string }> {
	const port = await freePort();
	const proc = new BenchProcess(name, ["node_modules/moleculer/bin/moleculer-runner.js", "--config", "dist/moleculer.config.js", "dist/services"], {
		PATH: process.env.PATH, HOME: process.env.HOME, NO_COLOR: "1", LOG_LEVEL: "warn", PORT: String(port), HOST: "127.0.0.1", DATA_DIR: dataDir,
		ADMIN_PASSWORD, RATE_LIMIT_PER_IP: "0", RATE_LIMIT_PER_USER: "0", ...env,
	}, ROOT);
	cleanups.push(() => proc.stop());
	const url = `http://127.0.0.1:${port}`;
	await Promise.race([waitFor(async () => (await fetch(`${url}/api/ready`)).status === 200, `${name} ready`, 60_000), proc.failOnExit()]);
	const post = async (p: string, body: unknown, token?: string) => {
		const res = await fetch(url + p, { method: "POST", headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
		const json = (await res.json()) as Record<string, unknown>;
		if (res.status !== 200) throw new Error(`${p}: ${res.status} ${JSON.stringify(json)}`);
		return json;
	};
	const admin = await post("/api/auth/login", { username: "admin", password: ADMIN_PASSWORD });
	await post("/api/companies", { name: "Bench", code: "bench", admin: { username: "bench-admin", password: "Bench-member-1", name: "B" } }, admin.accessToken as string);
	const member = await post("/api/auth/login", { username: "bench-admin", password: "Bench-member-1" });
	// The default quota is 10 GiB and the largest file 5 GiB: room for the bench file.
	return { url, proc, token: member.accessToken as string };
}

async function throughGateway(name: string, source: string, expected: string, env: Record<string, string>, dataDir: string): Promise<Row> {
	const { url, proc, token } = await platform(name, env, dataDir);
	const sampler = new RssSampler({ [name]: proc.pid }).start();
	let id = "";
	const up = await timed(async () => {
		const { body, contentType } = multipartBody([{ name: "bench.bin", content: fs.createReadStream(source, { highWaterMark: MiB }) }]);
		const res = await fetch(`${url}/api/files`, { method: "POST", headers: { "Content-Type": contentType, Authorization: `Bearer ${token}` }, body: body as unknown as RequestInit["body"], duplex: "half" } as RequestInit);
		const json = (await res.json()) as { id: string; sha256: string }[];
		if (res.status !== 200) throw new Error(`upload: ${res.status} ${JSON.stringify(json)}`);
		if (json[0].sha256 !== expected) throw new Error("upload: the stored hash differs from the source's");
		id = json[0].id;
	});
	const down = await timed(async () => {
		const res = await fetch(`${url}/api/files/${id}`, { headers: { Authorization: `Bearer ${token}` } });
		if (res.status !== 200) throw new Error(`download: ${res.status}`);
		if ((await hashOf(res.body as unknown as AsyncIterable<Uint8Array>)) !== expected) throw new Error("download: bytes differ from the source");
	});
	const rss = sampler.stop();
	await proc.stop();
	return { name, upMBs: mbs(up), downMBs: mbs(down), peakRssMb: rss[name] ?? null };
}

async function main() {
	console.log(`cnbicloud files bench: node ${process.version}, ${os.cpus().length} CPUs, one ${SIZE_MB} MiB file\n`);
	if (!fs.existsSync(path.join(ROOT, "dist/moleculer.config.js"))) throw new Error("dist/ is missing: run `npm run bench:files`, which builds first");
	const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-bench-files-"));
	startReaper(tmp);
	cleanups.push(() => stopReaper(), () => fs.rmSync(tmp, { recursive: true, force: true }));

	const source = path.join(tmp, "source.bin");
	process.stdout.write("Generating the source file… ");
	await pipeline(randomContent(SIZE, "bench-files"), fs.createWriteStream(source));
	const expected = await hashOf(fs.createReadStream(source));
	console.log("done.");

	const rows: Row[] = [];

	// Baseline 1: plain fs streams.
	const copy = path.join(tmp, "copy.bin");
	const fsUp = await timed(() => pipeline(fs.createReadStream(source, { highWaterMark: MiB }), fs.createWriteStream(copy)));
	const fsDown = await timed(async () => {
		if ((await hashOf(fs.createReadStream(copy, { highWaterMark: MiB }))) !== expected) throw new Error("fs copy differs");
	});
	fs.rmSync(copy);
	rows.push({ name: "fs streams (baseline)", upMBs: mbs(fsUp), downMBs: mbs(fsDown), peakRssMb: null });

	// Baseline 2: one PutObject / GetObject to the same S3 server.
	const s3 = await startS3();
	cleanups.push(() => s3.stop());
	// As the platform's S3 storage does: no aws-chunked checksum trailers, which S3-compatible servers may not understand.
	const client = new S3Client({
		endpoint: s3.endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
		requestChecksumCalculation: "WHEN_REQUIRED", responseChecksumValidation: "WHEN_REQUIRED",
	});
	cleanups.push(() => client.destroy());
	const s3Up = await timed(async () => {
		await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: "bench/source.bin", Body: fs.createReadStream(source, { highWaterMark: MiB }), ContentLength: SIZE }));
	});
	const s3Down = await timed(async () => {
		const got = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: "bench/source.bin" }));
		if ((await hashOf(got.Body as AsyncIterable<Uint8Array>)) !== expected) throw new Error("S3 object differs");
	});
	rows.push({ name: "S3 PutObject/GetObject (baseline)", upMBs: mbs(s3Up), downMBs: mbs(s3Down), peakRssMb: null });

	process.stdout.write("Gateway, local disk… ");
	rows.push(await throughGateway("gateway → files, local disk", source, expected, {}, path.join(tmp, "local")));
	console.log("done.");
	process.stdout.write("Gateway, S3… ");
	rows.push(await throughGateway("gateway → files, S3", source, expected, s3.env, path.join(tmp, "s3")));
	console.log("done.\n");

	const table = [["scenario", "upload MB/s", "download MB/s", "peak RSS MB"], ...rows.map(r => [r.name, r.upMBs.toFixed(0), r.downMBs.toFixed(0), r.peakRssMb == null ? "-" : r.peakRssMb.toFixed(0)])];
	const widths = table[0].map((_, c) => Math.max(...table.map(l => l[c].length)));
	table.forEach((line, i) => {
		console.log(line.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  "));
		if (i === 0) console.log(widths.map(w => "-".repeat(w)).join("  "));
	});
	const [fsRow, s3Row, localRow, s3GwRow] = rows;
	const ratio = (a: number, b: number) => (a / b).toFixed(2);
	console.log(`\nLocal disk through the gateway: upload ${ratio(localRow.upMBs, fsRow.upMBs)} × and download ${ratio(localRow.downMBs, fsRow.downMBs)} × plain fs streams.`);
	console.log(`S3 through the gateway: upload ${ratio(s3GwRow.upMBs, s3Row.upMBs)} × and download ${ratio(s3GwRow.downMBs, s3Row.downMBs)} × a single PutObject/GetObject.`);
	console.log("The load generator, the servers and s3rver share the machine's CPUs: compare rows of one run.");
}

runBench(main);
