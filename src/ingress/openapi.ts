/**
 * The OpenAPI 3.1 document, generated from the zod schemas in ./schemas.ts
 * (JSON Schema 2020-12, which OpenAPI 3.1 uses as is). Built once per app.
 */
import { z } from "zod";
import * as s from "./schemas.js";

type Json = Record<string, unknown>;

const REQUESTS = {
  CreateThreadRequest: s.createThreadBody,
  CreateRunRequest: s.createRunBody,
  ResumeRunRequest: s.resumeBody,
  InvalidateCacheRequest: s.invalidateBody,
  PutMemoryRequest: s.putMemoryBody,
  CreateMemoryRequest: s.createMemoryBody,
  SearchMemoriesRequest: s.searchMemoriesBody,
  JsonValue: s.jsonValue,
} as const;

const RESPONSES = {
  Thread: s.threadSchema,
  Run: s.runSchema,
  MessagePage: s.messagePageSchema,
  StepList: s.stepListSchema,
  Problem: s.problemSchema,
  BudgetProblem: s.budgetProblemSchema,
  UsageReport: s.usageReportSchema,
  ThreadUsage: s.threadUsageSchema,
  InvalidateCacheResult: s.invalidateResultSchema,
  Memory: s.memorySchema,
  MemoryPage: s.memoryPageSchema,
  MemorySearchResult: s.memorySearchResultSchema,
} as const;

function components(entries: Record<string, z.ZodType>, io: "input" | "output"): Record<string, Json> {
  const reg = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(entries)) reg.add(schema, { id });
  const out = z.toJSONSchema(reg, { io, uri: (id) => `#/components/schemas/${id}`, unrepresentable: "any" });
  const schemas: Record<string, Json> = {};
  for (const [id, schema] of Object.entries(out.schemas)) {
    // Components are embedded in the document: no per-schema $schema or $id.
    const { $schema: _s, $id: _i, ...rest } = schema as Json;
    schemas[id] = rest;
  }
  return schemas;
}

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });
const json = (name: string): Json => ({ "application/json": { schema: ref(name) } });

/** The `/readyz` body (src/observability/ops-server.ts `readinessBody`), the same for every role. */
const READINESS: Json = {
  type: "object",
  required: ["status", "checks"],
  properties: {
    status: { type: "string", enum: ["ready", "not_ready"] },
    checks: {
      type: "object",
      additionalProperties: {
        type: "object",
        required: ["ok"],
        properties: { ok: { type: "boolean" }, detail: { type: "string" } },
      },
    },
  },
};

const problems = (...statuses: number[]): Json =>
  Object.fromEntries(
    statuses.map((st) => [
      String(st),
      { description: "Problem", content: { "application/problem+json": { schema: ref("Problem") } } },
    ]),
  );

function queryParams(schema: z.ZodObject): Json[] {
  const js = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as {
    properties?: Record<string, Json>;
    required?: string[];
  };
  return Object.entries(js.properties ?? {}).map(([name, p]) => ({
    name,
    in: "query",
    required: js.required?.includes(name) ?? false,
    ...(typeof p.description === "string" ? { description: p.description } : {}),
    schema: p,
  }));
}

const idParam = (what: string): Json => ({
  name: "id",
  in: "path",
  required: true,
  description: `${what} id (uuid)`,
  schema: { type: "string", format: "uuid" },
});
const idempotencyKey: Json = {
  name: "Idempotency-Key",
  in: "header",
  required: false,
  description:
    "Makes the POST safe to retry: the same key with the same body answers the first response; " +
    "with a different body, 422 idempotency_key_reused.",
  schema: { type: "string", minLength: 1, maxLength: s.LIMITS.idempotencyKeyChars },
};
const common = problems(401, 429, 503);

/** Every route, operational ones included, answers 503 `server_busy` once the server is closing. */
const closing: Json = {
  "503": {
    description: "server_busy: the server is shutting down; retry on another replica",
    content: { "application/problem+json": { schema: ref("Problem") } },
  },
};

const budgetExceeded: Json = {
  "402": {
    description:
      "budget_exceeded: the tenant's daily or monthly token budget is used up; it comes back at " +
      "`resets_at` (or when the budget is raised), so do not retry before. A retry of an earlier " +
      "accepted request with the same Idempotency-Key still answers its run.",
    content: { "application/problem+json": { schema: ref("BudgetProblem") } },
  },
};

const memoryPathParams: Json[] = [
  {
    name: "namespace",
    in: "path",
    required: true,
    description: `Memory namespace, 1..${s.LIMITS.memoryNamespaceChars} characters (percent-encoded)`,
    schema: { type: "string", minLength: 1, maxLength: s.LIMITS.memoryNamespaceChars },
  },
  {
    name: "key",
    in: "path",
    required: true,
    description: `Memory key, 1..${s.LIMITS.memoryKeyChars} characters (percent-encoded)`,
    schema: { type: "string", minLength: 1, maxLength: s.LIMITS.memoryKeyChars },
  },
];

/** Answered by every memory route on a server without an embedding model. */
const noMemory: Json = {
  "501": {
    description: "not_implemented: this server has no embedding model configured",
    content: { "application/problem+json": { schema: ref("Problem") } },
  },
};

export function buildOpenApi(): Json {
  return {
    openapi: "3.1.0",
    info: {
      title: "Capstan API",
      version: "1",
      description: "Durable AI agent runs. Errors are application/problem+json with a stable `code`.",
    },
    components: {
      securitySchemes: { apiKey: { type: "http", scheme: "bearer" } },
      schemas: { ...components(REQUESTS, "input"), ...components(RESPONSES, "output") },
    },
    security: [{ apiKey: [] }],
    paths: {
      "/v1/threads": {
        post: {
          summary: "Create a thread",
          parameters: [idempotencyKey],
          requestBody: { required: false, content: json("CreateThreadRequest") },
          responses: {
            "201": { description: "Created", content: json("Thread") },
            ...problems(400, 413, 415, 422),
            ...common,
          },
        },
      },
      "/v1/threads/{id}": {
        get: {
          summary: "Get a thread with its status",
          parameters: [idParam("thread")],
          responses: {
            "200": { description: "The thread", content: json("Thread") },
            ...problems(404),
            ...common,
          },
        },
      },
      "/v1/threads/{id}/messages": {
        get: {
          summary: "List messages in order",
          parameters: [idParam("thread"), ...queryParams(s.messagesQuery)],
          responses: {
            "200": { description: "A page", content: json("MessagePage") },
            ...problems(400, 404),
            ...common,
          },
        },
      },
      "/v1/threads/{id}/runs": {
        post: {
          summary: "Start a run on a thread",
          parameters: [idParam("thread"), idempotencyKey],
          requestBody: { required: true, content: json("CreateRunRequest") },
          responses: {
            "202": { description: "Accepted (queued)", content: json("Run") },
            ...problems(400, 404, 409, 413, 415, 422),
            ...budgetExceeded,
            ...common,
          },
        },
      },
      "/v1/runs/{id}": {
        get: {
          summary: "Get a run",
          parameters: [idParam("run")],
          responses: { "200": { description: "The run", content: json("Run") }, ...problems(404), ...common },
        },
      },
      "/v1/runs/{id}/wait": {
        get: {
          summary: "Wait until the run is terminal or waiting, or the timeout passes",
          parameters: [idParam("run"), ...queryParams(s.waitQuery)],
          responses: {
            "200": { description: "The run", content: json("Run") },
            ...problems(400, 404),
            ...common,
          },
        },
      },
      "/v1/runs/{id}/events": {
        get: {
          summary: "Stream run events (SSE)",
          description:
            'Server-sent events. Ids: "N" for persisted coarse events (gap-free), "N.k" for token deltas. ' +
            "Replays after Last-Event-ID (or ?after=), follows live, ends after run.succeeded, run.failed " +
            "or run.cancelled. 204 when the run is finished and nothing is left after the cursor.",
          parameters: [
            idParam("run"),
            ...queryParams(s.eventsQuery),
            { name: "Last-Event-ID", in: "header", required: false, schema: { type: "string" } },
          ],
          responses: {
            "200": {
              description: "Event stream",
              content: { "text/event-stream": { schema: { type: "string" } } },
            },
            "204": { description: "Finished run, nothing after the cursor" },
            ...problems(400, 404),
            ...common,
          },
        },
      },
      "/v1/runs/{id}/steps": {
        get: {
          summary: "The run's step journal",
          parameters: [idParam("run")],
          responses: {
            "200": { description: "Steps", content: json("StepList") },
            ...problems(404),
            ...common,
          },
        },
      },
      "/v1/runs/{id}/cancel": {
        post: {
          summary: "Cancel a queued, running or waiting run",
          parameters: [idParam("run"), idempotencyKey],
          requestBody: {
            required: false,
            description: "No body, or an empty JSON object.",
            content: { "application/json": { schema: { type: "object", additionalProperties: false } } },
          },
          responses: {
            "200": { description: "The run", content: json("Run") },
            ...problems(400, 404, 409, 413, 415, 422),
            ...common,
          },
        },
      },
      "/v1/runs/{id}/resume": {
        post: {
          summary: "Resume a waiting run with a decision",
          parameters: [idParam("run"), idempotencyKey],
          requestBody: { required: true, content: json("ResumeRunRequest") },
          responses: {
            "200": { description: "The run (queued again)", content: json("Run") },
            ...problems(400, 404, 409, 413, 415, 422),
            ...common,
          },
        },
      },
      "/v1/threads/{id}/usage": {
        get: {
          summary: "A thread's token usage, summed over its retained runs",
          parameters: [idParam("thread")],
          responses: {
            "200": { description: "Usage", content: json("ThreadUsage") },
            ...problems(404),
            ...common,
          },
        },
      },
      "/v1/usage": {
        get: {
          summary: "The tenant's token usage per UTC day and model, totals, estimated cost and budgets",
          parameters: queryParams(s.usageQuery),
          responses: {
            "200": { description: "Usage report", content: json("UsageReport") },
            ...problems(400),
            ...common,
          },
        },
      },
      "/v1/cache/invalidate": {
        post: {
          summary: "Invalidate cached pure-tool results of the tenant by tag",
          description: "Naturally idempotent: repeating it only costs cache misses.",
          requestBody: { required: true, content: json("InvalidateCacheRequest") },
          responses: {
            "200": { description: "Invalidated", content: json("InvalidateCacheResult") },
            ...problems(400, 413, 415),
            ...common,
          },
        },
      },
      "/v1/memories": {
        get: {
          summary: "List a namespace's memories in creation order",
          parameters: queryParams(s.listMemoriesQuery),
          responses: {
            "200": { description: "A page", content: json("MemoryPage") },
            ...problems(400),
            ...noMemory,
            ...common,
          },
        },
        post: {
          summary: "Store a new memory (no key); its text is embedded by the server",
          parameters: [idempotencyKey],
          requestBody: { required: true, content: json("CreateMemoryRequest") },
          responses: {
            "201": { description: "Created", content: json("Memory") },
            ...problems(400, 413, 415, 422),
            ...noMemory,
            ...common,
          },
        },
      },
      "/v1/memories/search": {
        post: {
          summary: "The memories of a namespace nearest to a query text, nearest first",
          description:
            "Read-only, so safe to retry: an Idempotency-Key is validated but no answer is stored.",
          parameters: [idempotencyKey],
          requestBody: { required: true, content: json("SearchMemoriesRequest") },
          responses: {
            "200": { description: "Matches", content: json("MemorySearchResult") },
            ...problems(400, 413, 415),
            ...noMemory,
            ...common,
          },
        },
      },
      "/v1/memories/{id}": {
        get: {
          summary: "Get a memory",
          parameters: [idParam("memory")],
          responses: {
            "200": { description: "The memory", content: json("Memory") },
            ...problems(404),
            ...noMemory,
            ...common,
          },
        },
        delete: {
          summary: "Delete a memory",
          parameters: [idParam("memory")],
          responses: {
            "204": { description: "Deleted" },
            ...problems(404),
            ...noMemory,
            ...common,
          },
        },
      },
      "/v1/memories/{namespace}/{key}": {
        put: {
          summary: "Create or replace the memory with this key (text, metadata, expiry)",
          parameters: memoryPathParams,
          requestBody: { required: true, content: json("PutMemoryRequest") },
          responses: {
            "201": { description: "Created", content: json("Memory") },
            "200": { description: "Updated (same id and created_at)", content: json("Memory") },
            ...problems(400, 413, 415),
            ...noMemory,
            ...common,
          },
        },
        get: {
          summary: "Get the memory with this key",
          parameters: memoryPathParams,
          responses: {
            "200": { description: "The memory", content: json("Memory") },
            ...problems(400, 404),
            ...noMemory,
            ...common,
          },
        },
        delete: {
          summary: "Delete the memory with this key",
          parameters: memoryPathParams,
          responses: {
            "204": { description: "Deleted" },
            ...problems(400, 404),
            ...noMemory,
            ...common,
          },
        },
      },
      "/healthz": {
        get: {
          summary: "Liveness",
          security: [],
          responses: {
            "200": {
              description: "Alive",
              content: {
                "application/json": {
                  schema: { type: "object", properties: { status: { const: "ok" } } },
                },
              },
            },
            ...closing,
          },
        },
      },
      "/readyz": {
        get: {
          summary: "Readiness: Postgres reachable, schema current, coordination reachable, agents loaded",
          security: [],
          responses: {
            "200": { description: "Ready", content: { "application/json": { schema: READINESS } } },
            "503": {
              description:
                "Not ready (the failing checks say why), or shutting down (then problem+json server_busy)",
              content: { "application/json": { schema: READINESS } },
            },
          },
        },
      },
      "/metrics": {
        get: {
          summary: "Prometheus metrics",
          security: [],
          responses: {
            "200": {
              description: "The Prometheus text exposition format",
              content: { "text/plain": { schema: { type: "string" } } },
            },
            ...closing,
          },
        },
      },
      "/openapi.json": {
        get: {
          summary: "This document",
          security: [],
          responses: {
            "200": {
              description: "OpenAPI 3.1",
              content: { "application/json": { schema: { type: "object" } } },
            },
            ...closing,
          },
        },
      },
    },
  };
}
