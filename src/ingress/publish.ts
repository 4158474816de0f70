import type { EventStream } from "../coord/types.js";
import type { Logger } from "../logger.js";
import type { RunEvent } from "../state/types.js";
import type { IngressMetrics } from "./metrics.js";

/**
 * Publish events that a request's transaction persisted (cancellations,
 * runs interrupted by `multitask: interrupt`) to the live streams. Best
 * effort and bounded in time: the events are already in Postgres, and SSE
 * readers fill any gap from there, so a failure is logged and counted,
 * never returned to the client, and a slow backend delays the answer by at
 * most `timeoutMs` (the publish continues in the background).
 */
export async function publishPersisted(
  deps: { events: EventStream; logger: Logger; metrics: IngressMetrics },
  events: RunEvent[],
  timeoutMs = 1_000,
): Promise<void> {
  if (events.length === 0) return;
  const byRun = new Map<string, RunEvent[]>();
  for (const e of events) byRun.set(e.runId, [...(byRun.get(e.runId) ?? []), e]);
  const all = Promise.all(
    [...byRun].map(async ([runId, evs]) => {
      const sorted = [...evs].sort((a, b) => a.id - b.id);
      try {
        await deps.events.publish(
          runId,
          sorted.map((e) => ({ id: String(e.id), type: e.type, data: e.data })),
        );
      } catch (err) {
        deps.metrics.publishFailures.inc();
        deps.logger.warn({ err, runId }, "publishing events to the live stream failed; readers use Postgres");
      }
    }),
  );
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, timeoutMs);
  });
  await Promise.race([all.then(() => undefined), timeout]);
  clearTimeout(timer);
}
