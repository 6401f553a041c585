/**
 * The licence service through the real gateway over HTTP: issuing with the operator's key,
 * verifying offline, and a company's licence as the other services see it (`forCompany`), with
 * test-only `company` and `user` services answering exactly `company.licenseKey` and `user.count`.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Errors, type Context, type ServiceBroker, type ServiceSchema } from "moleculer";
import LicenseService from "../../services/org/license.service";
import ConfigService from "../../services/platform/config.service";
import { generateLicenseKeyPair, newClaims, signLicense } from "../../lib/license/license";
import type { AuthenticatedUser } from "../../types/access";
import type { CompanyLicense, EntityEvent, LicenseClaims } from "../../types/org";
import { createTestBroker } from "../support/broker";
import { startPlatform, type RunningGateway } from "../support/platform";
import { startNats, waitFor, type ServerProcess } from "../support/servers";
import { securityStub } from "../support/security.stub";

const keys = generateLicenseKeyPair();
const stranger = generateLicenseKeyPair();
const DAY = 86_400_000;
const inDays = (n: number) => new Date(Date.now() + n * DAY).toISOString();

const user = (id: string, companyId: string | null, permissions: string[], extra: Partial<AuthenticatedUser> = {}): AuthenticatedUser => ({
	id, username: id, companyId, roles: [], permissions, ...extra,
});
const USERS: Record<string, AuthenticatedUser> = {
	admin: user("admin", null, [], { platformAdmin: true }),
	c1admin: user("c1admin", "c1", ["license:read"]),
	c1member: user("c1member", "c1", []),
	c2admin: user("c2admin", "c2", ["license:read"]),
};

const TestSecurity = securityStub(USERS);

/** Test-only `company` and `user` services: the contract `license` relies on, and a way to change a key. */
function orgStubs(companies: Map<string, string | null>, users: Map<string, number>): ServiceSchema[] {
	return [
		{
			name: "company",
			actions: {
				licenseKey: {
					visibility: "public",
					params: { companyId: "string" },
					handler(ctx: Context<{ companyId: string }>) {
						if (!companies.has(ctx.params.companyId))
							throw new Errors.MoleculerClientError(`Company '${ctx.params.companyId}' not found`, 404, "NOT_FOUND");
						return { licenseKey: companies.get(ctx.params.companyId) };
					},
				},
				/** What the real company service does on a change: store it, emit the domain event. */
				setKey: {
					params: { companyId: "string", licenseKey: { type: "string", nullable: true } },
					async handler(ctx: Context<{ companyId: string; licenseKey: string | null }>) {
						companies.set(ctx.params.companyId, ctx.params.licenseKey);
						const event: EntityEvent = { entity: { id: ctx.params.companyId, licenseKey: ctx.params.licenseKey }, user: null };
						await ctx.emit("company.company.updated", event);
					},
				},
			},
		},
		{
			name: "user",
			actions: {
				count: { visibility: "public", params: { companyId: "string" }, handler: (ctx: Context<{ companyId: string }>) => users.get(ctx.params.companyId) ?? 0 },
			},
		},
	];
}

const forCompany = (broker: ServiceBroker, companyId: string) => broker.call<CompanyLicense, { companyId: string }>("license.forCompany", { companyId });

async function api(gw: RunningGateway, method: string, path: string, token: string, body?: unknown) {
	const res = await fetch(gw.url + path, {
		method,
		headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	return { status: res.status, body: (await res.json()) as any };
}

const request = (extra: Record<string, unknown> = {}) => ({
	licensee: "Acme Ltd", type: "enterprise", edition: "commercial", seats: 25, features: ["chat", "bi"], expiresAt: inDays(365), ...extra,
});

function signed(extra: Partial<LicenseClaims> = {}, privateKey = keys.privateKey): string {
	const claims = { ...newClaims({ licensee: "Beta GmbH", type: "enterprise", edition: "commercial", seats: 3, features: ["chat"], expiresAt: inDays(30) }), ...extra };
	return signLicense(claims, privateKey);
}

describe("licences over HTTP", () => {
	let gw: RunningGateway;
	const companies = new Map<string, string | null>([["c1", null], ["c2", null]]);
	const users = new Map([["c1", 4], ["c2", 0]]);

	before(async () => {
		gw = await startPlatform(
			{ LICENSE_PUBLIC_KEY: keys.publicKey, LICENSE_PRIVATE_KEY: keys.privateKey },
			[TestSecurity, LicenseService, ...orgStubs(companies, users)],
			{ withSecurity: false },
		);
		await waitFor(async () => (await api(gw, "GET", "/api/licenses/current", "c1admin")).status === 200, "the licence routes");
	});
	after(() => gw.stop());

	it("issues a signed licence to the platform administrator, and the key verifies", async () => {
		const issued = await api(gw, "POST", "/api/licenses", "admin", request());
		assert.equal(issued.status, 200, JSON.stringify(issued.body));
		const { key, claims } = issued.body;
		assert.match(key, /^CNBI1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
		assert.equal(claims.licensee, "Acme Ltd");
		assert.equal(claims.seats, 25);
		assert.deepEqual(claims.features, ["chat", "bi"]);
		assert.ok(Math.abs(Date.parse(claims.issuedAt) - Date.now()) < 60_000);

		const verified = await api(gw, "POST", "/api/licenses/verify", "c1member", { key });
		assert.equal(verified.status, 200);
		assert.deepEqual(verified.body, { valid: true, claims, expired: false });
	});

	it("answers verify with valid: false and a reason for altered, foreign and malformed keys", async () => {
		const { key } = (await api(gw, "POST", "/api/licenses", "admin", request({ seats: 5 }))).body;
		// More seats written into the claims of a genuine key.
		const [prefix, payload, signature] = key.split(".");
		const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
		const forged = `${prefix}.${Buffer.from(JSON.stringify({ ...claims, seats: 5000 })).toString("base64url")}.${signature}`;
		for (const [bad, code] of [[forged, "BAD_SIGNATURE"], [signed({}, stranger.privateKey), "BAD_SIGNATURE"], ["CNBI1.nonsense", "MALFORMED"]]) {
			const res = await api(gw, "POST", "/api/licenses/verify", "c1member", { key: bad });
			assert.equal(res.status, 200);
			assert.equal(res.body.valid, false);
			assert.equal(res.body.code, code);
			assert.equal(typeof res.body.reason, "string");
			assert.equal(res.body.claims, undefined, "no claims from a key that does not verify");
		}
		const expired = await api(gw, "POST", "/api/licenses/verify", "c1member", { key: signed({ issuedAt: inDays(-60), expiresAt: inDays(-1) }) });
		assert.equal(expired.body.valid, true);
		assert.equal(expired.body.expired, true);
	});

	it("refuses bad issuing input with a 422 that says what was wrong", async () => {
		const cases: [Record<string, unknown>, RegExp][] = [
			[{ seats: 0 }, /seats/], [{ seats: 1.5 }, /seats/], [{ seats: 1_000_001 }, /seats/], [{ seats: "10" }, /seats/],
			[{ features: ["Not An App"] }, /app name/], [{ features: "chat" }, /features/], [{ features: ["chat", "bi", "chat"] }, /lists an app more than once/], [{ features: Array.from({ length: 65 }, (_, i) => `app${i}`) }, /features/],
			[{ expiresAt: inDays(-1) }, /must be in the future/], [{ expiresAt: "next year" }, /ISO date/], [{ expiresAt: "2099-02-30" }, /ISO date/],
			[{ type: "corporate" }, /type/], [{ edition: "pirate" }, /edition/], [{ licensee: "" }, /licensee/], [{ licensee: "x".repeat(201) }, /licensee/],
			[{ licensee: undefined }, /licensee/], [{ extra: true }, /forbidden keys/],
		];
		for (const [change, message] of cases) {
			const res = await api(gw, "POST", "/api/licenses", "admin", request(change));
			assert.equal(res.status, 422, JSON.stringify(change).slice(0, 80));
			assert.match(JSON.stringify(res.body), message, JSON.stringify(change).slice(0, 80));
		}
		const huge = await api(gw, "POST", "/api/licenses/verify", "c1member", { key: "A".repeat(9000) });
		assert.equal(huge.status, 422);
		assert.equal((await api(gw, "POST", "/api/licenses/verify", "c1member", {})).status, 422);
	});

	it("lets only the platform administrator issue, and only signed-in users verify", async () => {
		const res = await api(gw, "POST", "/api/licenses", "c1admin", request());
		assert.equal(res.status, 403);
		assert.equal(res.body.type, "FORBIDDEN");
		assert.equal((await api(gw, "POST", "/api/licenses/verify", "nobody-known", { key: signed() })).status, 401);
	});

	it("gives a company without a key the evaluation allowance, with its seat use", async () => {
		const res = await api(gw, "GET", "/api/licenses/current", "c1admin");
		assert.equal(res.status, 200);
		assert.deepEqual(res.body, { companyId: "c1", licensed: false, claims: null, seats: 5, seatsUsed: 4, features: null, expired: false, expiresAt: null });
		assert.deepEqual(await forCompany(gw.broker, "c2"), { licensed: false, claims: null, seats: 5, features: null, expired: false, expiresAt: null });
	});

	it("follows the key installed on a company, its cached answer cleaned when the company changes", async () => {
		const key = signed({ seats: 3, features: ["chat"] });
		assert.equal((await forCompany(gw.broker, "c1")).licensed, false);
		// Changed without the company's event: the cached answer stands (forCompany is cached).
		companies.set("c1", key);
		assert.equal((await forCompany(gw.broker, "c1")).licensed, false);
		// The company service's change event cleans it.
		await gw.broker.call("company.setKey", { companyId: "c1", licenseKey: key });
		await waitFor(async () => (await forCompany(gw.broker, "c1")).licensed, "the cache to be cleaned", 2_000);

		const current = await api(gw, "GET", "/api/licenses/current", "c1admin");
		assert.equal(current.body.licensed, true);
		assert.equal(current.body.seats, 3);
		assert.equal(current.body.seatsUsed, 4, "seat use beyond the seats shows");
		assert.deepEqual(current.body.features, ["platform", "org", "chat"], "the core apps come with every licence");
		assert.equal(current.body.claims.licensee, "Beta GmbH");
		assert.equal(current.body.expired, false);
		assert.equal(current.body.expiresAt, current.body.claims.expiresAt);
	});

	it("reports an expired licence as licensed and expired, keeping its seats and apps", async () => {
		await gw.broker.call("company.setKey", { companyId: "c2", licenseKey: signed({ seats: 50, features: ["bi"], issuedAt: inDays(-400), expiresAt: inDays(-35) }) });
		await waitFor(async () => (await forCompany(gw.broker, "c2")).licensed, "the new key");
		const license = await forCompany(gw.broker, "c2");
		assert.equal(license.expired, true);
		assert.equal(license.seats, 50);
		assert.deepEqual(license.features, ["platform", "org", "bi"]);
		assert.ok(Date.parse(license.expiresAt!) < Date.now());
	});

	it("falls back to the evaluation allowance when an installed key no longer verifies", async () => {
		await gw.broker.call("company.setKey", { companyId: "c2", licenseKey: signed({ seats: 900 }, stranger.privateKey) });
		await waitFor(async () => (await forCompany(gw.broker, "c2")).seats === 5, "the new key");
		const current = await api(gw, "GET", "/api/licenses/current", "c2admin");
		assert.equal(current.body.licensed, false);
		assert.equal(current.body.features, null);
		assert.match(current.body.problem, /signature does not match/);
	});

	it("shows a named company to the platform administrator, and no other company to anyone else", async () => {
		const named = await api(gw, "GET", "/api/licenses/current?companyId=c1", "admin");
		assert.equal(named.status, 200);
		assert.equal(named.body.companyId, "c1");
		assert.equal(named.body.seats, 3);
		assert.equal((await api(gw, "GET", "/api/licenses/current", "admin")).status, 422, "the administrator must name a company");
		assert.equal((await api(gw, "GET", "/api/licenses/current?companyId=nope", "admin")).status, 404);
		assert.equal((await api(gw, "GET", "/api/licenses/current?companyId=c2", "c1admin")).status, 403);
		assert.equal((await api(gw, "GET", "/api/licenses/current", "c1member")).status, 403, "license:read is needed");
	});

	it("takes the evaluation allowance from the config centre, live", async () => {
		await gw.broker.call("company.setKey", { companyId: "c2", licenseKey: null });
		await gw.broker.call("config.set", { namespace: "license", values: { evaluationSeats: 12 } }, { meta: { user: USERS.admin } });
		await waitFor(async () => (await api(gw, "GET", "/api/licenses/current", "c2admin")).body.seats === 12, "the new allowance", 2_000);
	});
});

describe("licence issuing without a private key", () => {
	let gw: RunningGateway;
	before(async () => {
		gw = await startPlatform({ LICENSE_PUBLIC_KEY: keys.publicKey }, [TestSecurity, LicenseService, ...orgStubs(new Map(), new Map())], { withSecurity: false });
		await waitFor(async () => (await api(gw, "POST", "/api/licenses/verify", "c1member", { key: "x" })).status === 200, "the licence routes");
	});
	after(() => gw.stop());

	it("answers 503 LICENSE_ISSUING_DISABLED with a clear message, and still verifies", async () => {
		const res = await api(gw, "POST", "/api/licenses", "admin", request());
		assert.equal(res.status, 503);
		assert.equal(res.body.type, "LICENSE_ISSUING_DISABLED");
		assert.match(res.body.message, /no licence private key/);
		await assert.rejects(gw.broker.call("license.issue", request(), { meta: { user: USERS.admin } }), (err: Errors.MoleculerError) => {
			assert.equal(err.code, 503);
			assert.equal(err.type, "LICENSE_ISSUING_DISABLED");
			assert.match(err.message, /no licence private key/);
			return true;
		});
		assert.equal((await api(gw, "POST", "/api/licenses/verify", "c1member", { key: signed() })).body.valid, true);
	});
});

describe("licence cache across nodes over real NATS", () => {
	let nats: ServerProcess & { url: string };
	const brokers: ServiceBroker[] = [];
	const companies = new Map<string, string | null>([["c1", null]]);

	before(async () => {
		nats = await startNats();
		const env = { TRANSPORTER: nats.url, NAMESPACE: `lic-${randomUUID().slice(0, 8)}`, LICENSE_PUBLIC_KEY: keys.publicKey };
		for (const [nodeID, services] of [["lic-a", [ConfigService, LicenseService, ...orgStubs(companies, new Map())]], ["lic-b", [LicenseService]]] as const) {
			const broker = createTestBroker({ ...env, NODE_ID: nodeID });
			services.forEach(s => broker.createService(s));
			brokers.push(broker);
			await broker.start();
		}
		const licenseNodes = (broker: ServiceBroker) => broker.registry.getServiceList({ skipInternal: true }).filter(s => s.name === "license").length;
		await waitFor(() => licenseNodes(brokers[0]) === 2 && licenseNodes(brokers[1]) === 2, "both nodes to see both licence services");
	});
	after(async () => {
		for (const broker of brokers.reverse()) await broker.stop().catch(() => {});
		await nats?.stop();
	});

	it("cleans every node's cached licence when the company changes, though the event reaches one", async () => {
		const [a, b] = brokers;
		const onNode = (broker: ServiceBroker) => broker.call<CompanyLicense, { companyId: string }>("license.forCompany", { companyId: "c1" }, { nodeID: broker.nodeID });
		assert.equal((await onNode(a)).licensed, false);
		assert.equal((await onNode(b)).licensed, false);
		await a.call("company.setKey", { companyId: "c1", licenseKey: signed() });
		await waitFor(async () => (await onNode(a)).licensed && (await onNode(b)).licensed, "both nodes to see the new key", 2_000);
	});
});
