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

/** A unique client name prefix for `connectionName`, so a test sees only its own connections. */
export function randomConnectionName(): string {
  return `capstan_t_${randomBytes(4).toString("hex")}`;
}

/** `CLIENT LIST`, one record of fields per connection. */
export async function clientList(admin: Redis): Promise<Record<string, string>[]> {
  const list = String(await admin.call("CLIENT", ["LIST"]));
  return list
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) =>
      Object.fromEntries(
        line
          .trim()
          .split(" ")
          .map((kv) => kv.split("=", 2) as [string, string]),
      ),
    );
}

/**
 * Is the connection named `name` blocked in an `XREAD` right now? (`cmd=xread`
 * and `b` among its flags.) Poll it to know that a blocked read has really
 * reached Redis, instead of sleeping and hoping it has.
 */
export async function xreadBlocked(admin: Redis, name: string): Promise<boolean> {
  return (await clientList(admin)).some(
    (c) => c.name === name && c.cmd === "xread" && (c.flags ?? "").includes("b"),
  );
}
