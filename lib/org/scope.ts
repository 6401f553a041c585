import type { AuthenticatedUser, DataScope } from "../../types/access";
import type { Query } from "../../types/entity";

/** A principal that carries no data scope sees its own records only (fail closed). */
const OWN_RECORDS: DataScope = { all: false, deptIds: [], self: true };

/** The caller's data scope; the platform administrator's covers everything. */
export function scopeOf(user: AuthenticatedUser): DataScope {
	return user.platformAdmin ? { all: true, deptIds: [], self: true } : (user.dataScope ?? OWN_RECORDS);
}

/**
 * The data-scope filter of a list: null when the caller sees every record of the company,
 * else the records of the scope's departments and/or the caller's own (`fields` name the
 * record's department and owner fields). A scope that allows nothing matches nothing.
 */
export function dataScopeQuery(user: AuthenticatedUser, fields: { dept: string; owner: string }): Query | null {
	const scope = scopeOf(user);
	if (scope.all) return null;
	const any: Query[] = [];
	if (scope.deptIds.length) any.push({ [fields.dept]: { $in: scope.deptIds } });
	if (scope.self) any.push({ [fields.owner]: user.id });
	if (any.length === 0) return { [fields.owner]: { $in: [] } };
	return any.length === 1 ? any[0] : { $or: any };
}

/** `query` narrowed by `extra` (either may be empty). */
export function and(query: Query, extra: Query | null): Query {
	if (!extra) return query;
	if (Object.keys(query).length === 0) return extra;
	return { $and: [query, extra] };
}
