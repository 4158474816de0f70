import type { FastifyRequest } from "fastify";
import type { Coordination } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Settings } from "../config/config.js";
import type { Db } from "../state/db.js";
import type { Principal } from "./auth.js";
import type { IngressMetrics } from "./metrics.js";
import type { RunWatchHub } from "./run-watch.js";
import type { SseOptions } from "./sse.js";

declare module "fastify" {
  interface FastifyRequest {
    /** Set by the /v1 auth hook; null on operational endpoints. */
    principal: Principal | null;
  }
}

/** What route handlers share. Built once per app by `buildIngress`. */
export interface IngressContext {
  db: Db;
  coord: Coordination;
  settings: Settings;
  logger: Logger;
  metrics: IngressMetrics;
  hub: RunWatchHub;
  agentNames: () => string[];
  sse: SseOptions;
  /** Aborted when the app starts closing: long requests (SSE, wait) end early. */
  shutdown: AbortSignal;
  /** Poll period of `/wait` when no notification arrives. */
  waitPollMs: number;
  /** Register a long request (SSE stream, /wait) so a graceful close waits for it to end. */
  track<T>(work: Promise<T>): Promise<T>;
}

export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new CapstanError("unauthorized", "authentication required");
  return req.principal;
}
