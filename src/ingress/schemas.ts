/**
 * Request and response schemas of the public HTTP API (DESIGN §11). The zod
 * schemas are the single source: handlers validate with them and
 * /openapi.json is generated from them. Every input is bounded here.
 */
import { z } from "zod";

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
} as const;

const jsonBytes = (v: unknown): number => Buffer.byteLength(JSON.stringify(v) ?? "", "utf8");

// ---------- ids ----------

/** Any 8-4-4-4-12 hex id (what Postgres accepts as uuid). Malformed ids are answered 404. */
export const idSchema = z.guid();
export const idParams = z.object({ id: idSchema });

// ---------- shared pieces ----------

/** Any JSON value (one shared instance: it is a named, recursive schema in the OpenAPI document). */
export const jsonValue = z.json();

export const metadataSchema = z
  .record(z.string().min(1).max(LIMITS.metadataKeyChars), jsonValue)
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

const textPart = z.strictObject({ type: z.literal("text"), text: z.string().max(LIMITS.messageChars) });

export const messageContentSchema = z.union(
  [
    z.string().min(1).max(LIMITS.messageChars),
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
      z.string().min(1).max(LIMITS.messageChars),
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
  agent: z.string().min(1).max(LIMITS.agentNameChars).meta({ description: "Name of a loaded agent." }),
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
  after: z
    .string()
    .optional()
    .meta({ description: 'Resume after this event id ("N" or "N.k"); Last-Event-ID wins.' }),
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
export const usageSchema = z.object({ input_tokens: z.number(), output_tokens: z.number() });

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

export type ThreadJson = z.infer<typeof threadSchema>;
export type RunJson = z.infer<typeof runSchema>;
export type MessageJson = z.infer<typeof messageSchema>;
export type MessagePageJson = z.infer<typeof messagePageSchema>;
export type StepJson = z.infer<typeof stepSchema>;
export type StepListJson = z.infer<typeof stepListSchema>;
export type ProblemJson = z.infer<typeof problemSchema>;
