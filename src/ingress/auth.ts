/**
 * Bearer API-key authentication. Positive lookups are cached in process
 * memory for at most `ttlMs` (bounded entries, oldest evicted first), so a
 * revoked key stops working within that time on every replica; unknown keys
 * are never cached (they would let a flood of garbage keys evict good ones).
 *
 * Failed lookups are counted per client address in the shared rate limiter;
 * a client past `failures.rule` is refused (429) before the database is asked,
 * so guessing keys, or a misconfigured client retrying a revoked one, cannot
 * load PostgreSQL. Successful lookups cost nothing there, and keys already seen
 * valid by this replica skip the check, so many keys behind one address (a
 * customer's backend) keep working while it is locked; a key's very first use
 * from a locked address waits for the bucket to refill. When the limiter
 * is unavailable the lookup goes ahead (fail open: the database still answers).
 *
 * A revoked key is not a guess: the database says it exists and is revoked,
 * and that answer is remembered (bounded, `revokedTtlMs`; revocation is
 * permanent, so the memory is never wrong). Its retries are answered 401 from
 * memory and never charged to the address, on every replica, so a client
 * retrying its revoked key cannot lock out the other keys behind its address.
 */
import { createHash } from "node:crypto";
import type { RateLimiter, RateLimitRule } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { Queryable } from "../state/db.js";
import { lookupApiKey } from "../state/tenants.js";

export interface Principal {
  tenantId: string;
  keyId: string;
}

export interface AuthOptions {
  /** Cache lifetime of a successful lookup; capped at 10 s. Default 5,000 ms; 0 disables the cache. */
  cacheTtlMs?: number;
  /** Most cached keys, and separately most remembered revoked keys. Default 10,000. */
  cacheMaxEntries?: number;
  /** How long a key found revoked is answered from memory. Default 60,000 ms. */
  revokedTtlMs?: number;
  /** Limit failed lookups per client address (see above). */
  failures?: { limiter: RateLimiter; rule: RateLimitRule; onRefused?: () => void };
}

const MAX_KEY_CHARS = 256;

export interface Authenticator {
  /**
   * The principal for an `Authorization` header value; throws `unauthorized`,
   * or `rate_limited` when `client` (its address) failed too often.
   */
  authenticate(header: string | undefined, client?: string): Promise<Principal>;
  /** Cached entries (for tests and metrics). */
  size(): number;
}

function unauthorized(message: string): CapstanError {
  return new CapstanError("unauthorized", message);
}

/** Insert into a Map used as a bounded cache (insertion order = age): the oldest entries go first. */
function remember<V>(map: Map<string, V>, key: string, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  while (map.size > max) {
    const oldest = map.keys().next();
    if (oldest.done) break;
    map.delete(oldest.value);
  }
}

export function createAuthenticator(db: Queryable, opts: AuthOptions = {}): Authenticator {
  const ttlMs = Math.min(opts.cacheTtlMs ?? 5_000, 10_000);
  const maxEntries = Math.max(1, opts.cacheMaxEntries ?? 10_000);
  // Keyed by a hash of the secret, never the secret itself. Map order = insertion order = age.
  const cache = new Map<string, Principal & { expiresAt: number }>();
  const revokedTtlMs = Math.max(0, opts.revokedTtlMs ?? 60_000);
  // Hashes of keys the database said are revoked → until when to answer that from memory.
  const revoked = new Map<string, number>();

  return {
    async authenticate(header, client) {
      if (!header) throw unauthorized("missing Authorization header: send `Authorization: Bearer <api key>`");
      const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
      if (!m) throw unauthorized("malformed Authorization header: expected `Bearer <api key>`");
      const secret = m[1]!;
      if (secret.length > MAX_KEY_CHARS) throw unauthorized("invalid API key");
      const h = createHash("sha256").update(secret).digest("base64");
      const now = Date.now();
      const hit = cache.get(h);
      if (hit && hit.expiresAt > now) return { tenantId: hit.tenantId, keyId: hit.keyId };
      if (hit) cache.delete(h);
      const revokedUntil = revoked.get(h);
      if (revokedUntil !== undefined && revokedUntil > now) throw unauthorized("invalid or revoked API key");

      // A key this replica has seen valid (its cache entry just expired) is re-checked without the
      // per-address limit, so good keys behind a locked address keep working. Only keys never
      // seen valid here can be refused by it; only keys the database does not know are charged.
      const failures = client !== undefined && !hit ? opts.failures : undefined;
      const bucket = `authfail:${client}`;
      if (failures) {
        // A zero-cost take reads the bucket without spending it.
        const peek = await failures.limiter.consume(bucket, failures.rule, 0).catch(() => undefined);
        if (peek && peek.remaining < 1) {
          failures.onRefused?.();
          const retryAfterSeconds = Math.max(
            1,
            Math.ceil(failures.rule.durationMs / failures.rule.points / 1000),
          );
          throw new CapstanError(
            "rate_limited",
            `too many failed API-key attempts from this client; retry in ${retryAfterSeconds} s`,
            { details: { retryAfterSeconds } },
          );
        }
      }
      const found = await lookupApiKey(db, secret);
      if (!found || found.revoked) {
        if (found) {
          if (revokedTtlMs > 0) remember(revoked, h, now + revokedTtlMs, maxEntries);
        } else if (failures) {
          await failures.limiter.consume(bucket, failures.rule, 1).catch(() => undefined);
        }
        throw unauthorized("invalid or revoked API key");
      }
      revoked.delete(h);
      const principal = { tenantId: found.tenantId, keyId: found.keyId };
      if (ttlMs > 0) remember(cache, h, { ...principal, expiresAt: now + ttlMs }, maxEntries);
      return principal;
    },
    size: () => cache.size,
  };
}
