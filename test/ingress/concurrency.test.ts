/**
 * Limits and keys that must hold exactly when requests race: real HTTP
 * requests fired at once (Promise.all) against real PostgreSQL and Redis,
 * through two ingress replicas where a replica could matter.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveSettings } from "../../src/config/config.js";
import { createAuthenticator } from "../../src/ingress/auth.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import type { Queryable } from "../../src/state/db.js";
import { createApiKey, revokeApiKey, updateTenantLimits } from "../../src/state/tenants.js";
import { call, createHarness, obj, type Harness } from "./harness.js";

let h: Harness;
let one: RunningIngress;
let two: RunningIngress;
beforeAll(async () => {
  h = await createHarness();
  one = await h.start({ rateLimit: false, coord: h.openCoord() });
  two = await h.start({ rateLimit: false, coord: h.openCoord() });
});
afterAll(async () => {
  await h?.close();
});

const idem = (key: string) => ({ "idempotency-key": key });

async function threads(base: string, key: string, n: number): Promise<string[]> {
  const out = await Promise.all(
    Array.from({ length: n }, () => call(base, "POST", "/v1/threads", { key, json: {} })),
  );
  return out.map((r) => {
    if (r.status !== 201) throw new Error(`create thread: ${r.status} ${r.text}`);
    return obj(r.body).id as string;
  });
}

describe("the per-tenant pending-run cap under concurrency", () => {
  it("cap 20, 100 concurrent creates on distinct threads through two replicas: exactly 20 accepted", async () => {
    for (let round = 0; round < 3; round++) {
      const ten = await h.tenant();
      await updateTenantLimits(h.t.db, ten.id, { maxPending: 20 });
      const ids = await threads(one.url, ten.key, 100);
      const answers = await Promise.all(
        ids.map((threadId, i) =>
          call(i % 2 === 0 ? one.url : two.url, "POST", `/v1/threads/${threadId}/runs`, {
            key: ten.key,
            json: { agent: "echo", input: `run ${i}` },
          }),
        ),
      );
      const accepted = answers.filter((a) => a.status === 202);
      const refused = answers.filter((a) => a.status === 429);
      expect(accepted.length, `round ${round}`).toBe(20);
      expect(refused.length, `round ${round}`).toBe(80);
      for (const r of refused) expect(obj(r.body)).toMatchObject({ code: "too_many_runs", limit: 20 });
      const pending = await h.t.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM runs WHERE tenant_id = $1 AND status IN ('queued', 'running', 'waiting')",
        [ten.id],
      );
      expect(pending.rows[0]!.n).toBe(20);
    }
  });

  it("a run that leaves the pending set frees its place: the 21st create then succeeds", async () => {
    const ten = await h.tenant();
    await updateTenantLimits(h.t.db, ten.id, { maxPending: 2 });
    const [a, b, c] = await threads(one.url, ten.key, 3);
    const r1 = await call(one.url, "POST", `/v1/threads/${a}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "1" },
    });
    await call(one.url, "POST", `/v1/threads/${b}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "2" },
    });
    const full = await call(two.url, "POST", `/v1/threads/${c}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "3" },
    });
    expect(full.status).toBe(429);
    expect(
      (await call(two.url, "POST", `/v1/runs/${String(obj(r1.body).id)}/cancel`, { key: ten.key })).status,
    ).toBe(200);
    const now = await call(two.url, "POST", `/v1/threads/${c}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "3" },
    });
    expect(now.status, now.text).toBe(202);
  });
});

describe("one Idempotency-Key is one effect across routes", () => {
  it("create thread and create run racing with one key (20 pairs, two replicas): one effect, the other refused", async () => {
    const ten = await h.tenant();
    const targets = await threads(one.url, ten.key, 20);
    const threadsBefore = await h.t.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM threads WHERE tenant_id = $1",
      [ten.id],
    );
    const pairs = await Promise.all(
      targets.map((threadId, i) =>
        Promise.all([
          call(i % 2 === 0 ? one.url : two.url, "POST", "/v1/threads", {
            key: ten.key,
            json: {},
            headers: idem(`pair-${i}`),
          }),
          call(i % 2 === 0 ? two.url : one.url, "POST", `/v1/threads/${threadId}/runs`, {
            key: ten.key,
            json: { agent: "echo", input: `pair ${i}` },
            headers: idem(`pair-${i}`),
          }),
        ]),
      ),
    );
    let threadWins = 0;
    for (const [i, [th, run]] of pairs.entries()) {
      const statuses = [th.status, run.status].sort();
      expect(statuses, `pair ${i}: ${th.text} / ${run.text}`).toEqual(
        th.status === 201 ? [201, 422] : [202, 422],
      );
      const loser = th.status === 422 ? th : run;
      expect(obj(loser.body)).toMatchObject({
        code: "idempotency_key_reused",
        fields: [{ field: "Idempotency-Key" }],
      });
      if (th.status === 201) threadWins++;
    }
    // In the database: per key, exactly one effect (a stored thread answer xor a run).
    const effects = await h.t.db.query<{ key: string; n: number }>(
      `SELECT key, count(*)::int AS n FROM (
         SELECT key FROM idempotency_keys WHERE tenant_id = $1
         UNION ALL SELECT idempotency_key FROM runs WHERE tenant_id = $1 AND idempotency_key IS NOT NULL
       ) k GROUP BY key`,
      [ten.id],
    );
    expect(effects.rows).toHaveLength(20);
    for (const e of effects.rows) expect(e.n, e.key).toBe(1);
    const threadsAfter = await h.t.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM threads WHERE tenant_id = $1",
      [ten.id],
    );
    expect(threadsAfter.rows[0]!.n - threadsBefore.rows[0]!.n).toBe(threadWins);
  });

  it("a run's key cannot also cancel, and a cancel's key cannot also create a run, when they race", async () => {
    const ten = await h.tenant();
    const [t1, t2] = await threads(one.url, ten.key, 2);
    const victim = await call(one.url, "POST", `/v1/threads/${t1}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "to cancel" },
    });
    const victimId = obj(victim.body).id as string;
    const [cancel, run] = await Promise.all([
      call(one.url, "POST", `/v1/runs/${victimId}/cancel`, { key: ten.key, headers: idem("mixed") }),
      call(two.url, "POST", `/v1/threads/${t2}/runs`, {
        key: ten.key,
        json: { agent: "echo", input: "new" },
        headers: idem("mixed"),
      }),
    ]);
    expect([cancel.status, run.status].sort()).toEqual(cancel.status === 200 ? [200, 422] : [202, 422]);
    const status = await h.t.db.query<{ status: string }>("SELECT status FROM runs WHERE id = $1", [
      victimId,
    ]);
    expect(status.rows[0]!.status).toBe(cancel.status === 200 ? "cancelled" : "queued");
  });
});

describe("a revoked key's retries never lock out other keys from its address", () => {
  it("retrying a revoked key on two replicas is 401 every time; the address keeps its failure budget", async () => {
    const settings = resolveSettings({
      flags: { http: { authFailuresPerMinute: 3, trustProxy: "127.0.0.1" } },
    });
    // A 1 ms cache: every retry re-checks the database, as after any cache expiry.
    const r1 = await h.start({ settings, auth: { cacheTtlMs: 1 }, rateLimit: false, coord: h.openCoord() });
    const r2 = await h.start({ settings, auth: { cacheTtlMs: 1 }, rateLimit: false, coord: h.openCoord() });
    const from = { "x-forwarded-for": "10.9.0.1" };
    const ten = await h.tenant();
    const doomed = await createApiKey(h.t.db, ten.id, "doomed");
    expect(
      (await call(r1.url, "POST", "/v1/threads", { key: doomed.key, json: {}, headers: from })).status,
    ).toBe(201);
    await revokeApiKey(h.t.db, doomed.info.id);

    for (let wave = 0; wave < 3; wave++) {
      const retries = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          call(i % 2 === 0 ? r1.url : r2.url, "POST", "/v1/threads", {
            key: doomed.key,
            json: {},
            headers: from,
          }),
        ),
      );
      for (const r of retries) expect(obj(r.body)).toMatchObject({ status: 401, code: "unauthorized" });
    }
    // A key neither replica has seen, from the same address: not locked out.
    const fresh = await createApiKey(h.t.db, ten.id, "fresh");
    const ok = await Promise.all(
      [r1, r2].map((r) => call(r.url, "POST", "/v1/threads", { key: fresh.key, json: {}, headers: from })),
    );
    expect(ok.map((r) => r.status)).toEqual([201, 201]);
    // Keys no one has are still counted against the address: 3 failures, then 429.
    const guesses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await call(i % 2 === 0 ? r1.url : r2.url, "POST", "/v1/threads", {
        key: `cap_guess_${i}`,
        json: {},
        headers: from,
      });
      guesses.push(r.status);
    }
    expect(guesses).toEqual([401, 401, 401, 429]);
  });

  it("a key found revoked is answered from memory: its retries neither reach PostgreSQL nor spend the budget", async () => {
    const ten = await h.tenant();
    const doomed = await createApiKey(h.t.db, ten.id, "doomed");
    await revokeApiKey(h.t.db, doomed.info.id);
    let lookups = 0;
    // The real database, with key lookups counted.
    const counted: Queryable = {
      query: (text, params, opts) => {
        if (text.includes("FROM api_keys")) lookups++;
        return h.t.db.query(text, params, opts);
      },
    };
    const rule = { points: 2, durationMs: 60_000 };
    const auth = createAuthenticator(counted, { failures: { limiter: h.coord.rateLimiter, rule } });
    const client = `10.9.1.${Math.floor(Math.random() * 250)}`;
    const tries = await Promise.allSettled(
      Array.from({ length: 20 }, () => auth.authenticate(`Bearer ${doomed.key}`, client)),
    );
    for (const t of tries)
      expect(t.status === "rejected" && (t.reason as { code?: string }).code).toBe("unauthorized");
    // Concurrent first tries may each ask once; later ones are answered from memory.
    const afterBurst = lookups;
    expect(afterBurst).toBeGreaterThan(0);
    for (let i = 0; i < 10; i++)
      await expect(auth.authenticate(`Bearer ${doomed.key}`, client)).rejects.toThrow();
    expect(lookups).toBe(afterBurst);
    const bucket = await h.coord.rateLimiter.consume(`authfail:${client}`, rule, 0);
    expect(bucket.remaining).toBe(2);
  });
});
