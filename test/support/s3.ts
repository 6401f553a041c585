/**
 * A real S3 server for tests: s3rver (S3's REST API over a folder) in its own process, on loopback
 * on a free port, with a fresh folder and its default credentials, the bucket already made.
 * `env` is what moleculer.config.ts reads to put file chunks there.
 */
import { S3Client, ListBucketsCommand } from "@aws-sdk/client-s3";
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { canConnect, freePort, waitFor } from "./servers";

export interface S3Server {
	endpoint: string;
	bucket: string;
	region: string;
	accessKeyId: string;
	secretAccessKey: string;
	/** S3_ENDPOINT, S3_BUCKET, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY. */
	env: Record<string, string>;
	/** SIGTERM, SIGKILL when it does not go, then its folder removed. */
	stop(): Promise<void>;
}

const CLI = path.join(path.dirname(require.resolve("s3rver/package.json")), "bin", "s3rver.js");
const STOP_GRACE_MS = 5_000;

export async function startS3(bucket = "cnbicloud-test"): Promise<S3Server> {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cnbicloud-s3-"));
	const port = await freePort();
	let child: ChildProcess;
	try {
		child = await spawnS3rver(port, dir, bucket);
	} catch (err) {
		fs.rmSync(dir, { recursive: true, force: true });
		throw err;
	}
	const endpoint = `http://127.0.0.1:${port}`;
	const region = "us-east-1";
	// s3rver's own defaults: it accepts requests signed with these
	const accessKeyId = "S3RVER";
	const secretAccessKey = "S3RVER";
	// the port opens before the bucket is made: wait until S3 itself answers with it
	await waitFor(() => hasBucket(endpoint, region, accessKeyId, secretAccessKey, bucket), `s3rver to serve bucket ${bucket}`);

	return {
		endpoint,
		bucket,
		region,
		accessKeyId,
		secretAccessKey,
		env: { S3_ENDPOINT: endpoint, S3_BUCKET: bucket, S3_REGION: region, S3_ACCESS_KEY: accessKeyId, S3_SECRET_KEY: secretAccessKey },
		async stop() {
			await stopProcess(child);
			fs.rmSync(dir, { recursive: true, force: true });
		},
	};
}

async function hasBucket(endpoint: string, region: string, accessKeyId: string, secretAccessKey: string, bucket: string): Promise<boolean> {
	const client = new S3Client({ endpoint, region, forcePathStyle: true, credentials: { accessKeyId, secretAccessKey }, maxAttempts: 1 });
	try {
		const { Buckets } = await client.send(new ListBucketsCommand({}));
		return (Buckets ?? []).some(b => b.Name === bucket);
	} finally {
		client.destroy();
	}
}

/**
 * Like ServerProcess (servers.ts), but holding the child so that `stop` can follow SIGTERM with
 * SIGKILL, which ServerProcess cannot do.
 */
async function spawnS3rver(port: number, dir: string, bucket: string): Promise<ChildProcess> {
	const child = spawn(process.execPath, [
		// s3rver's ListObjectsV2 continuation tokens are DES-encrypted, which OpenSSL 3 only has in its
		// legacy provider: without it every listing past the first page is a 500
		"--openssl-legacy-provider",
		CLI, "--directory", dir, "--address", "127.0.0.1", "--port", String(port), "--silent", "--configure-bucket", bucket,
	], { stdio: ["ignore", "pipe", "pipe"] });
	let output = "";
	child.stdout?.on("data", d => (output += d));
	child.stderr?.on("data", d => (output += d));
	try {
		// (waitFor swallows errors thrown by the check, so an early exit ends the wait as a success and is reported here)
		const exited = () => child.exitCode !== null || child.signalCode !== null;
		await waitFor(async () => exited() || (await canConnect(port)), `s3rver on port ${port}`);
		if (exited()) throw new Error("s3rver exited before listening");
	} catch (err) {
		await stopProcess(child);
		throw new Error(`${(err as Error).message}\n${output}`);
	}
	return child;
}

/** SIGTERM, then SIGKILL if the process is still there after a grace period; resolves once it is gone. */
async function stopProcess(child: ChildProcess): Promise<void> {
	if (child.exitCode !== null || child.signalCode !== null) return;
	const gone = new Promise<void>(resolve => child.once("exit", () => resolve()));
	child.kill("SIGTERM");
	const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
	try {
		await gone;
	} finally {
		clearTimeout(timer);
	}
}
