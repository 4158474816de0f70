/**
 * /openapi.json is written beside the routes, not derived from them
 * (src/ingress/openapi.ts): this keeps the two from drifting. The routes are
 * the ones the real app registers (Fastify's onRoute hook, through
 * `IngressDeps.onRoute`), so a route added without its documentation, a path
 * renamed on one side only, or a documented operation that no longer exists
 * fails here.
 */
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveSettings } from "../../src/config/config.js";
import { createMemoryCoordination } from "../../src/coord/memory.js";
import type { Coordination } from "../../src/coord/types.js";
import { buildIngress } from "../../src/ingress/app.js";
import { silentLogger } from "../../src/logger.js";
import { createTestDb, type TestDb } from "../support/pg.js";

type Json = Record<string, unknown>;
interface Route {
  method: string;
  /** Fastify's form, `/v1/runs/:id`. */
  url: string;
  /** OpenAPI's form, `/v1/runs/{id}`. */
  path: string;
}

const OPERATIONS = ["get", "put", "post", "delete", "patch", "options", "head", "trace"] as const;
const toOpenApiPath = (url: string): string => url.replace(/:([A-Za-z0-9_]+)/g, "{$1}");
const isError = (status: string): boolean => /^[45]\d\d$/.test(status);

describe("/openapi.json documents every route the ingress registers", () => {
  let t: TestDb;
  let coord: Coordination;
  let app: FastifyInstance;
  const routes: Route[] = [];
  let paths: Record<string, Record<string, Json>>;

  beforeAll(async () => {
    t = await createTestDb();
    coord = createMemoryCoordination({ events: { maxLen: 1_000, ttlMs: 60_000 } });
    app = await buildIngress({
      db: t.db,
      coord,
      settings: resolveSettings({}),
      logger: silentLogger(),
      agentNames: () => ["echo"],
      onRoute: (r) => {
        for (const method of [r.method].flat()) {
          routes.push({ method: method.toLowerCase(), url: r.url, path: toOpenApiPath(r.url) });
        }
      },
    });
    const res = await app.inject({ method: "GET", url: "/openapi.json" });
    expect(res.statusCode).toBe(200);
    paths = res.json<{ paths: Record<string, Record<string, Json>> }>().paths;
  });

  afterAll(async () => {
    await app?.close();
    await coord?.close();
    await t?.drop();
  });

  const operation = (r: Route): Json | undefined => paths[r.path]?.[r.method];
  const responses = (r: Route): Record<string, Json> =>
    (operation(r)?.responses as Record<string, Json> | undefined) ?? {};

  it("sees the app's routes (the hook is wired)", () => {
    const seen = routes.map((r) => `${r.method} ${r.url}`);
    expect(seen).toContain("get /healthz");
    expect(seen).toContain("post /v1/threads/:id/runs");
    expect(seen).toContain("get /v1/runs/:id/events");
  });

  it("has an operation for every route", () => {
    const missing = routes.filter((r) => !operation(r)).map((r) => `${r.method.toUpperCase()} ${r.path}`);
    expect(missing).toEqual([]);
  });

  it("documents a success and an error answer for every route", () => {
    const incomplete = routes
      .map((r) => ({ r, statuses: Object.keys(responses(r)) }))
      .filter(({ statuses }) => !statuses.some((s) => /^2\d\d$/.test(s)) || !statuses.some(isError))
      .map(({ r, statuses }) => `${r.method.toUpperCase()} ${r.path}: ${statuses.join(", ") || "none"}`);
    expect(incomplete).toEqual([]);
  });

  it("documents exactly the path parameters of every route", () => {
    const wrong: string[] = [];
    for (const r of routes) {
      const op = operation(r);
      if (!op) continue;
      const inPath = [...r.url.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]!).sort();
      const documented = ((op.parameters as Json[] | undefined) ?? [])
        .filter((p) => p.in === "path")
        .map((p) => String(p.name))
        .sort();
      if (JSON.stringify(inPath) !== JSON.stringify(documented)) {
        wrong.push(
          `${r.method.toUpperCase()} ${r.path}: route [${inPath.join(", ")}], documented [${documented.join(", ")}]`,
        );
      }
    }
    expect(wrong).toEqual([]);
  });

  it("documents no operation that is not a route", () => {
    const registered = new Set(routes.map((r) => `${r.method} ${r.path}`));
    const extra: string[] = [];
    for (const [path, item] of Object.entries(paths)) {
      for (const method of OPERATIONS) {
        if (item[method] && !registered.has(`${method} ${path}`))
          extra.push(`${method.toUpperCase()} ${path}`);
      }
    }
    expect(extra).toEqual([]);
  });

  it("answers /v1 errors as problem+json, 401 included (every /v1 route authenticates)", () => {
    const wrong: string[] = [];
    for (const r of routes.filter((x) => x.url.startsWith("/v1/"))) {
      const res = responses(r);
      if (!res["401"]) wrong.push(`${r.method.toUpperCase()} ${r.path}: no 401`);
      for (const [status, answer] of Object.entries(res)) {
        const content = answer.content as Json | undefined;
        if (isError(status) && !content?.["application/problem+json"]) {
          wrong.push(`${r.method.toUpperCase()} ${r.path}: ${status} is not problem+json`);
        }
      }
    }
    expect(wrong).toEqual([]);
  });
});
