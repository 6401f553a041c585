import { Errors } from "moleculer";
import { AUTHENTICATED, PLATFORM_ADMIN, type ActionAccess, type AuthenticatedUser } from "../types/access";

/** True when the action may be called without a token. */
export function isPublic(action: ActionAccess): boolean {
	return action.auth === false;
}

/**
 * Throws unless `user` may call an action that declares `access`.
 * Fails closed: an action that declares no permission (and is not public) is refused.
 */
export function assertAccess(
	user: AuthenticatedUser | null | undefined,
	access: ActionAccess,
	actionName: string,
	options: { mutating?: boolean } = {},
): void {
	if (isPublic(access)) return;
	if (!user) throw new Errors.MoleculerClientError("Authentication required", 401, "UNAUTHORIZED");

	const required = access.permission;
	if (typeof required !== "string" || required.length === 0)
		throw new Errors.MoleculerClientError(`Action '${actionName}' declares no permission`, 403, "FORBIDDEN");
	if (required === AUTHENTICATED || user.platformAdmin) return;
	// A read-only company (an expired licence) keeps reading; self-service (AUTHENTICATED) still works.
	const readOnly = options.mutating ? readOnlyReason(user) : null;
	if (readOnly) throw new Errors.MoleculerClientError(readOnly, 403, "READ_ONLY", { licenseExpiresAt: user.licenseExpiresAt ?? null });
	if (required === PLATFORM_ADMIN || !user.permissions.includes(required))
		throw new Errors.MoleculerClientError(`Missing permission '${required}'`, 403, "FORBIDDEN", { permission: required });
}

/** Why the user's company may only read right now (its licence expired), or null. Time-based, so a cached principal stays right. */
export function readOnlyReason(user: AuthenticatedUser, now = Date.now()): string | null {
	if (user.readOnly) return user.readOnly;
	if (user.licenseExpiresAt && Date.parse(user.licenseExpiresAt) <= now)
		return `The company's licence expired on ${user.licenseExpiresAt.slice(0, 10)}: the company is read-only until a new licence is installed`;
	return null;
}
