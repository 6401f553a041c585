/** A namespace of the config centre as it stands at one version. */
export interface ConfigSnapshot {
	namespace: string;
	/** 0 when the namespace was never set. */
	version: number;
	values: Record<string, unknown>;
}

/** Payload of the `config.namespace.updated` event, broadcast to every node on each change. */
export interface ConfigChangedEvent extends ConfigSnapshot {
	user: { id: string; username: string } | null;
}
