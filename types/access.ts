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

/**
 * Which records of a company a user's list actions may return, from the union of the user's
 * roles' data scopes: everything (`all`), the records of the listed departments (`deptIds`,
 * already expanded for `deptAndChildren`), and/or the user's own records (`self`).
 */
export interface DataScope {
	all: boolean;
	deptIds: string[];
	self: boolean;
}

/** The user a bearer token resolves to; the gateway puts it in `ctx.meta.user`. */
export interface AuthenticatedUser {
	id: string;
	username: string;
	name?: string;
	/** null for the platform administrator, who belongs to no company. */
	companyId: string | null;
	deptId?: string | null;
	/** Role codes. */
	roles: string[];
	/** Effective permission codes: roles and grants, limited to the apps of the company's licence. */
	permissions: string[];
	platformAdmin?: boolean;
	sessionId?: string;
	/** When the access token this user came from expires (ms since the epoch): caches keep it no longer. */
	tokenExpiresAt?: number;
	dataScope?: DataScope;
	/** Set when the company may only read (an expired licence): the reason, shown to the caller. */
	readOnly?: string | null;
	/** When the company's licence expires (null: no licence, no expiry); past it the company is read-only. */
	licenseExpiresAt?: string | null;
}

/**
 * What a service declares about the permissions its actions use, in `settings.permissions`
 * (the `auth` service assembles the catalogue from them):
 *   settings: { app: "org", permissions: { "user:read": { description: "List and read users", member: true } } }
 * `app` groups permissions for grants and licences (default: the service's `settings.app`);
 * `member: true` puts the permission in the built-in `member` role.
 */
export interface PermissionDeclaration {
	description: string;
	app?: string;
	member?: boolean;
}

/** An entry of the permission catalogue (`GET /api/auth/permissions`). */
export interface PermissionInfo {
	code: string;
	service: string;
	app: string;
	description: string;
	member: boolean;
}

/** Apps every company has, whatever its licence says. */
export const CORE_APPS = ["platform", "org"];

/** `security.resolveToken` params. It answers the user, or throws a 401 MoleculerClientError. */
export interface ResolveTokenParams {
	token: string;
}

/** What an action declares about access (read from the registry, so it works for remote actions too). */
export interface ActionAccess {
	auth?: boolean;
	permission?: string;
	/** `false` keeps a mutating action out of the operation log (login records its own attempts). */
	audit?: boolean;
}
