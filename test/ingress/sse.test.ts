import { connect } from "node:net";
import { EventSource } from "eventsource";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { RunningIngress } from "../../src/ingress/server.js";
import { claimRun, resumeRun, suspendRun } from "../../src/state/scheduler.js";
import { until } from "../support/pg.js";
import {
  call,
  createHarness,
  eventIds,
  FakeWorker,
  metric,
  obj,
  readSse,
  threadAndRun,
  type Harness,
  type SseFrame,
} from "./harness.js";

let h: Harness;
let api: RunningIngress;
beforeEach(async () => {
  h = await createHarness();
  api = await h.start();
});
afterEach(async () => {
  await h?.close();
});

const ev = (type: string, extra: Record<string, unknown> = {}) => ({ type, data: { ...extra } });
const eventsUrl = (base: string, runId: string, qs = "") => `${base}/v1/runs/${runId}/events${qs}`;
const ended = (frames: SseFrame[]) =>
  frames.some((f) => /^run\.(succeeded|failed|cancelled)$/.test(f.event ?? ""));

/** A finished run with coarse events 1..4 and deltas 1.1, 1.2, 2.1, all published. */
async function finishedRun(): Promise<{ runId: string; all: string[] }> {
  const { runId } = await threadAndRun(api.url, h.a.key);
  const w = await FakeWorker.claim(h);
  await w.coarse([ev("run.started")]); // 1
  await w.deltas(["He", "llo"]); // 1.1 1.2
  await w.coarse([ev("message.completed", { text: "Hello" })]); // 2
  await w.deltas(["!"]); // 2.1
  await w.coarse([ev("step.completed", { step_no: 0 })]); // 3
  await w.finish(); // 4 run.succeeded
  return { runId, all: ["1", "1.1", "1.2", "2", "2.1", "3", "4"] };
}

describe("SSE /v1/runs/:id/events", () => {
  it("replays a finished run and ends; resumes from ?after= and Last-Event-ID (N and N.k); 204 past the end", async () => {
    const { runId, all } = await finishedRun();
    const full = await readSse(eventsUrl(api.url, runId), { key: h.a.key });
    expect(full.status).toBe(200);
    expect(full.headers.get("content-type")).toMatch(/^text\/event-stream/);
    expect(full.headers.get("x-request-id")).toBeTruthy();
    expect(eventIds(full.frames)).toEqual(all);
    expect(full.frames.find((f) => f.id === "1")).toMatchObject({ event: "run.started" });
    expect(JSON.parse(full.frames.find((f) => f.id === "1.2")!.data!)).toMatchObject({ text: "llo" });
    expect(full.frames.at(-1)).toMatchObject({ id: "4", event: "run.succeeded" });
    expect(full.frames[0]!.retry).toBeDefined();

    const afterDelta = await readSse(eventsUrl(api.url, runId, "?after=1.1"), { key: h.a.key });
    expect(eventIds(afterDelta.frames)).toEqual(["1.2", "2", "2.1", "3", "4"]);
    const lastEventId = await readSse(eventsUrl(api.url, runId, "?after=1"), {
      key: h.a.key,
      headers: { "last-event-id": "2.1" }, // the header wins over ?after=
    });
    expect(eventIds(lastEventId.frames)).toEqual(["3", "4"]);

    const past = await readSse(eventsUrl(api.url, runId), {
      key: h.a.key,
      headers: { "last-event-id": "4" },
    });
    expect(past.status).toBe(204);
  });

  it("follows a live run from before its first event to its end, keeping the stream open through waiting", async () => {
    const { runId } = await threadAndRun(api.url, h.a.key);
    const reading = readSse(eventsUrl(api.url, runId), { key: h.a.key });
    await until(async () => (await metric(api.url, "capstan_sse_clients")) === 1, {
      what: "the stream to open",
    });

    const w = await FakeWorker.claim(h);
    await w.coarse([ev("run.started")]); // 1
    await w.deltas(["a", "b"]); // 1.1 1.2
    const waiting = await suspendRun(h.t.db, w.run.lease, { reason: "approval" }); // 2 run.waiting
    await w.publish(waiting);
    await resumeRun(h.t.db, h.a.id, runId, { decision: "approve" });
    const again = await claimRun(h.t.db, { workerId: "w2", leaseMs: 60_000 });
    const w2 = new FakeWorker(h, again!);
    await w2.coarse([ev("run.started")]); // 3
    await w2.deltas(["c"]); // 3.1
    await w2.finish(); // 4

    const res = await reading;
    expect(eventIds(res.frames)).toEqual(["1", "1.1", "1.2", "2", "3", "3.1", "4"]);
    expect(res.frames.map((f) => f.event).filter(Boolean)).toContain("run.waiting");
    await until(async () => (await metric(api.url, "capstan_sse_clients")) === 0, {
      what: "the stream to close",
    });
    expect(await metric(api.url, "capstan_ingress_run_watchers")).toBe(0);
  });

  it("fills coarse events the live stream skipped (never published) from Postgres: ids exactly in order, no gap", async () => {
    const { runId } = await threadAndRun(api.url, h.a.key);
    const reading = readSse(eventsUrl(api.url, runId), { key: h.a.key });
    await until(async () => (await metric(api.url, "capstan_sse_clients")) === 1, {
      what: "the stream to open",
    });
    const w = await FakeWorker.claim(h);
    await w.coarse([ev("run.started")]); // 1 published
    await w.coarse([ev("step.completed", { n: 2 })], false); // 2 lost (worker crashed before publishing)
    await w.coarse([ev("step.completed", { n: 3 })], false); // 3 lost
    await w.coarse([ev("step.completed", { n: 4 })]); // 4 published: the reader sees 1 → 4 and fills 2, 3
    await w.coarse([ev("message.completed", { n: 5 })], false); // 5 lost …
    await w.deltas(["x"]); // … but 5.1 arrives: 5 must be sent before it
    await w.finish(); // 6
    const res = await reading;
    expect(eventIds(res.frames)).toEqual(["1", "2", "3", "4", "5", "5.1", "6"]);
    expect(JSON.parse(res.frames.find((f) => f.id === "3")!.data!)).toEqual({ n: 3 });
  });

  it("persisted events that never reach Redis at all are served from Postgres after the grace (NOTIFY)", async () => {
    const { runId } = await threadAndRun(api.url, h.a.key);
    const reading = readSse(eventsUrl(api.url, runId), { key: h.a.key });
    await until(async () => (await metric(api.url, "capstan_sse_clients")) === 1, {
      what: "the stream to open",
    });
    const w = await FakeWorker.claim(h);
    await w.coarse([ev("run.started")], false);
    await w.coarse([ev("step.completed")], false);
    await w.finish("failed", false);
    const res = await reading;
    expect(eventIds(res.frames)).toEqual(["1", "2", "3"]);
    expect(res.frames.at(-1)!.event).toBe("run.failed");
  });

  it("serves from Postgres when the Redis stream was deleted (flush / TTL), then follows new events", async () => {
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    await w.coarse([ev("run.started")]);
    await w.deltas(["gone"]);
    await w.coarse([ev("step.completed")]);
    expect(await h.flushRedis()).toBeGreaterThan(0);
    expect(await h.coord.events.exists(runId)).toBe(false);

    const frames: SseFrame[] = [];
    const reading = readSse(eventsUrl(api.url, runId), {
      key: h.a.key,
      stop: (f) => {
        frames.splice(0, frames.length, ...f);
        return ended(f);
      },
    });
    await until(() => eventIds(frames).length === 2, { what: "the persisted events" });
    expect(eventIds(frames)).toEqual(["1", "2"]); // the lost delta is not resurrected
    await w.coarse([ev("step.completed")], false); // 3: Redis still empty for this run
    await w.coarse([ev("step.completed")]); // 4: the worker publishes again (the stream is recreated)
    await w.deltas(["live"]); // 4.1
    await w.finish(); // 5
    const res = await reading;
    expect(eventIds(res.frames)).toEqual(["1", "2", "3", "4", "4.1", "5"]);
  });

  it("with Redis down, replays and follows from Postgres via LISTEN/NOTIFY", async () => {
    const down = await h.start({ coord: h.deadCoord() });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    await w.coarse([ev("run.started")]);
    const frames: SseFrame[] = [];
    const reading = readSse(eventsUrl(down.url, runId), {
      key: h.a.key,
      stop: (f) => {
        frames.splice(0, frames.length, ...f);
        return ended(f);
      },
    });
    await until(() => eventIds(frames).length === 1, { what: "the first event" });
    await w.coarse([ev("step.completed")]);
    await w.finish();
    const res = await reading;
    expect(eventIds(res.frames)).toEqual(["1", "2", "3"]);
  });

  it("resumes across two ingress instances with Last-Event-ID: ids exactly 1..N (with deltas), no gap, no duplicate", async () => {
    const other = await h.start({ coord: h.openCoord() });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    const expected: string[] = [];
    const step = async (i: number) => {
      expected.push(...(await w.coarse([ev("step.completed", { i })])).map((e) => String(e.id)));
      expected.push(...(await w.deltas([`d${i}a`, `d${i}b`])));
    };
    for (let i = 0; i < 5; i++) await step(i);

    // First connection (instance 1): read 6 events, then drop the connection.
    const first = await readSse(eventsUrl(api.url, runId), {
      key: h.a.key,
      stop: (f) => eventIds(f).length >= 6,
    });
    const got = eventIds(first.frames).slice(0, 6);
    // Meanwhile the run goes on.
    for (let i = 5; i < 10; i++) await step(i);
    const fin = await w.finish();
    expected.push(...fin.map((e) => String(e.id)));

    // Second connection (instance 2) resumes from the last id received.
    const second = await readSse(eventsUrl(other.url, runId), {
      key: h.a.key,
      headers: { "last-event-id": got.at(-1)! },
    });
    const all = [...got, ...eventIds(second.frames)];
    expect(all).toEqual(expected);
    expect(new Set(all).size).toBe(all.length);
    const coarse = all.filter((id) => !id.includes(".")).map(Number);
    expect(coarse).toEqual(Array.from({ length: coarse.length }, (_, i) => i + 1));
  });

  it("the eventsource package as an independent client: same ids, ends after the terminal event", async () => {
    const { runId, all } = await finishedRun();
    const es = new EventSource(eventsUrl(api.url, runId), {
      fetch: (input, init) =>
        fetch(input, { ...init, headers: { ...init?.headers, authorization: `Bearer ${h.a.key}` } }),
    });
    const seen: { id: string; type: string; data: unknown }[] = [];
    const types = ["run.started", "message.delta", "message.completed", "step.completed", "run.succeeded"];
    await new Promise<void>((resolve, reject) => {
      for (const t of types) {
        es.addEventListener(t, (e) => {
          seen.push({ id: e.lastEventId, type: t, data: JSON.parse(String(e.data)) as unknown });
          if (t === "run.succeeded") resolve();
        });
      }
      es.onerror = (e) => {
        if (seen.length === 0) reject(new Error(`EventSource error: ${e.message ?? "unknown"}`));
      };
    });
    es.close();
    expect(seen.map((s) => s.id)).toEqual(all);
    expect(seen.at(-1)).toMatchObject({ type: "run.succeeded", data: { status: "succeeded" } });
  });

  it("sends heartbeat comments while idle", async () => {
    const quick = await h.start({ sse: { heartbeatMs: 50 } });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const res = await readSse(eventsUrl(quick.url, runId), {
      key: h.a.key,
      stop: (f) => f.filter((x) => x.comment === "ping").length >= 2,
    });
    expect(res.frames.filter((f) => f.comment === "ping").length).toBeGreaterThanOrEqual(2);
  });

  it("a client disconnect stops reading and never affects the run", async () => {
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    await w.coarse([ev("run.started")]);
    await readSse(eventsUrl(api.url, runId), { key: h.a.key, stop: (f) => eventIds(f).length >= 1 });
    await until(async () => (await metric(api.url, "capstan_sse_clients")) === 0, {
      what: "the stream to close",
    });
    expect(await metric(api.url, "capstan_ingress_run_watchers")).toBe(0);
    const run = await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.a.key });
    expect(obj(run.body).status).toBe("running");
    await w.coarse([ev("step.completed")]); // the worker's lease is intact
  });

  it("drops a client that stops reading once its buffer stays full past the stall bound; the run goes on", async () => {
    const strict = await h.start({ sse: { stallTimeoutMs: 300, maxBufferedBytes: 64 * 1024 } });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    const big = "z".repeat(60_000);
    for (let i = 0; i < 10; i++)
      await w.coarse(Array.from({ length: 10 }, () => ev("step.completed", { big })));

    // A raw TCP client that sends the request and then never reads.
    const port = Number(new URL(strict.url).port);
    const sock = connect({ host: "127.0.0.1", port });
    sock.pause();
    await new Promise<void>((resolve) => sock.once("connect", () => resolve()));
    sock.write(
      `GET /v1/runs/${runId}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.a.key}\r\nAccept: text/event-stream\r\n\r\n`,
    );
    const closed = new Promise<void>((resolve) => sock.once("close", () => resolve()));
    await until(
      async () =>
        (await metric(strict.url, "capstan_ingress_sse_dropped_total", '{reason="slow_client"}')) === 1,
      {
        what: "the slow client to be dropped",
      },
    );
    sock.resume(); // drain what was buffered so the close is seen
    await closed;
    expect(await metric(strict.url, "capstan_sse_clients")).toBe(0);
    await w.finish();
    expect(obj((await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.a.key })).body).status).toBe(
      "succeeded",
    );
  });

  it("a client that does not read holds at most the byte bound on the server, however large the events", async () => {
    const bound = 64 * 1024;
    const strict = await h.start({ sse: { stallTimeoutMs: 1_500, maxBufferedBytes: bound } });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    // Each event is 16 times the bound: before, one event was one socket write of 1 MB.
    const big = "é".repeat(512 * 1024);
    for (let i = 0; i < 10; i++) await w.coarse([ev("step.completed", { big })]);

    const port = Number(new URL(strict.url).port);
    const sock = connect({ host: "127.0.0.1", port });
    sock.pause();
    await new Promise<void>((resolve) => sock.once("connect", () => resolve()));
    sock.write(
      `GET /v1/runs/${runId}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.a.key}\r\nAccept: text/event-stream\r\n\r\n`,
    );
    const closed = new Promise<void>((resolve) => sock.once("close", () => resolve()));
    const samples: number[] = [];
    await until(
      async () => {
        samples.push(await metric(strict.url, "capstan_ingress_sse_buffered_bytes"));
        return (
          (await metric(strict.url, "capstan_ingress_sse_dropped_total", '{reason="slow_client"}')) === 1
        );
      },
      { what: "the slow client to be dropped" },
    );
    // Blocked (kernel buffers full) with unsent bytes on the server, never more than bound + one slice.
    expect(Math.max(...samples)).toBeGreaterThan(0);
    expect(Math.max(...samples)).toBeLessThanOrEqual(bound + 64 * 1024);
    sock.resume();
    await closed;
    expect(await metric(strict.url, "capstan_ingress_sse_buffered_bytes")).toBe(0);
    await w.finish();
  });

  it("bounds open streams per process: one more is 503 server_busy with Retry-After", async () => {
    const small = await h.start({ maxWatchers: 1 });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const first = readSse(eventsUrl(small.url, runId), { key: h.a.key });
    await until(async () => (await metric(small.url, "capstan_sse_clients")) === 1, {
      what: "the stream to open",
    });
    const refused = await call(small.url, "GET", `/v1/runs/${runId}/events`, { key: h.a.key });
    expect(refused.status).toBe(503);
    expect(obj(refused.body).code).toBe("server_busy");
    expect(refused.headers.get("retry-after")).toBe("1");
    await small.close();
    await first;
  });

  it("after the LISTEN connection is lost and re-established, streams re-read Postgres at once", async () => {
    // A slow poll of one minute: only a notification or the resync can deliver within the test.
    const slow = await h.start({ sse: { pollMs: 60_000 } });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const w = await FakeWorker.claim(h);
    const reading = readSse(eventsUrl(slow.url, runId), { key: h.a.key });
    await until(async () => (await metric(slow.url, "capstan_sse_clients")) === 1, {
      what: "the stream to open",
    });
    const killed = await h.t.db.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE application_name = 'capstan-listen' AND datname = current_database()`,
    );
    expect(killed.rows.length).toBeGreaterThan(0);
    await w.coarse([ev("run.started")], false); // committed while the listener is (probably) down
    await w.finish("succeeded", false);
    const res = await reading;
    expect(eventIds(res.frames)).toEqual(["1", "2"]);
  });

  it("graceful close ends open streams with a retry: hint, promptly", async () => {
    // A grace longer than the test may run: close() returns only if the server itself ends the
    // stream, never because the grace ran out and connections were cut.
    const closing = await h.start({ closeGraceMs: 600_000 });
    const { runId } = await threadAndRun(api.url, h.a.key);
    const reading = readSse(eventsUrl(closing.url, runId), { key: h.a.key });
    await until(async () => (await metric(closing.url, "capstan_sse_clients")) === 1, {
      what: "the stream to open",
    });
    await closing.close();
    const res = await reading;
    expect(res.raw).toMatch(/: server shutting down\nretry: \d+\n\n$/);
  });
});
