import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";

/** The machine's Redis, shared by every test file: never FLUSHALL it, use a key prefix. */
export const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

/** A fresh key prefix (hex only, so it is safe inside a SCAN MATCH pattern). */
export function randomPrefix(): string {
  return `capstan_t_${randomBytes(6).toString("hex")}:`;
}

/** A plain client for inspecting Redis from a test; the caller disconnects it. */
export function adminRedis(): Redis {
  return new Redis(REDIS_URL, { maxRetriesPerRequest: 1, connectTimeout: 2_000, lazyConnect: false });
}

/** Delete every key under `prefix`; returns how many were removed. */
export async function deleteKeys(prefix: string): Promise<number> {
  const r = adminRedis();
  try {
    let cursor = "0";
    let removed = 0;
    do {
      const [next, keys] = await r.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length > 0) removed += await r.unlink(...keys);
    } while (cursor !== "0");
    return removed;
  } finally {
    r.disconnect();
  }
}
