/** The Messaging part of API.md is published and documented, and the channels' whitelist names only what exists. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Utils } from "moleculer";
import { CHANNEL_WHITELIST } from "../../lib/realtime/whitelist";
import { expectStatus, startOrg, type RunningOrg } from "../support/org";

describe("messaging: the published contract", () => {
	let org: RunningOrg;
	before(async () => (org = await startOrg()));
	after(async () => org?.stop());

	it("documents every Messaging route of API.md in the OpenAPI document", async () => {
		const doc = expectStatus(await org.anonymous.get("/api/openapi.json"), 200) as { paths: Record<string, Record<string, unknown>> };
		const routes = [
			"POST /api/chat/messages", "GET /api/chat/conversations", "GET /api/chat/messages", "POST /api/chat/read", "POST /api/chat/messages/{id}/recall",
			"GET /api/groups", "POST /api/groups", "GET /api/groups/{id}", "PUT /api/groups/{id}", "DELETE /api/groups/{id}",
			"POST /api/groups/{id}/members", "DELETE /api/groups/{id}/members/{userId}", "POST /api/groups/{id}/messages", "GET /api/groups/{id}/messages",
			"POST /api/groups/{id}/read", "GET /api/groups/{id}/messages/{msgId}/receipts",
			"POST /api/app-messages", "GET /api/app-messages", "POST /api/app-messages/{id}/read",
			"POST /api/bus/topics/{topic}", "GET /api/bus/subscriptions", "POST /api/bus/subscriptions", "DELETE /api/bus/subscriptions/{id}", "GET /api/bus/dead-letters",
			"POST /api/robots", "POST /api/robots/hooks/{token}",
		];
		const missing = routes.filter(r => {
			const [method, path] = r.split(" ");
			return !doc.paths[path]?.[method.toLowerCase()];
		});
		assert.deepEqual(missing, []);
	});

	it("whitelists for the real-time channels only published actions that exist", () => {
		const published = org.broker.registry
			.getActionList({ skipInternal: true })
			.filter(a => (a.action as { visibility?: string } | undefined)?.visibility === undefined || (a.action as { visibility?: string }).visibility === "published")
			.map(a => a.name);
		for (const mask of CHANNEL_WHITELIST) assert.ok(published.some(name => Utils.match(name, mask)), `'${mask}' matches a published action`);
		const reachable = published.filter(name => CHANNEL_WHITELIST.some(mask => Utils.match(name, mask)));
		for (const name of reachable) assert.match(name, /^(chatmsg|group|groupmsg|appmsg|online|security)\./, name);
	});
});
