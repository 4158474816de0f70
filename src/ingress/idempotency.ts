/**
 * The HTTP side of idempotency (DESIGN §3: keys live in Postgres). Every POST
 * accepts `Idempotency-Key`; what makes two requests "the same" is the hash
 * of method, canonical path and canonical JSON body, so key order and
 * whitespace in the body do not matter, while another target or body does.
 */
import { createHash } from "node:crypto";
import type { FastifyRequest } from "fastify";
import { CapstanError } from "../errors.js";
import { LIMITS } from "./schemas.js";

const KEY_RE = /^[\x21-\x7e]+$/;

/** The request's Idempotency-Key, validated (printable ASCII, bounded), or undefined. */
export function idempotencyKeyOf(req: FastifyRequest): string | undefined {
  const raw = req.headers["idempotency-key"];
  if (raw === undefined) return undefined;
  const key = Array.isArray(raw) ? undefined : raw.trim();
  if (!key || key.length > LIMITS.idempotencyKeyChars || !KEY_RE.test(key)) {
    throw new CapstanError("validation_failed", "invalid Idempotency-Key header", {
      fields: [
        {
          field: "Idempotency-Key",
          message: `one value of 1..${LIMITS.idempotencyKeyChars} printable ASCII characters`,
        },
      ],
    });
  }
  return key;
}

/** JSON with object keys sorted at every level: equal values serialise equally. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v ?? null);
  if (Array.isArray(v)) return "[" + v.map((x) => canonicalJson(x)).join(",") + "]";
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonicalJson(o[k])).join(",") + "}";
}

export function requestHash(method: string, path: string, body: unknown): string {
  return createHash("sha256")
    .update(`${method.toUpperCase()} ${path}\n${canonicalJson(body)}`)
    .digest("hex");
}
