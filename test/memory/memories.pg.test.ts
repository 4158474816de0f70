import { createTestDb } from "../support/pg.js";
import { memoryStoreSuite } from "./store-suite.js";

// The machine's PostgreSQL: pgvector where the server has it, else the exact fallback.
memoryStoreSuite("PostgreSQL server", "any", async () => {
  const t = await createTestDb();
  return { db: t.db, close: () => t.drop() };
});
