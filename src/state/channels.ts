/** NOTIFY channels. Payloads are small; listeners re-read state from tables. */
export const CHANNELS = {
  /** A run became claimable (enqueued at the head, promoted, requeued, resumed). */
  runs: "capstan_runs",
  /** A run must stop on whichever worker holds it. Payload: run id. */
  control: "capstan_control",
  /** Coarse events were persisted. Payload: `runId:lastEventId`. */
  events: "capstan_events",
} as const;
