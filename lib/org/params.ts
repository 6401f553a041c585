/** fastest-validator schemas shared by the organisation services' actions. */
import { LIST_DEFAULTS } from "../../mixins/db.mixin";

export const idParam = { type: "string", min: 1, max: 64 };
export const optionalId = { ...idParam, optional: true };
export const nameParam = { type: "string", trim: true, min: 1, max: 100 };
export const statusParam = { type: "enum", values: ["enabled", "disabled"] };
export const idListParam = { type: "array", items: idParam, max: 100, unique: true };

/** `?page&pageSize&search&sort` of every list route (query strings arrive as text, hence `convert`). */
export const listParams = {
	page: { type: "number", integer: true, min: 1, max: 100_000, convert: true, optional: true },
	pageSize: { type: "number", integer: true, min: 1, max: LIST_DEFAULTS.maxPageSize, convert: true, optional: true },
	search: { type: "string", max: 100, optional: true },
	sort: { type: "string", max: 64, pattern: /^-?[A-Za-z]+$/, optional: true },
};

export interface ListQuery {
	page?: number;
	pageSize?: number;
	search?: string;
	sort?: string;
}

/** List params in the shape `DbMixin.listEntities` takes. */
export function pageOf(params: ListQuery, defaultSort: string) {
	return { page: params.page, pageSize: params.pageSize, search: params.search || undefined, sort: [params.sort ?? defaultSort] };
}
