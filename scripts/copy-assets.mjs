// tsc does not copy non-TS files: ship the SQL migrations beside the compiled migrator.
import { cpSync } from "node:fs";
cpSync("src/state/migrations", "dist/state/migrations", { recursive: true });
