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
 */
import { createHash } from "node:crypto";
import type { RateLimiter, RateLimitRule } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { Queryable } from "../state/db.js";
import { authenticateApiKey } from "../state/tenants.js";

export interface Principal {
  tenantId: string;
  keyId: string;
}

export interface AuthOptions {
  /** Cache lifetime of a successful lookup; capped at 10 s. Default 5,000 ms; 0 disables the cache. */
  cacheTtlMs?: number;
  /** Most cached keys. Default 10,000. */
  cacheMaxEntries?: number;
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

export function createAuthenticator(db: Queryable, opts: AuthOptions = {}): Authenticator {
  const ttlMs = Math.min(opts.cacheTtlMs ?? 5_000, 10_000);
  const maxEntries = Math.max(1, opts.cacheMaxEntries ?? 10_000);
  // Keyed by a hash of the secret, never the secret itself. Map order = insertion order = age.
  const cache = new Map<string, Principal & { expiresAt: number }>();

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

      // A key this replica has seen valid (its cache entry just expired) is re-checked without the
      // per-address limit: one client retrying a revoked key must not lock out every good key
      // behind the same address. Only keys never seen valid here can be refused by it.
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
      const found = await authenticateApiKey(db, secret);
      if (!found) {
        if (failures) await failures.limiter.consume(bucket, failures.rule, 1).catch(() => undefined);
        throw unauthorized("invalid or revoked API key");
      }
      if (ttlMs > 0) {
        cache.set(h, { ...found, expiresAt: now + ttlMs });
        while (cache.size > maxEntries) {
          const oldest = cache.keys().next();
          if (oldest.done) break;
          cache.delete(oldest.value);
        }
      }
      return found;
    },
    size: () => cache.size,
  };
}
