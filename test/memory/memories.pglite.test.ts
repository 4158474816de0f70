import { silentLogger } from "../../src/logger.js";
import { createPgliteDb } from "../../src/state/db.js";
import { migrate } from "../../src/state/migrate.js";
import { memoryStoreSuite } from "./store-suite.js";

/** The production constructor of embedded mode (`capstan dev`), in memory, migrated. */
async function pglite(pgvector: boolean) {
  const db = await createPgliteDb({ dataDir: "memory://", logger: silentLogger(), pgvector });
  await migrate(db, silentLogger());
  return { db, close: () => db.close() };
}

// PGlite as `capstan dev` runs it, with pgvector (HNSW); and without it: the exact fallback
// path, tested whatever the machine's server has.
memoryStoreSuite("PGlite with pgvector", "pgvector", () => pglite(true));
memoryStoreSuite("PGlite without pgvector (exact fallback)", "exact", () => pglite(false));
