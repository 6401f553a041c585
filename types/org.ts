/**
 * Organisation contracts: the records the org services keep and the internal actions they call
 * on each other. Internal actions have `visibility: "public"`: callable from any node, never
 * published by the gateway.
 */
import type { AuthenticatedUser } from "./access";

export type Status = "enabled" | "disabled";
export const STATUSES: Status[] = ["enabled", "disabled"];

export type DataScopeKind = "all" | "custom" | "dept" | "deptAndChildren" | "self";
export const DATA_SCOPES: DataScopeKind[] = ["all", "custom", "dept", "deptAndChildren", "self"];

/** Built-in role codes, created with every company. */
export const COMPANY_ADMIN_ROLE = "company-admin";
export const MEMBER_ROLE = "member";

export interface Company {
	id: string;
	name: string;
	code: string;
	status: Status;
	/** The installed licence key (verified when set); null = evaluation allowance. */
	licenseKey: string | null;
	createdAt: string;
	updatedAt: string;
}

export interface Dept {
	id: string;
	companyId: string;
	name: string;
	parentId: string | null;
	order: number;
}

/** A user as it leaves the `user` service: never with its password hash. */
export interface User {
	id: string;
	companyId: string | null;
	username: string;
	name: string;
	email: string | null;
	phone: string | null;
	deptId: string | null;
	roleIds: string[];
	status: Status;
	platformAdmin: boolean;
	passwordChangedAt: string | null;
	createdAt: string;
	updatedAt: string;
}

export interface Role {
	id: string;
	companyId: string;
	name: string;
	code: string;
	permissions: string[];
	dataScope: DataScopeKind;
	deptIds: string[];
	builtin: boolean;
}

export type GrantSubject = "company" | "dept" | "role" | "user";

export interface Grant {
	id: string;
	companyId: string;
	subjectType: GrantSubject;
	subjectId: string;
	app: string | null;
	permission: string | null;
}

/** Licence claims, as signed (`license` service). */
export interface LicenseClaims {
	id: string;
	licensee: string;
	type: "personal" | "enterprise";
	edition: "opensource" | "commercial";
	seats: number;
	features: string[];
	issuedAt: string;
	expiresAt: string;
}

/**
 * `license.forCompany({ companyId })`: what a company may do under its licence.
 * A company without a licence key runs on the evaluation allowance (`licensed: false`).
 */
export interface CompanyLicense {
	licensed: boolean;
	claims: LicenseClaims | null;
	seats: number;
	/** Apps the company may use; null = every app. */
	features: string[] | null;
	expired: boolean;
	expiresAt: string | null;
}

/** `user.credentials({ username })`: what `security` needs to check a password. */
export interface UserCredentials {
	id: string;
	username: string;
	companyId: string | null;
	status: Status;
	passwordHash: string;
	platformAdmin: boolean;
}

/**
 * `auth.principal({ userId })` answers the signed-in user (roles, permissions, data scope,
 * read-only state) or throws 401 ACCOUNT_DISABLED / COMPANY_DISABLED / USER_NOT_FOUND.
 */
export type Principal = AuthenticatedUser;

/** Payload of the `security.session.revoked` event, broadcast to every node. */
export interface SessionsRevokedEvent {
	sessionIds: string[];
	userId?: string;
	companyId?: string;
	reason: string;
}

/** A session as `security.sessions` answers it (and `GET /api/online` shows it). */
export interface SessionInfo {
	sessionId: string;
	userId: string;
	username: string;
	companyId: string | null;
	deptId: string | null;
	device: string;
	ip: string;
	since: string;
	lastSeenAt: string;
}

/** Payload of `<service>.<entity>.<verb>` events emitted by `DbMixin`. */
export interface EntityEvent<T = Record<string, unknown>> {
	entity: T;
	user: { id: string; username: string; companyId: string | null } | null;
}
