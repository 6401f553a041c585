/**
 * Filters of the log queries: dates from the query string (the data scope is lib/org/scope.ts).
 */
import { Errors } from "moleculer";
import type { Query } from "../../types/entity";

const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?)?$/;

function badDate(field: string, value: string): Errors.MoleculerClientError {
	return new Errors.MoleculerClientError(
		`'${field}' must be an ISO 8601 date such as 2024-05-01 or 2024-05-01T12:00:00Z, got '${value.slice(0, 40)}'`,
		422,
		"VALIDATION_ERROR",
		[{ type: "date", field, message: `The '${field}' field must be an ISO 8601 date.` }],
	);
}

/** Parses an ISO 8601 date or date-time; a day that does not exist (2024-02-30) is refused too. */
export function parseIsoDate(field: string, value: string): { date: Date; dateOnly: boolean } {
	const match = ISO_DATE.exec(value);
	if (!match) throw badDate(field, value);
	const [, y, m, d, time] = match;
	const day = new Date(Date.UTC(Number(y), Number(m) - 1, Number(d)));
	const time_ = Date.parse(value);
	if (day.getUTCMonth() !== Number(m) - 1 || day.getUTCDate() !== Number(d) || Number.isNaN(time_)) throw badDate(field, value);
	return { date: new Date(time_), dateOnly: !time };
}

/** `at` between `from` and `to`, both inclusive; a date-only `to` takes in that whole day. */
export function timeRange(from?: string, to?: string): Query | null {
	if (!from && !to) return null;
	const range: Record<string, Date> = {};
	if (from) range.$gte = parseIsoDate("from", from).date;
	if (to) {
		const end = parseIsoDate("to", to);
		if (end.dateOnly) range.$lt = new Date(end.date.getTime() + 86_400_000);
		else range.$lte = end.date;
	}
	const upper = range.$lt ?? range.$lte;
	if (range.$gte && upper && range.$gte > upper)
		throw new Errors.MoleculerClientError("'from' must not be after 'to'", 422, "VALIDATION_ERROR", [{ type: "date", field: "from", message: "'from' is after 'to'." }]);
	return { at: range };
}

