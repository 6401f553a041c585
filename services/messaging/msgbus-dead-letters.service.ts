/**
 * The dead letters of the bus: messages a webhook refused on every attempt. A service of its own
 * because DbMixin keeps one entity per service; `msgbus` records them here.
 */
import type { Context } from "moleculer";
import { DbMixin, type DbMethods } from "../../mixins/db.mixin";
import { TenantMixin, companyIdParam, type TenantMethods } from "../../mixins/tenant.mixin";
import { idParam, listParams, pageOf, type ListQuery } from "../../lib/org/params";
import { serviceSchema } from "../../lib/service";
import type { RequestMeta } from "../../types/context";
import type { EntityDefinition } from "../../types/entity";
import type { DeadLetter } from "../../types/bus";
import type { EntityEvent } from "../../types/org";
import { topicParam } from "../../lib/bus/subscriptions";
import { DEAD_LETTER_SERVICE } from "../../lib/bus/names";

const DeadLetterEntity: EntityDefinition = {
	name: "bus_dead_letters",
	// Nothing caches dead letters: a write need not clean caches on every node.
	cached: false,
	fields: {
		companyId: { type: "string", required: true, max: 64 },
		subscriptionId: { type: "string", required: true, max: 64 },
		topic: { type: "string", required: true, max: 100 },
		url: { type: "string", required: true, max: 2048 },
		messageId: { type: "string", required: true, max: 64 },
		message: { type: "json", required: true },
		attempts: { type: "integer", required: true },
		lastStatus: { type: "integer" },
		lastError: { type: "string", required: true, max: 1000 },
		failedAt: { type: "date", required: true },
	},
	// A message delivered twice (at-least-once) and refused twice is one dead letter.
	indexes: [{ fields: ["subscriptionId", "messageId"], unique: true }, { fields: ["companyId", "failedAt"] }],
	searchFields: ["topic", "lastError"],
};

type Ctx<P = unknown> = Context<P, RequestMeta>;
type Svc = DbMethods & TenantMethods;
type RecordParams = Omit<DeadLetter, "id" | "failedAt">;

const DeadLetterService = serviceSchema({
	name: DEAD_LETTER_SERVICE,
	mixins: [DbMixin(DeadLetterEntity), TenantMixin("Dead letter")],
	settings: { rest: "/bus", app: "messaging" },

	actions: {
		list: {
			rest: "GET /dead-letters",
			permission: "bus:subscribe",
			description: "My company's dead letters, newest first: messages a webhook refused on every attempt, with the last error.",
			params: { $$strict: true, ...listParams, topic: { ...topicParam, optional: true }, subscriptionId: { ...idParam, optional: true }, companyId: companyIdParam },
			handler(this: Svc, ctx: Ctx<ListQuery & { topic?: string; subscriptionId?: string; companyId?: string }>) {
				const { topic, subscriptionId, companyId } = ctx.params;
				const query = { ...(topic ? { topic } : {}), ...(subscriptionId ? { subscriptionId } : {}) };
				return this.listEntities(ctx, { query: this.tenantQuery(ctx, query, companyId), ...pageOf(ctx.params, "-failedAt") });
			},
		},

		/** Stores a dead letter once per subscription and message, however often it is reported. */
		record: {
			visibility: "public",
			params: {
				companyId: idParam, subscriptionId: idParam, topic: "string", url: "string", messageId: idParam, message: "object",
				attempts: { type: "number", integer: true, min: 0 }, lastStatus: { type: "number", integer: true, nullable: true }, lastError: "string",
			},
			async handler(this: Svc, ctx: Ctx<RecordParams>) {
				const letter = { ...ctx.params, lastError: ctx.params.lastError.slice(0, 1000), failedAt: new Date() };
				try {
					return await this.createEntity(ctx, letter);
				} catch (err) {
					if ((err as { type?: string }).type !== "CONFLICT") throw err;
					const [existing] = await this.findEntities(ctx, { query: { subscriptionId: letter.subscriptionId, messageId: letter.messageId }, limit: 1 });
					return existing;
				}
			},
		},
	},

	events: {
		async "company.company.removed"(this: Svc, ctx: Context<EntityEvent>) {
			await this.removeEntities(ctx, { companyId: ctx.params.entity.id });
		},
	},
});

export default DeadLetterService;
