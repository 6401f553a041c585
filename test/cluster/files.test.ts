/**
 * Files across nodes: a gateway-only node streams uploads to, and downloads from, the files
 * service on other nodes over a real NATS (Moleculer's streams between nodes), with the chunks
 * on the real S3 server (s3rver) the cluster's two service nodes share.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import FileIngestService from "../../services/gateway/file-ingest.service";
import GatewayService from "../../services/gateway/gateway.service";
import { createTestBroker } from "../support/broker";
import { collect, download, randomContent, sha256, uploadFiles } from "../support/files";
import { createCompany, expectStatus, startOrgCluster, type RunningOrg } from "../support/org";
import { freePort, waitFor } from "../support/servers";

const MiB = 1 << 20;

describe("files through a gateway-only node over NATS, chunks on S3", () => {
	let org: RunningOrg;
	let gateway: ServiceBroker;
	let url: string;

	before(async () => {
		org = await startOrgCluster();
		const port = await freePort();
		gateway = createTestBroker({ ...org.env, NODE_ID: `${org.env.NAMESPACE}-gateway`, PORT: String(port), HOST: "127.0.0.1", RATE_LIMIT_PER_IP: "0", RATE_LIMIT_PER_USER: "0" });
		gateway.createService(GatewayService);
		gateway.createService(FileIngestService);
		await gateway.start();
		url = `http://127.0.0.1:${port}`;
		await waitFor(async () => (await fetch(`${url}/api/ready`)).status === 200, "the gateway-only node ready");
	});

	after(async () => {
		await gateway?.stop();
		await org?.stop();
	});

	it("uploads and serves a file byte for byte, whole and in ranges, whichever node holds the service", async () => {
		const company = await createCompany(org);
		const user = company.admin.via(url);
		const content = await collect(randomContent(40 * MiB, "cluster-files"));
		const [file] = expectStatus(await uploadFiles(user, [{ name: "across.bin", content }]), 200);
		assert.equal(file.sha256, sha256(content));
		for (const api of [user, company.admin, company.admin.via(org.urls[1])]) {
			const got = await download(api, file.id);
			assert.equal(got.status, 200);
			assert.equal(sha256(got.body), sha256(content), `download via ${api.url}`);
		}
		const part = await download(user, file.id, { Range: `bytes=${10 * MiB}-${30 * MiB}` });
		assert.equal(part.status, 206);
		assert.ok(part.body.equals(content.subarray(10 * MiB, 30 * MiB + 1)));
	});
});
