import type { KeyObject } from "node:crypto";
import { Errors, type Context, type Service } from "moleculer";
import { ConfigMixin } from "../../mixins/config.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { serviceSchema } from "../../lib/service";
import {
	APP_NAME,
	LICENSE_EDITIONS,
	LICENSE_TYPES,
	MAX_FEATURES,
	MAX_LICENSE_KEY_LENGTH,
	MAX_SEATS,
	loadPrivateKey,
	loadPublicKey,
	newClaims,
	signLicense,
	verifyLicense,
	type LicenseRequest,
	type LicenseVerification,
} from "../../lib/license/license";
import { AUTHENTICATED, CORE_APPS, PLATFORM_ADMIN, type PermissionDeclaration } from "../../types/access";
import type { RequestMeta } from "../../types/context";
import type { CompanyLicense, LicenseClaims } from "../../types/org";

/**
 * Licences: issues signed keys (on nodes holding the operator's private key), verifies keys
 * offline against the platform's public key, and tells the other services what a company may do
 * under the key installed on it (`forCompany`). The key itself lives on the company record; this
 * service keeps nothing but a short cache of the evaluation.
 */

type LicenseConfig = { evaluationSeats: number };

/** `forCompany`'s answer; `problem` says why an installed key is not honoured. */
export type CompanyLicenseInfo = CompanyLicense & { problem?: string };

type Svc = Service & Pick<TenantMethods, "companyOf"> & {
	config: LicenseConfig;
	publicKey: KeyObject;
	privateKey: KeyObject | null;
	evaluate(ctx: Context, companyId: string): Promise<CompanyLicenseInfo>;
	evaluation(problem?: string): CompanyLicenseInfo;
	cleanCache(ctx: Context): Promise<void>;
};

type IssueParams = Omit<LicenseRequest, "expiresAt"> & { expiresAt: string };

const LICENSE_PERMISSIONS: Record<string, PermissionDeclaration> = {
	"license:read": { description: "See the company's licence and seat use" },
};

const keyParam = { type: "string", min: 1, max: MAX_LICENSE_KEY_LENGTH, trim: true };

const LicenseService = serviceSchema({
	name: "license",
	mixins: [TenantMixin("Company"), ConfigMixin<LicenseConfig>("license", { evaluationSeats: 5 })],
	settings: { rest: "/licenses", app: "org", permissions: LICENSE_PERMISSIONS },

	actions: {
		issue: {
			rest: "POST /",
			permission: PLATFORM_ADMIN,
			description: "Sign a new licence with this node's private key (the platform administrator only).",
			params: {
				$$strict: true,
				licensee: { type: "string", min: 1, max: 200, trim: true },
				type: { type: "enum", values: LICENSE_TYPES },
				edition: { type: "enum", values: LICENSE_EDITIONS },
				seats: { type: "number", integer: true, min: 1, max: MAX_SEATS },
				features: {
					type: "array",
					max: MAX_FEATURES,
					unique: true,
					messages: { arrayUnique: "'features' lists an app more than once" },
					items: { type: "string", pattern: APP_NAME, messages: { stringPattern: "Each feature must be an app name: a-z, 0-9 and '-', starting with a letter, at most 32 characters" } },
				},
				expiresAt: { type: "string", max: 40 },
			},
			handler(this: Svc, ctx: Context<IssueParams>) {
				if (!this.privateKey)
					throw new Errors.MoleculerError(
						"Issuing licences is disabled on this node: it has no licence private key (LICENSE_PRIVATE_KEY)",
						503,
						"LICENSE_ISSUING_DISABLED",
					);
				const expiresAt = futureDate(ctx.params.expiresAt);
				const claims = newClaims({ ...ctx.params, expiresAt: expiresAt.toISOString() });
				return { key: signLicense(claims, this.privateKey), claims };
			},
		},

		verify: {
			rest: "POST /verify",
			permission: AUTHENTICATED,
			idempotent: true,
			description: "Check a licence key against this platform's public key: its claims, or why it is not valid.",
			params: { $$strict: true, key: keyParam },
			handler(this: Svc, ctx: Context<{ key: string }>) {
				return verifyLicense(ctx.params.key, this.publicKey);
			},
		},

		current: {
			rest: "GET /current",
			permission: "license:read",
			idempotent: true,
			description: "My company's licence (or the evaluation allowance) and its seat use; the platform administrator names the company.",
			params: { $$strict: true, companyId: companyIdParam },
			async handler(this: Svc, ctx: Context<{ companyId?: string }, RequestMeta>) {
				const companyId = this.companyOf(ctx, ctx.params.companyId);
				const [license, seatsUsed] = await Promise.all([
					ctx.call<CompanyLicenseInfo, { companyId: string }>("license.forCompany", { companyId }),
					ctx.call<number, { companyId: string }>("user.count", { companyId }),
				]);
				return {
					companyId,
					licensed: license.licensed,
					claims: license.claims,
					seats: license.seats,
					seatsUsed,
					features: license.features,
					expired: license.expired,
					expiresAt: license.expiresAt,
					...(license.problem ? { problem: license.problem } : {}),
				};
			},
		},

		forCompany: {
			visibility: "public",
			idempotent: true,
			description: "What a company may do under its licence: seats, apps, expiry (internal).",
			cache: { keys: ["companyId"], ttl: 60 },
			params: { $$strict: true, companyId: { type: "string", min: 1, max: 64 } },
			handler(this: Svc, ctx: Context<{ companyId: string }>) {
				return this.evaluate(ctx, ctx.params.companyId);
			},
		},

		verifyKey: {
			visibility: "public",
			idempotent: true,
			description: "Check a licence key (internal: the company service calls it before accepting a key).",
			params: { $$strict: true, key: keyParam },
			handler(this: Svc, ctx: Context<{ key: string }>): LicenseVerification {
				return verifyLicense(ctx.params.key, this.publicKey);
			},
		},
	},

	events: {
		// A company's key changed or the company went: its cached evaluation is stale on every node.
		// Domain events reach one instance of this service, so it tells the others.
		"company.company.updated"(this: Svc, ctx: Context) {
			return this.cleanCache(ctx);
		},
		"company.company.removed"(this: Svc, ctx: Context) {
			return this.cleanCache(ctx);
		},
		async "cache.clean.license"(this: Svc) {
			if (this.broker.cacher) await this.broker.cacher.clean("license.**");
		},
	},

	methods: {
		async evaluate(this: Svc, ctx: Context, companyId: string): Promise<CompanyLicenseInfo> {
			const { licenseKey } = await ctx.call<{ licenseKey: string | null }, { companyId: string }>("company.licenseKey", { companyId });
			if (!licenseKey) return this.evaluation();
			const result = verifyLicense(licenseKey, this.publicKey);
			if (!result.valid) {
				// A key that verified when it was installed no longer does (the platform key changed):
				// the company falls back to the evaluation allowance rather than to no limits.
				this.logger.warn(`The licence installed on company '${companyId}' does not verify (${result.code}); the evaluation allowance applies`);
				return this.evaluation(result.reason);
			}
			return fromClaims(result.claims, result.expired);
		},

		evaluation(this: Svc, problem?: string): CompanyLicenseInfo {
			const info: CompanyLicenseInfo = { licensed: false, claims: null, seats: this.config.evaluationSeats, features: null, expired: false, expiresAt: null };
			return problem ? { ...info, problem } : info;
		},

		async cleanCache(this: Svc, ctx: Context) {
			await ctx.broadcast("cache.clean.license");
		},

		/** ConfigMixin hook: the evaluation allowance is part of cached answers. */
		configChanged(this: Svc) {
			return this.broker.cacher?.clean("license.**");
		},
	},

	created(this: Svc) {
		const settings = this.broker.options.platform?.license;
		if (!settings) throw new Error("The license service needs the platform's licence settings (broker.options.platform.license)");
		this.publicKey = loadPublicKey(settings.publicKey);
		this.privateKey = settings.privateKey ? loadPrivateKey(settings.privateKey) : null;
	},
});

/** The allowance a verified licence gives. The core apps come with every licence. */
function fromClaims(claims: LicenseClaims, expired: boolean): CompanyLicenseInfo {
	return {
		licensed: true,
		claims,
		seats: claims.seats,
		features: [...new Set([...CORE_APPS, ...claims.features])],
		expired,
		expiresAt: claims.expiresAt,
	};
}

/** An ISO date (or date-time) in the future, or a 422 saying what is wrong. */
function futureDate(text: string): Date {
	const iso = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2}))?$/;
	const date = new Date(text);
	// Date-only text must name a real day (no 2027-02-30 rolling over into March).
	const realDay = text.length !== 10 || (!Number.isNaN(date.getTime()) && date.toISOString().startsWith(text));
	if (!iso.test(text) || Number.isNaN(date.getTime()) || !realDay)
		throw new Errors.MoleculerClientError("'expiresAt' must be an ISO date such as 2027-12-31 or 2027-12-31T00:00:00Z", 422, "VALIDATION_ERROR", { field: "expiresAt", value: text });
	if (date.getTime() <= Date.now())
		throw new Errors.MoleculerClientError("'expiresAt' must be in the future", 422, "VALIDATION_ERROR", { field: "expiresAt", value: text });
	return date;
}

export default LicenseService;
