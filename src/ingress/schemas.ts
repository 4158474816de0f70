/**
 * Request and response schemas of the public HTTP API (docs/http-api.md). The zod
 * schemas are the single source: handlers validate with them and
 * /openapi.json is generated from them. Every input is bounded here.
 */
import { z } from "zod";
import { CACHE_LIMITS, tagProblem } from "../cost/cache-config.js";
import { MEMORY_LIMITS } from "../state/memories.js";
import { isValidDay } from "../state/usage.js";

export const LIMITS = {
  /** Characters of one user message (a string, or the sum of its text parts). */
  messageChars: 100_000,
  /** Text parts in one structured message. */
  messageParts: 100,
  metadataKeys: 16,
  metadataKeyChars: 64,
  /** Serialised JSON size of `metadata`, in bytes. */
  metadataBytes: 8 * 1024,
  /** Serialised JSON size of a resume `input`, in bytes. */
  resumeInputBytes: 64 * 1024,
  agentNameChars: 128,
  pageMax: 200,
  pageDefault: 50,
  /** `GET /v1/runs/:id/wait?timeout=` ceiling, in seconds. */
  waitMaxSeconds: 60,
  waitDefaultSeconds: 30,
  idempotencyKeyChars: 255,
  /** Memory namespaces and keys, in characters (the store's limits). */
  memoryNamespaceChars: MEMORY_LIMITS.maxNamespaceChars,
  memoryKeyChars: MEMORY_LIMITS.maxKeyChars,
  /** Memory text and search query, UTF-8 bytes. */
  memoryTextBytes: MEMORY_LIMITS.maxTextBytes,
  /** Memory metadata and search filter, as JSON, in bytes. */
  memoryMetadataBytes: MEMORY_LIMITS.maxMetadataBytes,
  /** Results of one memory search. */
  memorySearchMax: MEMORY_LIMITS.maxK,
  memorySearchDefault: 10,
  /** Longest memory TTL: 10 years, in seconds. */
  memoryTtlMaxSeconds: 10 * 365 * 86_400,
  /**
   * Deepest nesting of objects and arrays in a JSON body (the body itself is
   * level 1). Checked on the raw text before parsing (./json-depth.ts), so no
   * recursive validator ever sees a deeper value.
   */
  jsonDepth: 32,
  /** Earliest and latest UTC day a query accepts (PostgreSQL has no year 0). */
  firstDay: "1970-01-01",
  lastDay: "9999-12-31",
} as const;

const jsonBytes = (v: unknown): number => Buffer.byteLength(JSON.stringify(v) ?? "", "utf8");

// ---------- ids ----------

/** Any 8-4-4-4-12 hex id (what Postgres accepts as uuid). Malformed ids are answered 404. */
export const idSchema = z.guid();
export const idParams = z.object({ id: idSchema });

// ---------- safe text ----------

/** In `u` mode a valid surrogate pair is one code point, so only unpaired surrogates are Cs. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Every client string that can reach a store, keys included. PostgreSQL text
 * cannot hold NUL, jsonb refuses `\u0000`, and an unpaired UTF-16 surrogate
 * (`\udfff`) has no UTF-8 encoding: the driver would store U+FFFD instead,
 * silently changing the data. Such strings are refused, naming the field,
 * never rewritten. Chain limits on it (`safeString.min(1).max(n)`).
 */
export const safeString = z
  .string()
  .refine((s) => !s.includes("\u0000"), { message: "must not contain NUL (\\u0000) characters" })
  .refine((s) => !LONE_SURROGATE.test(s), {
    message: "must not contain unpaired UTF-16 surrogates (e.g. \\udfff): not valid Unicode text",
  });

// ---------- shared pieces ----------

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/**
 * Any JSON value whose strings and keys are safe (one shared instance: it is
 * a named, recursive schema in the OpenAPI document). Numbers are finite:
 * `1e400` parses to Infinity, which JSON cannot carry back out.
 */
export const jsonValue: z.ZodType<JsonValue> = z.lazy(() =>
  z.union(
    [safeString, z.number(), z.boolean(), z.null(), z.array(jsonValue), z.record(safeString, jsonValue)],
    { error: "expected a JSON value (numbers must be finite)" },
  ),
);

export const metadataSchema = z
  .record(safeString.min(1).max(LIMITS.metadataKeyChars), jsonValue)
  .superRefine((m, ctx) => {
    const keys = Object.keys(m).length;
    if (keys > LIMITS.metadataKeys) {
      ctx.addIssue({ code: "custom", message: `at most ${LIMITS.metadataKeys} keys (got ${keys})` });
    }
    const bytes = jsonBytes(m);
    if (bytes > LIMITS.metadataBytes) {
      ctx.addIssue({
        code: "custom",
        message: `at most ${LIMITS.metadataBytes} bytes of JSON (got ${bytes})`,
      });
    }
  })
  .meta({
    description: `Free-form JSON object: ≤ ${LIMITS.metadataKeys} keys, ≤ ${LIMITS.metadataBytes} bytes.`,
  });

const textPart = z.strictObject({ type: z.literal("text"), text: safeString.max(LIMITS.messageChars) });

export const messageContentSchema = z.union(
  [
    safeString.min(1).max(LIMITS.messageChars),
    z
      .array(textPart)
      .min(1)
      .max(LIMITS.messageParts)
      .superRefine((parts, ctx) => {
        const chars = parts.reduce((n, p) => n + p.text.length, 0);
        if (chars > LIMITS.messageChars) {
          ctx.addIssue({
            code: "custom",
            message: `at most ${LIMITS.messageChars} characters in total (got ${chars})`,
          });
        }
      }),
  ],
  { error: 'expected a string or an array of {type: "text", text} parts' },
);

export const runInputSchema = z
  .union(
    [
      safeString.min(1).max(LIMITS.messageChars),
      z.strictObject({ role: z.literal("user"), content: messageContentSchema }),
    ],
    {
      error: 'expected a string or {role: "user", content}',
    },
  )
  .meta({ description: 'A user message: a string, or {role: "user", content}.' });

export const multitaskSchema = z.enum(["enqueue", "reject", "interrupt"]);

// ---------- requests ----------

export const createThreadBody = z.strictObject({ metadata: metadataSchema.optional() });

export const createRunBody = z.strictObject({
  agent: safeString.min(1).max(LIMITS.agentNameChars).meta({ description: "Name of a loaded agent." }),
  input: runInputSchema,
  multitask: multitaskSchema.optional().meta({
    description:
      "What to do when the thread has an active run: queue behind it (default), refuse, or cancel it.",
  }),
  metadata: metadataSchema.optional(),
});

export const resumeBody = z.strictObject({
  decision: z.enum(["approve", "reject"]),
  input: jsonValue
    .optional()
    .refine((v) => v === undefined || jsonBytes(v) <= LIMITS.resumeInputBytes, {
      message: `at most ${LIMITS.resumeInputBytes} bytes of JSON`,
    })
    .meta({ description: "Optional note or data for the tool decision (any JSON)." }),
});

/** Query integers arrive as strings; only plain decimal digits are accepted. */
const queryInt = (min: number, max: number) =>
  z
    .string()
    .regex(/^-?\d{1,16}$/, "expected an integer")
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

export const messagesQuery = z.object({
  after: queryInt(0, Number.MAX_SAFE_INTEGER)
    .optional()
    .meta({ description: "Return messages with seq > after." }),
  limit: queryInt(1, LIMITS.pageMax)
    .optional()
    .meta({ description: `Page size, 1..${LIMITS.pageMax}.` }),
});

export const waitQuery = z.object({
  timeout: z
    .string()
    .regex(/^\d{1,6}(\.\d{1,3})?$/, "expected a number of seconds")
    .transform(Number)
    .pipe(z.number().min(0).max(LIMITS.waitMaxSeconds))
    .optional()
    .meta({
      description: `Seconds to wait, 0..${LIMITS.waitMaxSeconds} (default ${LIMITS.waitDefaultSeconds}).`,
    }),
});

export const eventsQuery = z.object({
  after: safeString
    .optional()
    .meta({ description: 'Resume after this event id ("N" or "N.k"); Last-Event-ID wins.' }),
});

// ---------- usage and cache (src/ingress/routes/usage.ts, cache.ts) ----------

const day = z
  .string()
  .refine(isValidDay, { message: "expected a date YYYY-MM-DD" })
  .refine((d) => !isValidDay(d) || (d >= LIMITS.firstDay && d <= LIMITS.lastDay), {
    message: `expected a day from ${LIMITS.firstDay} to ${LIMITS.lastDay}`,
  });

export const usageQuery = z.strictObject({
  from: day
    .optional()
    .meta({ description: "First UTC day, YYYY-MM-DD. Default: the first of `to`'s month." }),
  to: day.optional().meta({ description: "Last UTC day (inclusive), YYYY-MM-DD. Default: today." }),
});

const cacheTag = safeString.superRefine((t, c) => {
  const problem = tagProblem(t);
  if (problem) c.addIssue({ code: "custom", message: problem });
});

export const invalidateBody = z.strictObject({
  tags: z
    .array(cacheTag)
    .min(1)
    .max(CACHE_LIMITS.maxInvalidateTags)
    .meta({ description: "Cache tags of pure tools to invalidate for the caller's tenant." }),
});

// ---------- memories (src/ingress/routes/memories.ts) ----------

/**
 * No control characters (C0, DEL, C1: Unicode's Cc): names travel in URLs,
 * logs and prompts. Written as ranges, not \p{Cc}, so the OpenAPI pattern
 * works in any JSON Schema validator.
 */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const NO_CONTROL = /^[^\u0000-\u001f\u007f-\u009f]*$/;

const memoryName = (what: string, max: number) =>
  safeString
    .min(1)
    .max(max)
    .regex(NO_CONTROL, "must not contain control characters")
    .meta({ description: `${what}: 1..${max} characters, no control characters.` });

export const memoryNamespaceSchema = memoryName(
  "Memory namespace (e.g. one per end user)",
  LIMITS.memoryNamespaceChars,
);
export const memoryKeySchema = memoryName("Memory key, unique in its namespace", LIMITS.memoryKeyChars);

const utf8Text = (what: string) =>
  safeString
    .min(1)
    .refine((t) => Buffer.byteLength(t, "utf8") <= LIMITS.memoryTextBytes, {
      message: `at most ${LIMITS.memoryTextBytes} bytes (UTF-8)`,
    })
    .meta({ description: `${what}: 1..${LIMITS.memoryTextBytes} bytes of UTF-8.` });

/** A JSON object of at most `memoryMetadataBytes` bytes (the store's limit). */
const memoryJsonObject = (description: string) =>
  z
    .record(safeString, jsonValue)
    .superRefine((m, ctx) => {
      const bytes = jsonBytes(m);
      if (bytes > LIMITS.memoryMetadataBytes) {
        ctx.addIssue({
          code: "custom",
          message: `at most ${LIMITS.memoryMetadataBytes} bytes of JSON (got ${bytes})`,
        });
      }
    })
    .meta({ description });

const memoryMetadata = memoryJsonObject(
  `Free-form JSON object, ≤ ${LIMITS.memoryMetadataBytes} bytes; searches can filter on it.`,
);

const ttlSeconds = z
  .number()
  .int()
  .min(1)
  .max(LIMITS.memoryTtlMaxSeconds)
  .nullable()
  .optional()
  .meta({
    description: `Seconds until the memory expires, 1..${LIMITS.memoryTtlMaxSeconds}; absent or null: never.`,
  });

export const putMemoryBody = z.strictObject({
  text: utf8Text("The memory's text (it is embedded for search)"),
  metadata: memoryMetadata.optional(),
  ttl_seconds: ttlSeconds,
});

export const createMemoryBody = z.strictObject({
  namespace: memoryNamespaceSchema,
  text: utf8Text("The memory's text (it is embedded for search)"),
  metadata: memoryMetadata.optional(),
  ttl_seconds: ttlSeconds,
});

export const searchMemoriesBody = z.strictObject({
  namespace: memoryNamespaceSchema,
  query: utf8Text("What to look for (embedded with the server's embedding model)"),
  k: z
    .number()
    .int()
    .min(1)
    .max(LIMITS.memorySearchMax)
    .optional()
    .meta({
      description: `How many memories, 1..${LIMITS.memorySearchMax} (default ${LIMITS.memorySearchDefault}).`,
    }),
  filter: memoryJsonObject(
    'Only memories whose metadata contains this JSON object (e.g. {"kind": "preference"}).',
  ).optional(),
  max_distance: z
    .number()
    .min(0)
    .max(2)
    .optional()
    .meta({ description: "Drop matches farther than this cosine distance, 0..2." }),
});

export const listMemoriesQuery = z.object({
  namespace: memoryNamespaceSchema,
  limit: queryInt(1, LIMITS.pageMax)
    .optional()
    .meta({ description: `Page size, 1..${LIMITS.pageMax} (default ${LIMITS.pageDefault}).` }),
  cursor: safeString.min(1).max(256).optional().meta({ description: "`next_cursor` of the previous page." }),
});

// ---------- responses (snake_case wire shapes) ----------

const timestamp = z.string().meta({ description: "RFC 3339 timestamp" });

export const threadStatusSchema = z.enum(["idle", "busy", "waiting"]);
export const threadSchema = z.object({
  id: z.string(),
  status: threadStatusSchema,
  metadata: z.record(z.string(), z.unknown()),
  created_at: timestamp,
});

export const runStatusSchema = z.enum(["queued", "running", "waiting", "succeeded", "failed", "cancelled"]);
export const runErrorSchema = z.looseObject({ code: z.string(), message: z.string() });
export const usageSchema = z.object({
  input_tokens: z.number(),
  output_tokens: z.number(),
  cached_input_tokens: z.number().meta({
    description: "Input tokens the provider served from its prompt cache (a subset of input_tokens).",
  }),
  estimated_cost: z
    .number()
    .nullable()
    .optional()
    .meta({
      description:
        "Cost of the run's LLM calls under the configured price table (on every run answer); " +
        "null when a model it used has no price. Absent without a price table.",
    }),
});

export const runSchema = z.object({
  id: z.string(),
  thread_id: z.string(),
  agent: z.string(),
  status: runStatusSchema,
  multitask: multitaskSchema,
  metadata: z.record(z.string(), z.unknown()),
  attempts: z.number(),
  usage: usageSchema,
  error: runErrorSchema.nullable(),
  wait: z.record(z.string(), z.unknown()).nullable(),
  created_at: timestamp,
  started_at: timestamp.nullable(),
  finished_at: timestamp.nullable(),
});

export const messageSchema = z.object({
  seq: z.number(),
  role: z.enum(["user", "assistant", "tool", "system"]),
  content: z.unknown(),
  run_id: z.string().nullable(),
  created_at: timestamp,
});
export const messagePageSchema = z.object({
  data: z.array(messageSchema),
  next_after: z
    .number()
    .nullable()
    .meta({ description: "Pass as `after` for the next page; null when this page was not full." }),
});

export const stepSchema = z.object({
  step_no: z.number(),
  kind: z.enum(["llm", "tool"]),
  status: z.enum(["started", "completed", "failed"]),
  tool_name: z.string().nullable(),
  tool_call_id: z.string().nullable(),
  effect: z.enum(["pure", "idempotent", "side-effect"]).nullable(),
  args: z.unknown().meta({ description: "Tool arguments, or the LLM request summary." }),
  result: z.unknown().meta({ description: "Tool result, or the LLM response." }),
  error: runErrorSchema.nullable(),
  usage: z
    .object({
      input_tokens: z.number(),
      output_tokens: z.number(),
      cached_input_tokens: z.number().nullable(),
    })
    .nullable(),
  model: z.string().nullable().meta({ description: "`provider:model` of an LLM step; null for tools." }),
  cache: z
    .object({
      hit: z.boolean(),
      tokens_saved: z.number().meta({ description: "Input + output tokens the cache hit did not spend." }),
    })
    .nullable()
    .meta({ description: "LLM steps: whether the response cache answered; null for tool steps." }),
  started_at: timestamp,
  finished_at: timestamp.nullable(),
});
export const stepListSchema = z.object({ data: z.array(stepSchema) });

export const problemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number(),
  code: z.string(),
  detail: z.string(),
  fields: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  request_id: z.string(),
});

/** 402 `budget_exceeded`: a Problem with the spent budget. */
export const budgetProblemSchema = problemSchema.extend({
  code: z.literal("budget_exceeded"),
  period: z.enum(["day", "month"]).meta({ description: "Which budget is used up (UTC day or month)." }),
  budget: z.number().meta({ description: "The budget, in tokens (input + output)." }),
  used: z.number().meta({ description: "Tokens used in the period." }),
  resets_at: timestamp.meta({ description: "When the period ends and the budget is available again." }),
});

// ---------- usage and cache responses ----------

const usageCounts = {
  input_tokens: z.number(),
  output_tokens: z.number(),
  cached_input_tokens: z.number(),
  total_tokens: z.number().meta({ description: "input + output: what budgets count." }),
  llm_calls: z.number(),
  cache_hits: z.number(),
  tokens_saved: z.number().meta({ description: "Tokens the LLM response cache avoided." }),
};

export const usageReportSchema = z.object({
  from: z.string(),
  to: z.string(),
  data: z.array(
    z.object({
      day: z.string(),
      model: z.string(),
      ...usageCounts,
      estimated_cost: z
        .number()
        .nullable()
        .optional()
        .meta({ description: "With a price table: the estimated cost; null when the model has no price." }),
    }),
  ),
  totals: z.object({
    ...usageCounts,
    estimated_cost: z.number().optional(),
    unpriced_models: z.array(z.string()).optional(),
  }),
  budget: z.object({
    daily_token_budget: z.number().nullable(),
    monthly_token_budget: z.number().nullable(),
    day: z.string(),
    day_used: z.number(),
    month_used: z.number(),
  }),
});

export const threadUsageSchema = z.object({
  thread_id: z.string(),
  runs: z.number().meta({ description: "Retained runs of the thread (finished runs are pruned)." }),
  input_tokens: z.number(),
  output_tokens: z.number(),
  cached_input_tokens: z.number(),
  total_tokens: z.number(),
});

export const invalidateResultSchema = z.object({
  invalidated: z.array(z.string()).meta({ description: "The distinct tags invalidated." }),
});

// ---------- memory responses ----------

export const memorySchema = z.object({
  id: z.string(),
  namespace: z.string(),
  key: z.string().nullable(),
  text: z.string(),
  metadata: z.record(z.string(), z.unknown()),
  embedding_model: z.string(),
  created_at: timestamp,
  updated_at: timestamp,
  expires_at: timestamp.nullable(),
});

export const memoryPageSchema = z.object({
  data: z.array(memorySchema),
  next_cursor: z
    .string()
    .nullable()
    .meta({ description: "Pass as `cursor` for the next page; null on the last page." }),
});

export const memoryMatchSchema = z.object({
  id: z.string(),
  namespace: z.string(),
  key: z.string().nullable(),
  text: z.string(),
  metadata: z.record(z.string(), z.unknown()),
  distance: z
    .number()
    .meta({ description: "Cosine distance to the query: 0 = same direction, 2 = opposite." }),
  created_at: timestamp,
  expires_at: timestamp.nullable(),
});

export const memorySearchResultSchema = z.object({
  data: z.array(memoryMatchSchema).meta({ description: "Nearest first." }),
});

export type ThreadJson = z.infer<typeof threadSchema>;
export type RunJson = z.infer<typeof runSchema>;
export type MessageJson = z.infer<typeof messageSchema>;
export type MessagePageJson = z.infer<typeof messagePageSchema>;
export type StepJson = z.infer<typeof stepSchema>;
export type StepListJson = z.infer<typeof stepListSchema>;
export type ProblemJson = z.infer<typeof problemSchema>;
export type UsageReportJson = z.infer<typeof usageReportSchema>;
export type ThreadUsageJson = z.infer<typeof threadUsageSchema>;
export type InvalidateResultJson = z.infer<typeof invalidateResultSchema>;
export type MemoryJson = z.infer<typeof memorySchema>;
export type MemoryPageJson = z.infer<typeof memoryPageSchema>;
export type MemoryMatchJson = z.infer<typeof memoryMatchSchema>;
export type MemorySearchResultJson = z.infer<typeof memorySearchResultSchema>;
