/**
 * The HTTP side of idempotency (docs/http-api.md#conventions; keys live in Postgres). Every POST
 * accepts `Idempotency-Key`; what makes two requests "the same" is the hash
 * of method, canonical path and canonical JSON body, so key order and
 * whitespace in the body do not matter, while another target or body does.
 */
import { canonicalJson } from "../json.js";
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

export function requestHash(method: string, path: string, body: unknown): string {
  return createHash("sha256")
    .update(`${method.toUpperCase()} ${path}\n${canonicalJson(body)}`)
    .digest("hex");
}
