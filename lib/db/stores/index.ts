import type { EntityDefinition } from "../../../types/entity";
import type { StoreSettings } from "../../../types/platform";
import type { Store } from "./base.store";
import { MongoStore } from "./mongo.store";
import { NeDbStore } from "./nedb.store";
import { SqlStore } from "./sql.store";

export { Store } from "./base.store";

/** The store the platform settings choose for an entity. */
export function createStore(entity: EntityDefinition, settings: StoreSettings): Store {
	switch (settings.kind) {
		case "nedb": return new NeDbStore(entity, settings.dataDir);
		case "sql": return new SqlStore(entity, settings.url);
		case "mongo": return new MongoStore(entity, settings.url);
	}
}
