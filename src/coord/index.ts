/**
 * Coordination backends (docs/architecture.md#state-and-its-owners): Redis in production, process memory
 * in the embedded dev mode. Both satisfy the contracts in ./types.ts and the
 * shared suite in ./conformance.ts.
 */
export type {
  Coordination,
  EventStream,
  EventStreamOptions,
  KvCache,
  RateLimiter,
  RateLimitResult,
  RateLimitRule,
  StreamEvent,
} from "./types.js";
export { createRedisCoordination, type RedisCoordinationOptions } from "./redis/index.js";
export { createMemoryCoordination, type MemoryCoordinationOptions } from "./memory.js";
export {
  compareEventIdParts,
  compareEventIds,
  formatEventId,
  fromStreamId,
  isValidEventId,
  parseEventId,
  parseStreamId,
  toStreamId,
  type EventIdParts,
} from "./event-id.js";
