/**
 * The OpenAPI 3 document of every published route, generated from the gateway's live aliases
 * and the actions' own declarations (params schema, permission, description).
 */
import { AUTHENTICATED, PLATFORM_ADMIN } from "../../types/access";

type Rule = string | Record<string, unknown> | Rule[];
type JsonSchema = Record<string, unknown>;

export interface PublishedRoute {
	method: string;
	/** Full path with `:param` placeholders, e.g. `/api/config/:namespace`. */
	path: string;
	action: string;
	/** The action's definition from the registry (params, permission, auth, description). */
	definition?: Record<string, unknown>;
}

/** fastest-validator shorthand `"string|min:3|optional"` to its object form. */
function expand(rule: Rule): Record<string, unknown> {
	if (Array.isArray(rule)) return { type: "multi", rules: rule };
	if (typeof rule !== "string") return rule;
	const [type, ...parts] = rule.split("|");
	const out: Record<string, unknown> = { type };
	for (const part of parts) {
		const [key, value] = part.split(":");
		out[key] = value === undefined ? true : /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value === "true" ? true : value === "false" ? false : value;
	}
	return out;
}

export function ruleToSchema(input: Rule): JsonSchema {
	const rule = expand(input);
	const description = typeof rule.description === "string" ? { description: rule.description } : {};
	switch (rule.type) {
		case "string": {
			const s: JsonSchema = { type: "string", ...description };
			if (rule.min != null) s.minLength = rule.min;
			if (rule.max != null) s.maxLength = rule.max;
			if (rule.length != null) s.minLength = s.maxLength = rule.length;
			// A RegExp arrives as `{}` from a remote node's INFO: only a string or a local RegExp is documented.
			if (rule.pattern instanceof RegExp) s.pattern = rule.pattern.source;
			else if (typeof rule.pattern === "string") s.pattern = rule.pattern;
			if (Array.isArray(rule.enum)) s.enum = rule.enum;
			return s;
		}
		case "number": {
			const s: JsonSchema = { type: rule.integer ? "integer" : "number", ...description };
			if (rule.min != null) s.minimum = rule.min;
			if (rule.max != null) s.maximum = rule.max;
			return s;
		}
		case "boolean": return { type: "boolean", ...description };
		case "email": return { type: "string", format: "email", ...description };
		case "url": return { type: "string", format: "uri", ...description };
		case "uuid": return { type: "string", format: "uuid", ...description };
		case "date": return { type: "string", format: "date-time", ...description };
		case "enum": return { enum: rule.values, ...description };
		case "equal": return { const: rule.value, ...description };
		case "array": {
			const s: JsonSchema = { type: "array", items: rule.items ? ruleToSchema(rule.items as Rule) : {}, ...description };
			if (rule.min != null) s.minItems = rule.min;
			if (rule.max != null) s.maxItems = rule.max;
			return s;
		}
		case "object": {
			const props = (rule.props ?? rule.properties) as Record<string, Rule> | undefined;
			return props ? { ...objectSchema(props), ...description } : { type: "object", ...description };
		}
		case "multi": return { oneOf: (rule.rules as Rule[]).map(ruleToSchema), ...description };
		default: return { ...description };
	}
}

function isOptional(rule: Rule): boolean {
	const r = expand(rule);
	return r.optional === true || r.default !== undefined;
}

/** A params schema (fastest-validator) as a JSON object schema. `$$` keys are validator options. */
export function objectSchema(params: Record<string, Rule>): JsonSchema {
	const properties: Record<string, JsonSchema> = {};
	const required: string[] = [];
	for (const [name, rule] of Object.entries(params)) {
		if (name.startsWith("$$")) continue;
		properties[name] = ruleToSchema(rule);
		if (!isOptional(rule)) required.push(name);
	}
	const strict = (params.$$strict as unknown) === true;
	return { type: "object", properties, ...(required.length ? { required } : {}), ...(strict ? { additionalProperties: false } : {}) };
}

function security(definition: Record<string, unknown> | undefined) {
	if (definition?.auth === false) return { security: [] };
	const permission = definition?.permission;
	const who =
		permission === AUTHENTICATED ? "any signed-in user" :
		permission === PLATFORM_ADMIN ? "the platform administrator" :
		typeof permission === "string" ? `permission \`${permission}\`` :
		"nobody: the action declares no permission";
	return { security: [{ bearerAuth: [] }], "x-permission": permission ?? null, "x-access": who };
}

const ERROR_RESPONSE = { description: "Error", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } };

export function buildOpenApi(routes: PublishedRoute[], info: { title: string; version: string }): JsonSchema {
	const paths: Record<string, Record<string, JsonSchema>> = {};
	for (const route of [...routes].sort((a, b) => a.path.localeCompare(b.path))) {
		const openPath = route.path.replace(/:([A-Za-z0-9_]+)\??/g, "{$1}");
		const pathNames = [...route.path.matchAll(/:([A-Za-z0-9_]+)/g)].map(m => m[1]);
		const params = (route.definition?.params ?? {}) as Record<string, Rule>;
		const method = route.method.toLowerCase();

		const parameters: JsonSchema[] = pathNames.map(name => ({ name, in: "path", required: true, schema: params[name] ? ruleToSchema(params[name]) : { type: "string" } }));
		const rest = Object.fromEntries(Object.entries(params).filter(([name]) => !pathNames.includes(name)));
		const operation: JsonSchema = {
			operationId: route.action,
			summary: route.definition?.summary ?? route.definition?.description ?? route.action,
			...(route.definition?.description ? { description: route.definition.description } : {}),
			tags: [route.action.split(".")[0]],
			...security(route.definition),
			responses: { "200": { description: "OK" }, "4XX": ERROR_RESPONSE, "5XX": ERROR_RESPONSE },
		};
		if (method === "get" || method === "delete") {
			const body = objectSchema(rest);
			for (const [name, schema] of Object.entries(body.properties as Record<string, JsonSchema>))
				parameters.push({ name, in: "query", required: ((body.required as string[]) ?? []).includes(name), schema });
		} else if (Object.keys(rest).length) {
			operation.requestBody = { required: true, content: { "application/json": { schema: objectSchema(rest) } } };
		}
		if (parameters.length) operation.parameters = parameters;
		(paths[openPath] ??= {})[method] = operation;
	}

	return {
		openapi: "3.0.3",
		info,
		paths,
		components: {
			securitySchemes: { bearerAuth: { type: "http", scheme: "bearer", bearerFormat: "JWT" } },
			schemas: {
				Error: {
					type: "object",
					properties: {
						name: { type: "string" },
						message: { type: "string" },
						code: { type: "integer" },
						type: { type: "string" },
						data: {},
					},
					required: ["name", "message", "code"],
				},
			},
		},
	};
}
