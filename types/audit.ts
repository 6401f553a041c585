/**
 * Audit events. The `log` service records them; no service writes audit records itself.
 *   - `audit.operation.performed`: emitted by the audit middleware on the serving node after
 *     every mutating action called from outside (through the gateway or a real-time channel);
 *   - `security.login.attempted`: emitted by `security` on every login attempt.
 */
export interface OperationPerformedEvent {
	at: string;
	requestId: string | null;
	userId: string | null;
	username: string | null;
	companyId: string | null;
	deptId: string | null;
	service: string;
	action: string;
	/** The record the operation was about (the `id` param, else the result's `id`). */
	target: string | null;
	/** The params with secrets (passwords, tokens, keys) replaced by "[redacted]". */
	params: Record<string, unknown>;
	result: "ok" | "error";
	error: { code: number; type: string; message: string } | null;
	durationMs: number;
	ip: string | null;
}

export interface LoginAttemptedEvent {
	at: string;
	requestId: string | null;
	username: string;
	/** Known when the username exists. */
	userId: string | null;
	companyId: string | null;
	result: "ok" | "failure" | "locked" | "disabled";
	reason: string | null;
	ip: string | null;
	device: string | null;
}
