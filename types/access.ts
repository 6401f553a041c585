/**
 * Access contract shared by the gateway, the real-time channels and the security service.
 *
 * Every action published to clients declares how it is guarded, on the action itself:
 *   - `auth: false`                  anyone, no token (login, health);
 *   - `permission: "<code>"`         a signed-in user holding that permission (e.g. `config:write`);
 *   - `permission: AUTHENTICATED`    any signed-in user;
 *   - `permission: PLATFORM_ADMIN`   the platform administrator only.
 * An action that declares neither is refused to everyone (fail closed).
 */
export const AUTHENTICATED = "$authenticated";
export const PLATFORM_ADMIN = "$platformAdmin";

/** The user a bearer token resolves to; the gateway puts it in `ctx.meta.user`. */
export interface AuthenticatedUser {
	id: string;
	username: string;
	name?: string;
	/** null for the platform administrator, who belongs to no company. */
	companyId: string | null;
	roles: string[];
	permissions: string[];
	platformAdmin?: boolean;
	sessionId?: string;
}

/** `security.resolveToken` params. It answers the user, or throws a 401 MoleculerClientError. */
export interface ResolveTokenParams {
	token: string;
}

/** What an action declares about access (read from the registry, so it works for remote actions too). */
export interface ActionAccess {
	auth?: boolean;
	permission?: string;
}
