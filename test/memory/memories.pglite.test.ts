import { createMemoryPgliteDb } from "./pglite.js";
import { memoryStoreSuite } from "./store-suite.js";

// PGlite's real pgvector (HNSW), and PGlite without it: the exact fallback
// path, tested whatever the machine's server has.
memoryStoreSuite("PGlite with pgvector", "pgvector", async () => {
  const db = await createMemoryPgliteDb({ pgvector: true });
  return { db, close: () => db.close() };
});

memoryStoreSuite("PGlite without pgvector (exact fallback)", "exact", async () => {
  const db = await createMemoryPgliteDb({ pgvector: false });
  return { db, close: () => db.close() };
});
