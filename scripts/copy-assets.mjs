// tsc does not copy non-TS files: ship them beside the compiled code that reads them
// (relative to its import.meta.url): the SQL migrations beside the migrator, and every
// Lua script (src/coord/redis/lua, src/cost/lua, ...) at its own path under dist.
import { cpSync, readdirSync } from "node:fs";
import { join } from "node:path";

cpSync("src/state/migrations", "dist/state/migrations", { recursive: true });
for (const file of readdirSync("src", { recursive: true, encoding: "utf8" })) {
  if (file.endsWith(".lua")) cpSync(join("src", file), join("dist", file));
}
