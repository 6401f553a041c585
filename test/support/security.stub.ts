/**
 * A test-only `security` service implementing the gateway's authentication contract
 * (`security.resolveToken`) with fixed tokens, until the real service exists in the tests that need it.
 */
import { Errors, type Context, type ServiceSchema } from "moleculer";
import type { AuthenticatedUser, ResolveTokenParams } from "../../types/access";

export const TEST_USERS: Record<string, AuthenticatedUser> = {
	"admin-token": { id: "u-admin", username: "admin", companyId: null, roles: ["platform-admin"], permissions: [], platformAdmin: true },
	"reader-token": { id: "u-reader", username: "reader", companyId: "c1", roles: ["member"], permissions: ["config:read", "probe:read"] },
	"other-reader-token": { id: "u-reader2", username: "reader2", companyId: "c1", roles: ["member"], permissions: ["config:read", "probe:read"] },
	"nobody-token": { id: "u-nobody", username: "nobody", companyId: "c1", roles: [], permissions: [] },
};

export const SecurityStub: ServiceSchema = {
	name: "security",
	actions: {
		resolveToken: {
			params: { token: "string" },
			handler(ctx: Context<ResolveTokenParams>) {
				const user = TEST_USERS[ctx.params.token];
				if (!user) throw new Errors.MoleculerClientError("Invalid or expired token", 401, "INVALID_TOKEN");
				return user;
			},
		},
	},
};

export const bearer = (token: keyof typeof TEST_USERS | string) => ({ Authorization: `Bearer ${token}` });
