/**
 * JSON with object keys sorted at every level (arrays keep their order,
 * undefined properties are dropped, `toJSON` applies as in JSON.stringify):
 * equal values serialise equally, so the result can be hashed as a key
 * (idempotency request hashes, agent versions, cache keys).
 */
export function canonicalJson(v: unknown): string {
  return (
    JSON.stringify(v, (_key, value: unknown) =>
      typeof value === "object" && value !== null && !Array.isArray(value)
        ? Object.fromEntries(
            Object.keys(value)
              .sort()
              .map((k) => [k, (value as Record<string, unknown>)[k]]),
          )
        : value,
    ) ?? "null"
  );
}
