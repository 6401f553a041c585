import type { Context, LoggerInstance, ServiceBroker } from "moleculer";
import { EDGE_CALLERS, errorSummary, isAudited, targetOf } from "../lib/audit/operation";
import { redactParams } from "../lib/audit/redact";
import type { OperationPerformedEvent } from "../types/audit";
import type { RequestMeta } from "../types/context";

type ActionDef = { name: string; rawName?: string; rest?: unknown; audit?: unknown; visibility?: unknown; service?: { name: string } };
type Handler = (ctx: Context<unknown, RequestMeta>) => Promise<unknown>;

export const OPERATION_EVENT = "audit.operation.performed";

/**
 * Records every mutating action a client calls, by event, so that no service writes audit
 * records itself. An action is audited when it is published for a method other than GET/HEAD
 * and does not say `audit: false`; a call is recorded when it comes from an edge service (the
 * gateway, a real-time channel), not when one service calls another on the way.
 *
 * Runs on the serving node, around the handler: params are captured (redacted) before the
 * handler can change them, the event (`audit.operation.performed`, balanced: one `log` instance
 * records it) is emitted once the handler settled, and the handler's answer or error passes
 * through unchanged. Calls refused by the params validator never reach the handler and are not
 * recorded: they changed nothing.
 */
const AuditMiddleware = {
	name: "Audit",

	/** Moleculer calls middleware hooks with the broker as `this`. */
	localAction(this: ServiceBroker, handler: Handler, action: ActionDef): Handler {
		if (!isAudited(action)) return handler;
		const logger = this.getLogger("audit");
		const service = action.service?.name ?? action.name.split(".")[0];
		const actionName = action.rawName ?? action.name.slice(service.length + 1);

		return function audited(ctx) {
			if (!ctx.caller || !EDGE_CALLERS.has(ctx.caller)) return handler(ctx);
			const at = new Date().toISOString();
			const started = process.hrtime.bigint();
			const params = safely(() => redactParams(ctx.params), { "[unreadable]": true }, logger);
			const record = (result: unknown, err: unknown) =>
				safely(() => emit(ctx, operation(ctx, { at, service, action: actionName, params, started, result, err }), logger), undefined, logger);
			return handler(ctx).then(
				result => {
					record(result, null);
					return result;
				},
				err => {
					record(null, err ?? new Error("unknown error"));
					throw err;
				},
			);
		};
	},
};

function operation(
	ctx: Context<unknown, RequestMeta>,
	call: { at: string; service: string; action: string; params: Record<string, unknown>; started: bigint; result: unknown; err: unknown },
): OperationPerformedEvent {
	const user = ctx.meta?.user ?? null;
	return {
		at: call.at,
		requestId: ctx.requestID ?? null,
		userId: user?.id ?? null,
		username: user?.username ?? null,
		companyId: user?.companyId ?? null,
		deptId: user?.deptId ?? null,
		service: call.service,
		action: call.action,
		target: targetOf(ctx.params, call.err ? null : call.result),
		params: call.params,
		result: call.err ? "error" : "ok",
		error: call.err ? errorSummary(call.err) : null,
		durationMs: Math.round(Number(process.hrtime.bigint() - call.started) / 1e6),
		ip: ctx.meta?.clientIp ?? null,
	};
}

/** Auditing never makes an action fail: what goes wrong here is logged. */
function safely<T>(work: () => T, fallback: T, logger: LoggerInstance): T {
	try {
		return work();
	} catch (err) {
		logger.error(`Audit middleware failed: ${(err as Error)?.message ?? err}`);
		return fallback;
	}
}

/** The answer never waits for the audit event, and never fails because of it. */
function emit(ctx: Context, event: OperationPerformedEvent, logger: LoggerInstance): void {
	const report = (err: unknown) =>
		logger.error(`Audit event for ${event.service}.${event.action} (request ${event.requestId ?? "-"}) was not sent: ${(err as Error)?.message ?? err}`);
	try {
		Promise.resolve(ctx.emit(OPERATION_EVENT, event)).catch(report);
	} catch (err) {
		report(err);
	}
}

export default AuditMiddleware;
