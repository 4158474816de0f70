import type { z } from "zod";
import { CapstanError, type FieldIssue } from "../errors.js";
import { idSchema } from "./schemas.js";

/**
 * Where a value came from, which prefixes its field names in problems:
 * body fields are bare dotted paths (`input.content`), query fields are
 * `query.<name>` (docs/http-api.md#errors).
 */
export type Location = "body" | "query";

type Issue = z.core.$ZodIssue;

function join(prefix: string, path: readonly PropertyKey[]): string {
  const rel = path.map(String).join(".");
  if (!prefix) return rel || "body";
  return rel ? `${prefix}.${rel}` : prefix;
}

/**
 * Flatten zod issues into field issues. A union whose value matched exactly
 * one branch's type reports that branch's own issues (so "content too long"
 * is not hidden behind "invalid input"); unknown keys are reported one field
 * each.
 */
function flatten(issues: readonly Issue[], prefix: string, out: FieldIssue[]): void {
  for (const issue of issues) {
    const base = join(prefix, issue.path);
    if (issue.code === "unrecognized_keys") {
      for (const k of issue.keys)
        out.push({ field: base === "body" ? k : `${base}.${k}`, message: "unknown field" });
      continue;
    }
    if (issue.code === "invalid_key") {
      // A record key (metadata, filters): the field is the key's path, the messages its key schema's.
      const why = issue.issues.map((i) => i.message).join("; ");
      out.push({ field: base, message: `invalid key: ${why}` });
      continue;
    }
    if (issue.code === "invalid_union") {
      const relevant = issue.errors.filter(
        (branch) => !branch.every((i) => i.code === "invalid_type" && i.path.length === 0),
      );
      if (relevant.length === 1) {
        flatten(relevant[0]!, base === "body" ? "" : base, out);
        continue;
      }
    }
    out.push({ field: base, message: issue.message });
  }
}

export function zodFields(error: z.ZodError, location: Location): FieldIssue[] {
  const out: FieldIssue[] = [];
  flatten(error.issues, location === "body" ? "" : "query", out);
  return out;
}

/**
 * A body that may be absent (create thread, cancel, cache invalidate): no
 * body or an empty one counts as `{}`. An explicit JSON `null` is a body, and
 * is refused by the object schema like any other non-object.
 */
export function optionalBody(body: unknown): unknown {
  return body === undefined ? {} : body;
}

/** Parse `value` or throw `validation_failed` naming every offending field. */
export function parseOr400<S extends z.ZodType>(schema: S, value: unknown, location: Location): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const fields = zodFields(r.error, location);
  throw new CapstanError(
    "validation_failed",
    "invalid request: " + fields.map((f) => `${f.field}: ${f.message}`).join("; "),
    { fields },
  );
}

/**
 * A path id. Malformed ids are answered exactly like unknown or foreign ones
 * (404), so nothing about other tenants' ids can be learned from errors.
 */
export function pathId(params: unknown, what: "thread" | "run" | "memory"): string {
  const raw =
    typeof params === "object" && params !== null ? (params as Record<string, unknown>).id : undefined;
  const r = idSchema.safeParse(raw);
  if (!r.success) throw new CapstanError("not_found", `${what} ${String(raw)} not found`);
  return r.data.toLowerCase();
}
