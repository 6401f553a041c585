import type { AuthenticatedUser } from "../../types/access";
import type { Query } from "../../types/entity";

/**
 * The data-scope filter of a list: null when the caller sees every record of the company,
 * else the records of the scope's departments and/or the caller's own. A scope that allows
 * nothing matches nothing.
 */
export function dataScopeQuery(user: AuthenticatedUser, fields: { dept: string; owner: string }): Query | null {
	const scope = user.dataScope;
	if (user.platformAdmin || !scope || scope.all) return null;
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
