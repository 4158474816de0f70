import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { Db } from "../state/db.js";
import { authenticateApiKey, createApiKey, ensureTenant } from "../state/tenants.js";

/**
 * The dev API key: created once for tenant "dev" and kept in
 * `<dataDir>/dev-key` (mode 600) so every `capstan dev` start can print it.
 * Only a development convenience: production keys are shown once and never
 * stored anywhere but as a hash.
 */
export async function devApiKey(db: Db, dataDir: string): Promise<string> {
  const file = resolve(dataDir, "dev-key");
  if (existsSync(file)) {
    const key = readFileSync(file, "utf8").trim();
    if (key && (await authenticateApiKey(db, key))) return key;
  }
  const tenant = await ensureTenant(db, "dev");
  const { key } = await createApiKey(db, tenant.id, "capstan dev");
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, key + "\n", { mode: 0o600 });
  chmodSync(file, 0o600);
  return key;
}

/** The banner `capstan dev` prints: URL, key, and a conversation to paste. */
export function devBanner(opts: {
  url: string;
  key: string;
  agent: string;
  model: string;
  dataDir: string;
}): string {
  const h = `-H "authorization: Bearer $CAPSTAN_KEY" -H "content-type: application/json"`;
  const id = `sed -E 's/^\\{"id":"([^"]+)".*/\\1/'`;
  return [
    ``,
    `Capstan dev is running at ${opts.url}`,
    `  data:   ${opts.dataDir} (embedded PostgreSQL; survives restarts)`,
    `  agent:  ${opts.agent} on ${opts.model}`,
    `  key:    ${opts.key}`,
    ``,
    `Start a conversation and stream it (paste into a shell):`,
    ``,
    `export CAPSTAN_URL=${opts.url} CAPSTAN_KEY=${opts.key}`,
    `T=$(curl -s -X POST $CAPSTAN_URL/v1/threads ${h} -d '{}' | ${id})`,
    `R=$(curl -s -X POST $CAPSTAN_URL/v1/threads/$T/runs ${h} -d '{"agent":"${opts.agent}","input":"lookup_order {\\"orderId\\": \\"A100\\"}"}' | ${id})`,
    `curl -sN $CAPSTAN_URL/v1/runs/$R/events -H "authorization: Bearer $CAPSTAN_KEY"`,
    `curl -s "$CAPSTAN_URL/v1/threads/$T/messages" -H "authorization: Bearer $CAPSTAN_KEY"`,
    ``,
  ].join("\n");
}
