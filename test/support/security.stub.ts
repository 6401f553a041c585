/**
 * A test-only `security` service with fixed tokens, for the gateway's own tests: its hooks,
 * limits and error bodies against users whose permissions the test chooses. Everything that
 * signs in for real (security, organisation, cluster) uses the real service (test/support/org.ts).
 */
import { Errors, type Context, type ServiceSchema } from "moleculer";
import { AUTHENTICATED, type AuthenticatedUser, type ResolveTokenParams } from "../../types/access";
import type { RequestMeta } from "../../types/context";

export const TEST_USERS: Record<string, AuthenticatedUser> = {
	"admin-token": { id: "u-admin", username: "admin", companyId: null, roles: ["platform-admin"], permissions: [], platformAdmin: true },
	"reader-token": { id: "u-reader", username: "reader", companyId: "c1", roles: ["member"], permissions: ["config:read", "probe:read"] },
	"other-reader-token": { id: "u-reader2", username: "reader2", companyId: "c1", roles: ["member"], permissions: ["config:read", "probe:read"] },
	"nobody-token": { id: "u-nobody", username: "nobody", companyId: "c1", roles: [], permissions: [] },
};

/** A `security` service that resolves the given tokens to the given users, and nothing else. */
export function securityStub(users: Record<string, AuthenticatedUser>): ServiceSchema {
	return {
		name: "security",
		settings: { rest: "/auth" },
		actions: {
			/** A published route, like the real service's: the gateway counts a service ready once it is routed. */
			me: { rest: "GET /me", permission: AUTHENTICATED, handler: (ctx: Context<unknown, RequestMeta>) => ctx.meta.user },
			resolveToken: {
				params: { token: "string" },
				handler(ctx: Context<ResolveTokenParams>) {
					const user = users[ctx.params.token];
					if (!user) throw new Errors.MoleculerClientError("Invalid or expired token", 401, "INVALID_TOKEN");
					return user;
				},
			},
		},
	};
}

export const SecurityStub = securityStub(TEST_USERS);

export const bearer = (token: keyof typeof TEST_USERS | string) => ({ Authorization: `Bearer ${token}` });
