/**
 * Test fixtures for the ingress: a real PostgreSQL database (createTestDb),
 * real Redis under a random key prefix, and ingress instances on real HTTP
 * (127.0.0.1, port 0). Nothing is mocked; failures are simulated with real
 * unreachable endpoints or by deleting this fixture's Redis keys.
 */
import { resolveSettings, type Settings } from "../../src/config/config.js";
import { createRedisCoordination, type RedisCoordinationOptions } from "../../src/coord/redis/index.js";
import type { Coordination, StreamEvent } from "../../src/coord/types.js";
import { startIngress, type RunningIngress, type StartIngressOptions } from "../../src/ingress/server.js";
import { silentLogger } from "../../src/logger.js";
import { appendEvents } from "../../src/state/journal.js";
import { claimRun, finishRun } from "../../src/state/scheduler.js";
import { createApiKey, ensureTenant } from "../../src/state/tenants.js";
import type { ClaimedRun, NewEvent, RunEvent } from "../../src/state/types.js";
import { createTestDb, type TestDb } from "../support/pg.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

export const AGENTS = ["echo", "support"];

export interface TenantFixture {
  id: string;
  key: string;
}

export interface Harness {
  t: TestDb;
  prefix: string;
  coord: Coordination;
  settings: Settings;
  a: TenantFixture;
  b: TenantFixture;
  /** Another coordination on the same Redis and prefix (a second process). */
  openCoord(extra?: Partial<RedisCoordinationOptions>): Coordination;
  /** A coordination whose Redis cannot be reached (port 1): Redis "down". */
  deadCoord(): Coordination;
  start(opts?: Partial<StartIngressOptions>): Promise<RunningIngress>;
  tenant(name?: string): Promise<TenantFixture>;
  /** Delete every Redis key of this fixture: what a FLUSHALL would do to us. */
  flushRedis(): Promise<number>;
  close(): Promise<void>;
}

/** Fast SSE timings for tests; production defaults are in DEFAULT_SSE. */
export const FAST_SSE = {
  heartbeatMs: 1_000,
  blockMs: 200,
  gapGraceMs: 150,
  pollMs: 500,
  retryMs: 50,
  redisRetryMs: 300,
};

export async function createHarness(
  settingsInput: Parameters<typeof resolveSettings>[0] = {},
): Promise<Harness> {
  const t = await createTestDb({ poolSize: 12 });
  const prefix = randomPrefix();
  const coords: Coordination[] = [];
  const servers: RunningIngress[] = [];
  const events = { maxLen: 10_000, ttlMs: 600_000 };
  const openCoord = (extra: Partial<RedisCoordinationOptions> = {}): Coordination => {
    const c = createRedisCoordination({
      url: REDIS_URL,
      keyPrefix: prefix,
      logger: silentLogger(),
      events,
      ...extra,
    });
    coords.push(c);
    return c;
  };
  const coord = openCoord();
  const settings = resolveSettings(settingsInput);
  let n = 0;
  const tenant = async (name = `tenant-${++n}-${prefix}`): Promise<TenantFixture> => {
    const ten = await ensureTenant(t.db, name);
    const { key } = await createApiKey(t.db, ten.id, "test");
    return { id: ten.id, key };
  };
  const a = await tenant();
  const b = await tenant();
  return {
    t,
    prefix,
    coord,
    settings,
    a,
    b,
    openCoord,
    deadCoord: () =>
      openCoord({
        url: "redis://127.0.0.1:1",
        connectTimeoutMs: 200,
        readyTimeoutMs: 100,
        pingTimeoutMs: 200,
        maxReconnectDelayMs: 200,
      }),
    async start(opts = {}) {
      const s = await startIngress({
        host: "127.0.0.1",
        port: 0,
        db: t.db,
        coord,
        settings,
        logger: silentLogger(),
        agentNames: () => AGENTS,
        closeGraceMs: 1_000,
        ...opts,
        sse: { ...FAST_SSE, ...opts.sse },
      });
      servers.push(s);
      return s;
    },
    tenant,
    flushRedis: () => deleteKeys(prefix),
    async close() {
      await Promise.all(servers.map((s) => s.close().catch(() => {})));
      await Promise.all(coords.map((c) => c.close().catch(() => {})));
      await deleteKeys(prefix).catch(() => {});
      await t.drop();
    },
  };
}

export interface ApiAnswer {
  status: number;
  headers: Headers;
  body: unknown;
  text: string;
}

/** One HTTP call with a raw body or JSON; never throws on HTTP errors. */
export async function call(
  base: string,
  method: string,
  path: string,
  opts: { key?: string; json?: unknown; raw?: string | Uint8Array; headers?: Record<string, string> } = {},
): Promise<ApiAnswer> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.key) headers.authorization = `Bearer ${opts.key}`;
  let body: string | Uint8Array | undefined;
  if (opts.json !== undefined) {
    headers["content-type"] ??= "application/json";
    body = JSON.stringify(opts.json);
  } else if (opts.raw !== undefined) {
    body = opts.raw;
  }
  const res = await fetch(base + path, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

export type Json = Record<string, unknown>;
export const obj = (v: unknown): Json => v as Json;

/** Count rows of the tables a request could write. */
export async function rowCounts(t: TestDb): Promise<Record<string, number>> {
  const r = await t.db.query<{
    threads: number;
    runs: number;
    messages: number;
    keys: number;
    events: number;
    memories: number;
  }>(
    `SELECT (SELECT count(*) FROM threads) AS threads, (SELECT count(*) FROM runs) AS runs,
            (SELECT count(*) FROM messages) AS messages, (SELECT count(*) FROM idempotency_keys) AS keys,
            (SELECT count(*) FROM run_events) AS events, (SELECT count(*) FROM memories) AS memories`,
  );
  return { ...r.rows[0]! };
}

/** Create a thread and a run over HTTP; returns their ids. */
export async function threadAndRun(
  base: string,
  key: string,
  input = "hello",
): Promise<{ threadId: string; runId: string }> {
  const th = await call(base, "POST", "/v1/threads", { key, json: {} });
  if (th.status !== 201) throw new Error(`create thread: ${th.status} ${th.text}`);
  const threadId = obj(th.body).id as string;
  const run = await call(base, "POST", `/v1/threads/${threadId}/runs`, {
    key,
    json: { agent: "echo", input },
  });
  if (run.status !== 202) throw new Error(`create run: ${run.status} ${run.text}`);
  return { threadId, runId: obj(run.body).id as string };
}

/**
 * A simulated worker for one claimed run: persists coarse events through the
 * real journal functions (fenced by the lease) and publishes them — or not —
 * to the live stream, plus ephemeral "N.k" deltas.
 */
export class FakeWorker {
  private k = 0;
  private lastCoarse = 0;
  constructor(
    readonly h: { t: TestDb; coord: Coordination },
    readonly run: ClaimedRun,
  ) {}

  static async claim(h: { t: TestDb; coord: Coordination }, workerId = "fake-worker"): Promise<FakeWorker> {
    const run = await claimRun(h.t.db, { workerId, leaseMs: 60_000 });
    if (!run) throw new Error("nothing to claim");
    return new FakeWorker(h, run);
  }

  /** Persist coarse events; publish them unless `publish` is false. */
  async coarse(events: NewEvent[], publish = true): Promise<RunEvent[]> {
    const persisted = await appendEvents(this.h.t.db, this.run.lease, events);
    this.note(persisted);
    if (publish) await this.publish(persisted);
    return persisted;
  }

  /** Publish ephemeral deltas "N.k" under the last coarse id. */
  async deltas(texts: string[]): Promise<string[]> {
    const evs: StreamEvent[] = texts.map((text) => ({
      id: `${this.lastCoarse}.${++this.k}`,
      type: "message.delta",
      data: { run_id: this.run.id, text },
    }));
    await this.h.coord.events.publish(this.run.id, evs);
    return evs.map((e) => e.id);
  }

  async finish(status: "succeeded" | "failed" = "succeeded", publish = true): Promise<RunEvent[]> {
    const persisted = await finishRun(this.h.t.db, this.run.lease, this.run.threadId, {
      status,
      messages: [{ role: "assistant", content: "done" }],
      ...(status === "failed" ? { error: { code: "internal", message: "failed on purpose" } } : {}),
    });
    this.note(persisted);
    if (publish) await this.publish(persisted);
    return persisted;
  }

  async publish(events: RunEvent[]): Promise<void> {
    await this.h.coord.events.publish(
      this.run.id,
      events.map((e) => ({ id: String(e.id), type: e.type, data: e.data })),
    );
  }

  private note(events: RunEvent[]): void {
    for (const e of events) {
      if (e.id > this.lastCoarse) {
        this.lastCoarse = e.id;
        this.k = 0;
      }
    }
  }
}

export interface SseFrame {
  id?: string;
  event?: string;
  data?: string;
  comment?: string;
  retry?: string;
}

/**
 * Read a raw SSE response into frames until the server ends it or `stop`
 * says so (then the connection is aborted). Independent of the client's parser.
 */
export async function readSse(
  url: string,
  opts: {
    key: string;
    headers?: Record<string, string>;
    stop?: (frames: SseFrame[]) => boolean;
    timeoutMs?: number;
  },
): Promise<{ status: number; frames: SseFrame[]; raw: string; headers: Headers }> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error("readSse timed out")), opts.timeoutMs ?? 15_000);
  const frames: SseFrame[] = [];
  let raw = "";
  try {
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${opts.key}`, accept: "text/event-stream", ...opts.headers },
      signal: ac.signal,
    });
    if (res.status !== 200 || !res.body) {
      return { status: res.status, frames, raw: await res.text(), headers: res.headers };
    }
    const decoder = new TextDecoder();
    let buf = "";
    const reader: ReadableStreamDefaultReader<Uint8Array> =
      res.body.getReader() as ReadableStreamDefaultReader<Uint8Array>;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, { stream: true });
        raw += chunk;
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf("\n\n")) !== -1) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const f: SseFrame = {};
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) f.comment = line.slice(1).trim();
            else {
              const c = line.indexOf(":");
              const k = line.slice(0, c) as keyof SseFrame;
              f[k] = line.slice(c + 1).replace(/^ /, "");
            }
          }
          frames.push(f);
        }
        if (opts.stop?.(frames)) {
          // A real disconnect: abort the request, which closes the socket.
          ac.abort(new Error("stopped reading"));
          await reader.cancel().catch(() => {});
          break;
        }
      }
    } finally {
      reader.releaseLock();
    }
    return { status: res.status, frames, raw, headers: res.headers };
  } finally {
    clearTimeout(timer);
  }
}

/** Ids of the event frames (not comments / retry-only frames). */
export const eventIds = (frames: SseFrame[]): string[] =>
  frames.filter((f) => f.id !== undefined).map((f) => f.id!);

/** One sample of a metric from /metrics (labels as written, e.g. `{reason="slow_client"}`), or 0. */
export async function metric(base: string, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(base + "/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(name + labels + " "));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}
