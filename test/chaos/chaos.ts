/**
 * The chaos engine: a real cluster (N ingress + M worker processes, a
 * round-robin load balancer) on a PRIVATE PostgreSQL and Redis, a load
 * generator that drives conversations through the typed client, and a seeded
 * fault injector. At the end it checks, from the clients' records, the
 * effects server and the database:
 *
 * - runs lost 0 / stuck 0: every acknowledged run exists and is terminal
 *   (waits are resolved by the clients; unknown side-effect outcomes counted);
 * - duplicate effects 0, from the raw calls the effects server saw
 *   (test/chaos/effects.ts): an idempotent key called again only as a retry
 *   (by a later lease), each idempotent order applied exactly once, a side
 *   effect sent at most once per key and per order, no effect without intent;
 * - every run's journal, every step whatever its status, matches the run's
 *   plan (the tools it names, round by round); a side effect a reviewer
 *   rejected was never sent, one the journal completed was sent exactly once;
 * - each thread's message seqs are 1..n, each run's messages contiguous and
 *   in run order;
 * - each client saw coarse event ids 1..N (N = the run's persisted events),
 *   and every id it saw (deltas `N.k` included) strictly increasing;
 * - the tokens paid for vs the tokens journaled (wasted by crashes), and the
 *   highest attempt count of any run, figures.
 *
 * Everything runs at the shipped defaults (attempts, rate limit, poll period)
 * except the lease, shortened so stalls fit in the window; the clients honour
 * 429 Retry-After.
 *
 * Reproducible: the fault schedule and every client decision come from the
 * seed (the interleaving with the OS scheduler does not).
 */
import pg from "pg";
import { setMaxListeners } from "node:events";
import { resolve } from "node:path";
import { startCluster, type Cluster } from "../../scripts/cluster.js";
import { CapstanApiError, createClient, type CapstanClient, type FetchLike } from "../../src/client/index.js";
import { resolveSettings } from "../../src/config/config.js";
import { compareEventIds } from "../../src/coord/event-id.js";
import { silentLogger } from "../../src/logger.js";
import { createPgDb } from "../../src/state/db.js";
import { createApiKey } from "../../src/state/tenants.js";
import type { ChaosPlan } from "../fixtures/chaos.config.js";
import { ROOT } from "../support/procs.js";
import {
  startPrivatePostgres,
  startPrivateRedis,
  type PrivatePostgres,
  type PrivateRedis,
} from "../support/private-services.js";
import { effectViolations, startChaosEffects, type ChaosEffects } from "./effects.js";
import { journalViolations } from "./journal-check.js";

/** The shipped default, in force in the cluster (no override). */
const DEFAULT_MAX_ATTEMPTS = resolveSettings().worker.maxAttempts;

/** Many sleeps and streams listen on the one abort signal: not a leak. */
function abortController(): AbortController {
  const c = new AbortController();
  setMaxListeners(0, c.signal);
  return c;
}

/* --------------------------------- options -------------------------------- */

export interface ChaosOptions {
  seed: number;
  /** Conversations (threads) driven at once. */
  threads: number;
  /** Turns per thread (a turn creates one run, sometimes two back to back). */
  turnsPerThread: number;
  /** New turns start during this window; faults are injected during it. */
  loadMs: number;
  /** After the window: how long unfinished runs may take before they count as stuck. */
  drainTimeoutMs: number;
  ingress: number;
  workers: number;
  /** CAPSTAN_LEASE_MS of the workers (SIGSTOP lasts longer than this). */
  leaseMs: number;
  /** Gap between faults once every kind was injected at least once. */
  faultGapMs: [number, number];
  /** How much longer the load may run when the faults are behind schedule (slow machine). */
  maxExtensionMs: number;
  /**
   * API keys the conversations share (conversation i uses key i mod n). The rate limit is the
   * production one, per key: the long run's load is that of several client applications.
   */
  apiKeys: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export const SHORT: Omit<ChaosOptions, "seed"> = {
  threads: 40,
  turnsPerThread: 6,
  loadMs: 30_000,
  drainTimeoutMs: 30_000,
  ingress: 2,
  workers: 3,
  leaseMs: 2_000,
  faultGapMs: [1_500, 3_500],
  maxExtensionMs: 10_000,
  apiKeys: 1,
};

export const LONG: Omit<ChaosOptions, "seed"> = {
  threads: 80,
  turnsPerThread: 45,
  loadMs: 240_000,
  drainTimeoutMs: 60_000,
  ingress: 2,
  workers: 3,
  leaseMs: 2_000,
  faultGapMs: [2_000, 5_000],
  maxExtensionMs: 30_000,
  apiKeys: 4,
};

/* ----------------------------------- rng ---------------------------------- */

/** mulberry32: small, fast, seedable. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const between = (r: () => number, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolveSleep) => {
    if (signal?.aborted) return resolveSleep();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolveSleep();
    }
    signal?.addEventListener("abort", done, { once: true });
  });

/* --------------------------------- records -------------------------------- */

export type FaultKind =
  | "kill-worker"
  | "term-worker"
  | "stall-worker"
  | "kill-ingress"
  | "restart-redis"
  | "flush-redis"
  | "restart-postgres";

/** What the timeline records: injected faults, processes that died on their own, and their restarts. */
export type TimelineKind = FaultKind | "crash" | "revive";

export interface FaultEvent {
  /** ms since the load started */
  at: number;
  kind: TimelineKind;
  target: string;
  ms: number;
  detail: string;
  error?: string;
}

interface RunRecord {
  tag: string;
  thread: number;
  threadId: string;
  runId: string;
  plan: ChaosPlan;
  /** Every event id the client saw, in order (bounded). */
  ids: string[];
  idsOverflow: boolean;
  terminal: string | undefined;
  approvals: number;
  rejections: number;
  /** Every decision the client sent, by the step it was about. */
  decisions: Array<{ stepNo: number; reason: string; decision: "approve" | "reject" }>;
  unknownOutcomes: number;
  unknownRejected: number;
  streamGiveUps: number;
  error: string | undefined;
}

const MAX_IDS_PER_RUN = 20_000;

export interface ChaosFigures {
  seed: number;
  wallMs: number;
  threads: number;
  runsCreated: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  lost: number;
  stuck: number;
  orphanRuns: number;
  approvals: number;
  approvalsRejected: number;
  unknownOutcomes: number;
  unknownResolvedApprove: number;
  unknownResolvedReject: number;
  idempotentApplied: number;
  idempotentRequests: number;
  /** Idempotent keys called more than once (each a retry by a later lease). */
  idempotentRetried: number;
  sidePerformed: number;
  pureRequests: number;
  duplicateEffects: number;
  /** Runs whose journal did not match their plan. */
  planMismatches: number;
  /** The highest `attempts` (claims) of any run, and how many runs were claimed more than once. */
  maxAttempts: number;
  runsRetried: number;
  /** Answers 429 the clients got (they waited Retry-After and went on). */
  rateLimited: number;
  threadsChecked: number;
  messages: number;
  messageGaps: number;
  messageOrderViolations: number;
  coarseEventsSeen: number;
  deltasSeen: number;
  eventGaps: number;
  eventDuplicatesOrReorders: number;
  streamRequests: number;
  streamReconnects: number;
  llmCalls: number;
  llmStepsJournaled: number;
  reissuedCalls: number;
  tokensPaid: number;
  tokensJournaled: number;
  tokensWasted: number;
  lbRequests: number;
  lbRerouted: number;
  lb502: number;
  lbCut: number;
  /** Processes that died without being killed by the injector (each is a violation). */
  crashes: number;
  faults: Partial<Record<FaultKind, number>>;
}

export interface ChaosResult {
  ok: boolean;
  seed: number;
  violations: string[];
  figures: ChaosFigures;
  timeline: FaultEvent[];
  /** The figures, printed. */
  report: string;
  /** Seed, timeline, violations, failing runs and the tail of every process's output. */
  debug: string;
}

/* --------------------------------- session -------------------------------- */

/**
 * One chaos run. `dispose()` (idempotent) kills every process and removes the
 * private services: call it from afterAll so a timeout never leaks anything.
 */
export class ChaosSession {
  private pg: PrivatePostgres | undefined;
  private redis: PrivateRedis | undefined;
  private effects: ChaosEffects | undefined;
  private cluster: Cluster | undefined;
  private readonly abort = abortController();
  private readonly timeline: FaultEvent[] = [];
  private readonly records: RunRecord[] = [];
  private readonly streamRequests = new Map<string, number>();
  private rateLimited = 0;
  private apiKeys: string[] = [];
  private readonly loadErrors: string[] = [];
  private t0 = 0;
  private disposed: Promise<void> | undefined;
  /** Pids the injector killed or stopped on purpose: their exits are not crashes. */
  private readonly expectedExits = new Set<number>();
  private readonly crashes: Array<{ at: number; name: string; pid: number | undefined; exit: string }> = [];
  private stopping = false;
  private loadDone = false;
  /** New turns start until then (moved later when faults are behind schedule). */
  private loadEnd = 0;
  private extendedMs = 0;
  private readonly restarting = new Map<string, Promise<void>>();

  constructor(private readonly opts: ChaosOptions) {}

  private log(line: string): void {
    this.opts.log?.(`[chaos +${((Date.now() - this.t0) / 1000).toFixed(1)}s] ${line}`);
  }

  async run(): Promise<ChaosResult> {
    const started = Date.now();
    this.t0 = started;
    const o = this.opts;
    this.log(
      `seed ${o.seed}: ${o.ingress} ingress, ${o.workers} workers, ${o.threads} threads × ${o.turnsPerThread} turns over ${o.loadMs / 1000}s`,
    );
    this.pg = await startPrivatePostgres();
    this.redis = await startPrivateRedis();
    this.effects = await startChaosEffects();
    this.log(`private postgres :${this.pg.port}, redis :${this.redis.port}; starting the cluster`);
    this.cluster = await startCluster({
      ingress: o.ingress,
      workers: o.workers,
      databaseUrl: this.pg.url("capstan_chaos"),
      redisUrl: this.redis.url,
      redisPrefix: "capstan:chaos:",
      config: resolve(ROOT, "test/fixtures/chaos.config.ts"),
      tenant: "chaos",
      stopGraceMs: 3_000,
      readyTimeoutMs: 60_000,
      logLevel: "warn",
      onExit: (name, exit, pid) => this.onExit(name, exit, pid),
      env: {
        EFFECTS_URL: this.effects.url,
        // Defaults everywhere (max attempts, rate limit, poll period) but the lease: a stall
        // must outlast it within the window.
        CAPSTAN_LEASE_MS: String(o.leaseMs),
        CAPSTAN_SHUTDOWN_GRACE_MS: "500",
        CAPSTAN_DB_POOL_SIZE: "8",
      },
    });
    this.apiKeys = [this.cluster.apiKey, ...(await this.extraApiKeys(o.apiKeys - 1))];
    this.log(`cluster up: lb ${this.cluster.url}, ingress ${this.cluster.ingressUrls.join(" ")}`);

    this.t0 = Date.now();
    const loadEnd = this.t0 + o.loadMs;
    this.loadEnd = loadEnd;
    const load = Promise.all(Array.from({ length: o.threads }, (_, i) => this.conversation(i))).then(() => {
      this.loadDone = true;
    });
    // Faults until the end of the window, then supervision (restart what crashed) until the load is done.
    const faults = this.injectFaults(loadEnd);
    // The drain deadline follows the (possibly extended) window.
    while (!this.loadDone && Date.now() < this.loadEnd + o.drainTimeoutMs) await sleep(100);
    const drained = this.loadDone;
    if (!drained) {
      this.log("drain timed out: aborting the clients still waiting");
      this.abort.abort(new Error("drain timeout"));
      await load;
    }
    await faults;
    this.stopping = true;
    this.log("load over; checking");
    return this.check(Date.now() - started, drained);
  }

  private onExit(
    name: string,
    exit: { code: number | null; signal: NodeJS.Signals | null },
    pid: number | undefined,
  ): void {
    if (this.stopping || (pid !== undefined && this.expectedExits.has(pid))) return;
    const at = Date.now() - this.t0;
    const how = exit.signal ?? `exit code ${exit.code}`;
    this.crashes.push({ at, name, pid, exit: how });
    this.timeline.push({
      at,
      kind: "crash",
      target: `${name} pid ${pid}`,
      ms: 0,
      detail: `died on its own (${how})`,
    });
    this.log(`CRASH: ${name} pid ${pid} died on its own (${how})`);
  }

  private expectExit(pid: number | undefined): void {
    if (pid !== undefined) this.expectedExits.add(pid);
  }

  /* ------------------------------ load generator ----------------------------- */

  private client(thread: number): CapstanClient {
    const c = this.cluster!;
    const counting: FetchLike = async (input, init) => {
      const m = /\/v1\/runs\/([^/]+)\/events/.exec(input);
      if (m?.[1]) this.streamRequests.set(m[1], (this.streamRequests.get(m[1]) ?? 0) + 1);
      const res = await globalThis.fetch(input, init);
      if (res.status === 429) this.rateLimited++;
      return res;
    };
    // Even threads go through the load balancer; odd ones rotate over the ingress replicas themselves.
    const rotated = c.ingressUrls.map((_, k) => c.ingressUrls[(thread + k) % c.ingressUrls.length]!);
    return createClient({
      ...(thread % 2 === 0 ? { baseUrl: c.url } : { baseUrls: rotated }),
      apiKey: this.apiKeys[thread % this.apiKeys.length]!,
      fetch: counting,
      timeoutMs: 15_000,
      stream: { maxRetries: 40, initialDelayMs: 100, maxDelayMs: 2_000 },
    });
  }

  /** More API keys of the chaos tenant (the cluster made one). */
  private async extraApiKeys(n: number): Promise<string[]> {
    if (n <= 0) return [];
    const db = createPgDb({ url: this.pg!.url("capstan_chaos"), poolSize: 1, logger: silentLogger() });
    try {
      const keys: string[] = [];
      for (let k = 0; k < n; k++)
        keys.push((await createApiKey(db, this.cluster!.tenantId, `chaos client ${k + 2}`)).key);
      return keys;
    } finally {
      await db.close();
    }
  }

  /** Retry what the client reports as transient (no answer, 429, 5xx), with the same idempotency key. */
  private async retrying<T>(what: string, fn: () => Promise<T>, budgetMs = 90_000): Promise<T> {
    const deadline = Date.now() + budgetMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        const transient =
          err instanceof CapstanApiError && (err.status === 0 || err.status === 429 || err.status >= 500);
        if (!transient || Date.now() > deadline || this.abort.signal.aborted) {
          throw new Error(`${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        }
        // 429: wait as told (the production rate limit is in force); else back off.
        const retryAfterMs =
          err instanceof CapstanApiError && err.retryAfter !== undefined ? err.retryAfter * 1000 : 0;
        await sleep(Math.max(retryAfterMs, Math.min(2_000, 100 * attempt)), this.abort.signal);
      }
    }
  }

  private planFor(r: () => number, tag: string): ChaosPlan {
    const rounds: ChaosPlan["rounds"] = [];
    const n = r() < 0.1 ? 0 : between(r, 1, 3);
    let emails = 0;
    for (let i = 0; i < n; i++) {
      const round: ChaosPlan["rounds"][number] = [];
      const size = r() < 0.35 ? 2 : 1;
      for (let j = 0; j < size; j++) {
        const t = r();
        if (t < 0.25 && emails < 1 && !round.includes("email")) {
          round.push("email");
          emails++;
        } else if (t < 0.65) round.push("charge");
        else round.push("lookup");
      }
      rounds.push(round);
    }
    return { tag, rounds };
  }

  private async conversation(i: number): Promise<void> {
    const r = rng((this.opts.seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
    const client = this.client(i);
    const signal = this.abort.signal;
    const slot = this.opts.loadMs / this.opts.turnsPerThread;
    try {
      // Threads start spread over the first slot.
      await sleep(Math.floor(r() * slot), signal);
      const thread = await this.retrying(`thread ${i}: create`, () =>
        client.threads.create(
          { metadata: { chaos: i } },
          { idempotencyKey: `thread-${this.opts.seed}-${i}`, signal },
        ),
      );
      let turn = 0;
      // turnsPerThread paces the turns; more only happen when the window is extended.
      while (turn < 2 * this.opts.turnsPerThread && Date.now() < this.loadEnd && !signal.aborted) {
        // Sometimes two runs back to back: the second queues behind the first (FIFO per thread).
        const batch = r() < 0.2 ? 2 : 1;
        const recs: RunRecord[] = [];
        for (let b = 0; b < batch; b++) {
          const tag = `c${i}.${turn++}`;
          const plan = this.planFor(r, tag);
          const run = await this.retrying(`${tag}: create run`, () =>
            client.runs.create(
              thread.id,
              { agent: "chaos", input: `Please follow this plan: ${JSON.stringify(plan)}` },
              { idempotencyKey: `run-${this.opts.seed}-${tag}`, signal },
            ),
          );
          const rec: RunRecord = {
            tag,
            thread: i,
            threadId: thread.id,
            runId: run.id,
            plan,
            ids: [],
            idsOverflow: false,
            terminal: undefined,
            approvals: 0,
            rejections: 0,
            decisions: [],
            unknownOutcomes: 0,
            unknownRejected: 0,
            streamGiveUps: 0,
            error: undefined,
          };
          this.records.push(rec);
          recs.push(rec);
        }
        // Decisions are drawn before streaming, so concurrent streams do not race for the rng.
        await Promise.all(recs.map((rec) => this.follow(client, rec, rng(Math.floor(r() * 2 ** 32)))));
        const next = this.t0 + turn * slot + Math.floor(r() * slot * 0.5);
        await sleep(Math.max(50, next - Date.now()), signal);
      }
    } catch (err) {
      if (!signal.aborted)
        this.loadErrors.push(`thread ${i}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** Stream a run to its end through the typed client (which reconnects by itself), answering waits. */
  private async follow(client: CapstanClient, rec: RunRecord, r: () => number): Promise<void> {
    const signal = this.abort.signal;
    let last: string | undefined;
    for (;;) {
      try {
        for await (const ev of client.runs.stream(rec.runId, { ...(last ? { after: last } : {}), signal })) {
          if (rec.ids.length < MAX_IDS_PER_RUN) rec.ids.push(ev.id);
          else rec.idsOverflow = true;
          last = ev.id;
          if (ev.event === "run.waiting") await this.decide(client, rec, ev.id, ev.data, r);
          if (ev.event === "run.succeeded" || ev.event === "run.failed" || ev.event === "run.cancelled") {
            rec.terminal = ev.event;
            return;
          }
        }
        // 204: finished and nothing after the cursor (the terminal event was seen before).
        return;
      } catch (err) {
        if (signal.aborted) {
          rec.error = "aborted by the drain timeout";
          return;
        }
        rec.streamGiveUps++;
        if (rec.streamGiveUps > 20) {
          rec.error = `stream failed for good: ${err instanceof Error ? err.message : String(err)}`;
          return;
        }
        await sleep(500, signal);
      }
    }
  }

  private async decide(
    client: CapstanClient,
    rec: RunRecord,
    eventId: string,
    data: Record<string, unknown>,
    r: () => number,
  ): Promise<void> {
    const wait = (data.wait ?? {}) as { reason?: string; idempotency_key?: string; step_no?: number };
    let decision: "approve" | "reject";
    let input: string | undefined;
    if (wait.reason === "unknown_outcome") {
      // What a human would do: look whether the email went out, then decide.
      rec.unknownOutcomes++;
      const sent = this.effects!.sent(wait.idempotency_key ?? "") > 0;
      decision = sent ? "reject" : "approve";
      if (sent) {
        rec.unknownRejected++;
        input = "it was sent already";
      }
    } else {
      rec.approvals++;
      decision = r() < 0.15 ? "reject" : "approve";
      if (decision === "reject") rec.rejections++;
    }
    rec.decisions.push({ stepNo: Number(wait.step_no ?? -1), reason: wait.reason ?? "", decision });
    // A human takes a moment: the stream stays open on a waiting run meanwhile.
    await sleep(between(r, 200, 1_500), this.abort.signal);
    try {
      await this.retrying(`${rec.tag}: resume`, () =>
        client.runs.resume(
          rec.runId,
          { decision, ...(input ? { input } : {}) },
          { idempotencyKey: `resume-${rec.runId}-${eventId}`, signal: this.abort.signal },
        ),
      );
    } catch (err) {
      // Already resumed (an earlier attempt whose answer was lost): the stream goes on.
      const cause = err instanceof Error ? err.cause : undefined;
      if (cause instanceof CapstanApiError && cause.code === "run_not_waiting") return;
      throw err;
    }
  }

  /* ------------------------------ fault injector ----------------------------- */

  private async injectFaults(loadEnd: number): Promise<void> {
    const r = rng(this.opts.seed ^ 0x5eed);
    // Every kind once (in a seeded order, PostgreSQL once in the middle), then a second
    // worker and ingress kill, then random extras while the window lasts.
    const must: FaultKind[] = [
      "kill-worker",
      "stall-worker",
      "kill-ingress",
      "restart-redis",
      "flush-redis",
      "term-worker",
    ];
    for (let i = must.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [must[i], must[j]] = [must[j]!, must[i]!];
    }
    must.splice(Math.floor(must.length / 2), 0, "restart-postgres");
    must.push("kill-worker", "kill-ingress");
    const extras: FaultKind[] = [
      "kill-worker",
      "kill-worker",
      "stall-worker",
      "kill-ingress",
      "term-worker",
      "restart-redis",
      "flush-redis",
    ];
    const stopAt = loadEnd - 2_000;
    const hardStop = stopAt + this.opts.maxExtensionMs;
    const signal = this.abort.signal;
    await this.supervise(1_500);
    for (;;) {
      if (signal.aborted) break;
      if (Date.now() >= stopAt) {
        // Every kind must have happened under load: keep the load going a little longer if not.
        if (must.length === 0 || Date.now() >= hardStop) break;
        if (this.loadEnd < Date.now() + 3_000) {
          this.loadEnd = Date.now() + 3_000;
          this.extendedMs = this.loadEnd - loadEnd;
        }
      }
      const kind = must.shift() ?? pick(r, extras);
      const target = r();
      const pause = r();
      await this.fault(kind, target, pause);
      // Leave room for the remaining must-have faults (about 2.5 s each, restarts included).
      const left = must.length;
      const usual = between(r, this.opts.faultGapMs[0], this.opts.faultGapMs[1]);
      const gap = left
        ? Math.min(usual, Math.max(200, (stopAt - Date.now() - left * 2_500) / (left + 1)))
        : usual;
      await this.supervise(gap);
    }
    if (this.extendedMs > 0)
      this.log(`load window extended by ${(this.extendedMs / 1000).toFixed(1)} s for the last faults`);
    this.log("fault injection over; draining");
    await this.settleRestarts();
    while (!this.loadDone && !signal.aborted) await this.supervise(250);
  }

  /**
   * Wait `ms`, restarting any process that died on its own meanwhile (what a
   * supervisor such as Kubernetes does): a crash is a violation, but the run
   * goes on with full capacity so the other checks stay meaningful.
   */
  private async supervise(ms: number): Promise<void> {
    const c = this.cluster!;
    const end = Date.now() + ms;
    for (;;) {
      for (const [role, n] of [
        ["worker", this.opts.workers],
        ["ingress", this.opts.ingress],
      ] as const) {
        for (let i = 0; i < n; i++) {
          if (c.alive(role, i) || this.restarting.has(`${role}-${i}`) || this.abort.signal.aborted) continue;
          const t = Date.now();
          const ev: FaultEvent = {
            at: t - this.t0,
            kind: "revive",
            target: `${role}-${i + 1}`,
            ms: 0,
            detail: "restarted after a crash",
          };
          try {
            await (role === "worker" ? c.restartWorker(i) : c.restartIngress(i));
          } catch (err) {
            ev.error = err instanceof Error ? err.message.slice(0, 2_000) : String(err);
          }
          ev.ms = Date.now() - t;
          this.timeline.push(ev);
          this.log(
            `revive ${ev.target}${ev.error ? ` FAILED: ${ev.error.split("\n")[0]}` : ""} (${ev.ms} ms)`,
          );
        }
      }
      const left = end - Date.now();
      if (left <= 0 || this.abort.signal.aborted) return;
      await sleep(Math.min(250, left), this.abort.signal);
    }
  }

  /** A slot to hit: alive and not being restarted; `undefined` when none is (after waiting for restarts). */
  private async target(
    role: "worker" | "ingress",
    draw: number,
    prefer?: (i: number) => number,
  ): Promise<number> {
    const c = this.cluster!;
    const n = role === "worker" ? this.opts.workers : this.opts.ingress;
    const free = () =>
      Array.from({ length: n }, (_, i) => i).filter(
        (i) => c.alive(role, i) && !this.restarting.has(`${role}-${i}`),
      );
    let candidates = free();
    // Never take down the last replica of a role: wait for the others to be back first.
    if (candidates.length < 2 && n > 1) {
      await this.settleRestarts();
      candidates = free();
    }
    if (prefer && candidates.length > 0) {
      const best = Math.max(...candidates.map(prefer));
      candidates = candidates.filter((i) => prefer(i) === best);
    }
    return candidates[Math.floor(draw * candidates.length)] ?? Math.floor(draw * n);
  }

  /** Restart a slot in the background (the next fault does not wait for it to be ready). */
  private restartLater(role: "worker" | "ingress", i: number, ev: FaultEvent, since: number): void {
    const c = this.cluster!;
    const key = `${role}-${i}`;
    const p = (role === "worker" ? c.restartWorker(i) : c.restartIngress(i))
      .then(
        () => {
          ev.detail += `, ready again after ${Date.now() - since} ms`;
        },
        (err: unknown) => {
          ev.error = `restart failed: ${err instanceof Error ? err.message.slice(0, 2_000) : String(err)}`;
        },
      )
      .finally(() => this.restarting.delete(key));
    this.restarting.set(key, p);
  }

  private async settleRestarts(): Promise<void> {
    while (this.restarting.size > 0) await Promise.all([...this.restarting.values()]);
  }

  private async fault(kind: FaultKind, targetDraw: number, pauseDraw: number): Promise<void> {
    const c = this.cluster!;
    const t = Date.now();
    const ev: FaultEvent = { at: t - this.t0, kind, target: "", ms: 0, detail: "" };
    const pause = (lo: number, hi: number) => Math.floor(lo + pauseDraw * (hi - lo));
    try {
      switch (kind) {
        case "kill-worker": {
          const wi = await this.target("worker", targetDraw);
          ev.at = Date.now() - this.t0;
          ev.target = `worker-${wi + 1} pid ${c.workers[wi]?.child.pid}`;
          this.expectExit(c.workers[wi]?.child.pid);
          await c.killWorker(wi, "SIGKILL");
          const p = pause(200, 1_200);
          await sleep(p);
          ev.detail = `SIGKILL, down ${p} ms, restarting`;
          this.restartLater("worker", wi, ev, t);
          break;
        }
        case "term-worker": {
          const wi = await this.target("worker", targetDraw);
          ev.at = Date.now() - this.t0;
          ev.target = `worker-${wi + 1} pid ${c.workers[wi]?.child.pid}`;
          this.expectExit(c.workers[wi]?.child.pid);
          ev.detail = "SIGTERM (graceful hand-off), restarting";
          this.restartLater("worker", wi, ev, t);
          break;
        }
        case "stall-worker": {
          const wi = await this.target("worker", targetDraw);
          ev.at = Date.now() - this.t0;
          ev.target = `worker-${wi + 1} pid ${c.workers[wi]?.child.pid}`;
          const p = this.opts.leaseMs + pause(1_000, 2_000);
          await c.killWorker(wi, "SIGSTOP");
          await sleep(p);
          await c.killWorker(wi, "SIGCONT");
          ev.detail = `SIGSTOP for ${p} ms (lease ${this.opts.leaseMs} ms), SIGCONT`;
          break;
        }
        case "kill-ingress": {
          // The replica serving the most streams through the load balancer: a kill mid-stream.
          const open = c.lb.stats().openByBackend;
          const openOn = (i: number) => open[c.ingressUrls[i] ?? ""] ?? 0;
          const k = await this.target("ingress", targetDraw, openOn);
          ev.at = Date.now() - this.t0;
          ev.target = `ingress-${k + 1} pid ${c.ingresses[k]?.child.pid}`;
          const streams = openOn(k);
          this.expectExit(c.ingresses[k]?.child.pid);
          await c.killIngress(k, "SIGKILL");
          const p = pause(200, 1_000);
          await sleep(p);
          ev.detail = `SIGKILL with ${streams} exchanges open through the LB on it, down ${p} ms, restarting`;
          this.restartLater("ingress", k, ev, t);
          break;
        }
        case "restart-redis": {
          ev.target = `redis :${this.redis!.port}`;
          await this.redis!.stop("SIGKILL");
          const p = pause(300, 1_500);
          await sleep(p);
          await this.redis!.start();
          ev.detail = `SIGKILL, down ${p} ms, restarted empty`;
          break;
        }
        case "flush-redis": {
          ev.target = `redis :${this.redis!.port}`;
          await this.redis!.flushAll();
          ev.detail = "FLUSHALL";
          break;
        }
        case "restart-postgres": {
          // A process starting while PostgreSQL is down exits (by design): let restarts finish first.
          await this.settleRestarts();
          ev.at = Date.now() - this.t0;
          ev.target = `postgres :${this.pg!.port}`;
          await this.pg!.stop("immediate");
          const p = pause(300, 1_500);
          await sleep(p);
          await this.pg!.start();
          ev.detail = `pg_ctl stop -m immediate, down ${p} ms, started (crash recovery)`;
          break;
        }
      }
    } catch (err) {
      ev.error = err instanceof Error ? err.message.slice(0, 2_000) : String(err);
    }
    ev.ms = Date.now() - t;
    this.timeline.push(ev);
    this.log(
      `${kind} ${ev.target}: ${ev.detail}${ev.error ? ` FAILED: ${ev.error.split("\n")[0]}` : ""} (${ev.ms} ms)`,
    );
  }

  /* --------------------------------- checks --------------------------------- */

  private async check(wallMs: number, drained: boolean): Promise<ChaosResult> {
    const violations: string[] = [];
    const v = (s: string) => {
      if (violations.length < 500) violations.push(s);
    };
    const fx = this.effects!;
    const c = this.cluster!;
    for (const e of this.loadErrors) v(`load generator: ${e}`);
    for (const x of this.crashes) {
      const out = this.cluster?.logs(20_000).find((l) => l.pid === x.pid)?.output ?? "";
      const lines = out.split("\n");
      const why =
        lines.find((l) => /^[A-Za-z]*Error(\s\[\w+\])?: /.test(l)) ??
        lines.find((l) => /Unhandled|uncaught/i.test(l)) ??
        "(no error line in its output)";
      v(
        `process ${x.name} pid ${x.pid} crashed at +${(x.at / 1000).toFixed(1)}s (${x.exit}): ${why.slice(0, 300)}`,
      );
    }
    for (const f of this.timeline)
      if (f.error) v(`fault ${f.kind} ${f.target} failed: ${f.error.split("\n")[0]}`);
    if (!drained) v("the runs did not all finish within the drain timeout");
    if (fx.overflow > 0) v(`effects server refused ${fx.overflow} requests (key table full)`);

    const pool = new pg.Pool({ connectionString: this.pg!.url("capstan_chaos"), max: 2 });
    pool.on("error", () => {});
    const q = async <R extends pg.QueryResultRow>(sql: string, params: unknown[] = []) =>
      (await pool.query<R>(sql, params)).rows;
    try {
      const runs = await q<{
        id: string;
        thread_id: string;
        status: string;
        seq: number;
        attempts: number;
        error: { code?: string; message?: string } | null;
        wait: unknown;
        usage: string;
      }>(
        `SELECT id, thread_id, status, seq::int AS seq, attempts, error, wait,
                (input_tokens + output_tokens)::text AS usage
           FROM runs WHERE tenant_id = $1 ORDER BY runs.seq`,
        [c.tenantId],
      );
      const steps = await q<{
        run_id: string;
        step_no: number;
        kind: string;
        status: string;
        effect: string | null;
        idempotency_key: string | null;
        tool_name: string | null;
        input: unknown;
        tokens: number | null;
        error: { code?: string } | null;
      }>(
        `SELECT run_id, step_no, kind, status, effect, idempotency_key, tool_name, input,
                (coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens, error
           FROM steps ORDER BY run_id, step_no`,
      );
      const events = await q<{ run_id: string; n: string; c: string }>(
        "SELECT run_id, max(id)::text AS n, count(*)::text AS c FROM run_events GROUP BY run_id",
      );
      const messages = await q<{ thread_id: string; seq: number; role: string; run_id: string | null }>(
        "SELECT thread_id, seq::int AS seq, role, run_id FROM messages ORDER BY thread_id, messages.seq",
      );

      /* runs */
      const byId = new Map(runs.map((x) => [x.id, x]));
      const known = new Set(this.records.map((x) => x.runId));
      let lost = 0;
      let stuck = 0;
      const count = (s: string) => runs.filter((x) => x.status === s).length;
      for (const rec of this.records) {
        const row = byId.get(rec.runId);
        if (!row) {
          lost++;
          v(`run ${rec.tag} ${rec.runId} was acknowledged (202) but is not in the database`);
          continue;
        }
        if (!["succeeded", "failed", "cancelled"].includes(row.status)) {
          stuck++;
          v(
            `run ${rec.tag} ${rec.runId} is stuck in ${row.status} (attempts ${row.attempts}, wait ${JSON.stringify(row.wait)})`,
          );
        }
        if (row.status === "failed") v(`run ${rec.tag} ${rec.runId} failed: ${JSON.stringify(row.error)}`);
        if (rec.error) v(`client of ${rec.tag} ${rec.runId}: ${rec.error}`);
        const expected = `run.${row.status}`;
        if (["succeeded", "failed", "cancelled"].includes(row.status) && rec.terminal !== expected)
          v(`client of ${rec.tag} saw terminal ${rec.terminal ?? "(none)"} but the run is ${row.status}`);
      }
      const orphans = runs.filter((x) => !known.has(x.id));
      for (const o of orphans)
        v(`run ${o.id} (${o.status}) exists but no client was told about it (duplicate create?)`);

      /* effects: the raw calls, then each run's journal against its plan */
      const stepByKey = new Map<string, (typeof steps)[number]>();
      for (const s of steps) if (s.idempotency_key && s.kind === "tool") stepByKey.set(s.idempotency_key, s);
      const raw = effectViolations(fx);
      for (const x of raw) v(`${x.message} (${this.describeKey(x.subject)})`);
      const duplicates = raw.length;
      for (const kind of ["idem", "side"] as const) {
        for (const key of fx.requests[kind].keys()) {
          const s = stepByKey.get(key);
          if (!s) v(`${kind} effect with key ${key} has no journaled tool step (effect without intent)`);
        }
      }
      const stepsByRun = new Map<string, typeof steps>();
      for (const s of steps) stepsByRun.set(s.run_id, [...(stepsByRun.get(s.run_id) ?? []), s]);
      let planMismatches = 0;
      for (const rec of this.records) {
        const row = byId.get(rec.runId);
        if (!row) continue;
        const found = journalViolations(
          {
            name: `${rec.tag} ${rec.runId}`,
            runId: rec.runId,
            status: row.status,
            plan: rec.plan,
            steps: stepsByRun.get(rec.runId) ?? [],
            decisions: rec.decisions,
          },
          fx,
        );
        if (found.length) planMismatches++;
        for (const x of found) v(x);
      }

      /* messages */
      const byThread = new Map<string, typeof messages>();
      for (const m of messages) {
        const list = byThread.get(m.thread_id) ?? [];
        list.push(m);
        byThread.set(m.thread_id, list);
      }
      let gaps = 0;
      let orderViolations = 0;
      const chaosThreads = new Set(this.records.map((x) => x.threadId));
      for (const tid of chaosThreads) {
        const list = byThread.get(tid) ?? [];
        list.forEach((m, k) => {
          if (m.seq !== k + 1) {
            gaps++;
            if (gaps <= 20) v(`thread ${tid}: message #${k + 1} has seq ${m.seq} (expected ${k + 1})`);
          }
        });
        // Each run's messages are contiguous, start with its user message, and runs appear in enqueue order.
        const order: string[] = [];
        for (const m of list) {
          const rid = m.run_id ?? "";
          if (order.at(-1) !== rid) {
            if (order.includes(rid)) {
              orderViolations++;
              v(`thread ${tid}: messages of run ${rid} are interleaved with another run's`);
            }
            order.push(rid);
            if (m.role !== "user") {
              orderViolations++;
              v(`thread ${tid}: run ${rid} starts with a ${m.role} message, not its user message`);
            }
          }
        }
        const seqs = order.map((rid) => byId.get(rid)?.seq ?? NaN);
        for (let k = 1; k < seqs.length; k++) {
          if (!(seqs[k]! > seqs[k - 1]!)) {
            orderViolations++;
            v(
              `thread ${tid}: run ${order[k]} (seq ${seqs[k]}) appears after run ${order[k - 1]} (seq ${seqs[k - 1]})`,
            );
          }
        }
        for (const rec of this.records.filter((x) => x.threadId === tid)) {
          const row = byId.get(rec.runId);
          if (
            row?.status === "succeeded" &&
            !list.some((m) => m.run_id === rec.runId && m.role === "assistant")
          )
            v(`run ${rec.tag} succeeded without an assistant message in its thread`);
        }
      }

      /* events */
      const eventsByRun = new Map(events.map((e) => [e.run_id, { n: Number(e.n), c: Number(e.c) }]));
      let coarseSeen = 0;
      let deltasSeen = 0;
      let eventGaps = 0;
      let dupOrReorder = 0;
      for (const rec of this.records) {
        const persisted = eventsByRun.get(rec.runId) ?? { n: 0, c: 0 };
        if (persisted.c !== persisted.n)
          v(
            `run ${rec.tag} ${rec.runId}: persisted event ids have gaps (${persisted.c} events, max id ${persisted.n})`,
          );
        for (let k = 1; k < rec.ids.length; k++) {
          if (compareEventIds(rec.ids[k - 1]!, rec.ids[k]!) >= 0) {
            dupOrReorder++;
            if (dupOrReorder <= 20)
              v(
                `run ${rec.tag} ${rec.runId}: client saw id ${rec.ids[k]} after ${rec.ids[k - 1]} (duplicate or out of order)`,
              );
          }
        }
        const coarse = rec.ids.filter((id) => !id.includes("."));
        coarseSeen += coarse.length;
        deltasSeen += rec.ids.length - coarse.length;
        const row = byId.get(rec.runId);
        if (!row || rec.idsOverflow || !["succeeded", "failed", "cancelled"].includes(row.status)) continue;
        const want = persisted.n;
        const seen = new Set(coarse.map(Number));
        const missing: number[] = [];
        for (let k = 1; k <= want; k++) if (!seen.has(k)) missing.push(k);
        const extra = coarse.map(Number).filter((n) => n < 1 || n > want);
        if (missing.length || extra.length || coarse.length !== want) {
          eventGaps++;
          if (eventGaps <= 20)
            v(
              `run ${rec.tag} ${rec.runId}: client saw coarse ids [${coarse.join(",")}], expected 1..${want}` +
                (missing.length ? ` (missing ${missing.join(",")})` : ""),
            );
        }
      }

      /* tokens */
      const llmSteps = steps.filter((s) => s.kind === "llm");
      const tokensJournaled = llmSteps.reduce((a, s) => a + (s.tokens ?? 0), 0);
      const totals = fx.totals();
      const usageTotal = runs.reduce((a, x) => a + Number(x.usage), 0);
      if (usageTotal !== tokensJournaled)
        v(`runs' usage totals ${usageTotal} tokens but their journaled LLM steps ${tokensJournaled}`);
      if (totals.llmTokens < tokensJournaled)
        v(
          `tokens journaled (${tokensJournaled}) exceed the tokens of model calls made (${totals.llmTokens})`,
        );
      for (const rec of this.records) {
        // Every journaled LLM step was a distinct model call (key tag:step).
        const rows = llmSteps.filter((s) => s.run_id === rec.runId);
        const calls = [...fx.llm.entries()].filter(([k]) => k.startsWith(`${rec.tag}:`));
        if (rows.length > 0 && calls.length < rows.length)
          v(
            `run ${rec.tag}: ${rows.length} LLM steps journaled but only ${calls.length} distinct model calls made`,
          );
      }

      const streamRequests = [...this.streamRequests.values()].reduce((a, b) => a + b, 0);
      const lb = c.lb.stats();
      const faults: Partial<Record<FaultKind, number>> = {};
      for (const f of this.timeline)
        if (f.kind !== "crash" && f.kind !== "revive") faults[f.kind] = (faults[f.kind] ?? 0) + 1;
      for (const k of [
        "kill-worker",
        "stall-worker",
        "kill-ingress",
        "restart-redis",
        "flush-redis",
        "restart-postgres",
      ] as const)
        if (!faults[k]) v(`fault ${k} was never injected (load too short?)`);

      const figures: ChaosFigures = {
        seed: this.opts.seed,
        wallMs,
        threads: chaosThreads.size,
        runsCreated: this.records.length,
        succeeded: count("succeeded"),
        failed: count("failed"),
        cancelled: count("cancelled"),
        lost,
        stuck,
        orphanRuns: orphans.length,
        approvals: this.sum((x) => x.approvals),
        approvalsRejected: this.sum((x) => x.rejections),
        unknownOutcomes: this.sum((x) => x.unknownOutcomes),
        unknownResolvedApprove: this.sum((x) => x.unknownOutcomes - x.unknownRejected),
        unknownResolvedReject: this.sum((x) => x.unknownRejected),
        idempotentApplied: totals.idemApplied,
        idempotentRequests: totals.idem,
        idempotentRetried: [...fx.calls.idem.values()].filter((l) => l.length > 1).length,
        sidePerformed: totals.sideApplied,
        pureRequests: totals.pure,
        duplicateEffects: duplicates,
        planMismatches,
        maxAttempts: runs.reduce((a, x) => Math.max(a, x.attempts), 0),
        runsRetried: runs.filter((x) => x.attempts > 1).length,
        rateLimited: this.rateLimited,
        threadsChecked: chaosThreads.size,
        messages: messages.length,
        messageGaps: gaps,
        messageOrderViolations: orderViolations,
        coarseEventsSeen: coarseSeen,
        deltasSeen,
        eventGaps,
        eventDuplicatesOrReorders: dupOrReorder,
        streamRequests,
        streamReconnects: streamRequests - this.streamRequests.size,
        llmCalls: totals.llmCalls,
        llmStepsJournaled: llmSteps.length,
        reissuedCalls: totals.llmCalls - llmSteps.length,
        tokensPaid: totals.llmTokens,
        tokensJournaled,
        tokensWasted: totals.llmTokens - tokensJournaled,
        lbRequests: lb.requests,
        lbRerouted: lb.rerouted,
        lb502: lb.badGateway,
        lbCut: lb.cut,
        crashes: this.crashes.length,
        faults,
      };
      const result: ChaosResult = {
        ok: violations.length === 0,
        seed: this.opts.seed,
        violations,
        figures,
        timeline: [...this.timeline],
        report: renderReport(figures, violations.length),
        debug: "",
      };
      result.debug = await this.renderDebug(result, q);
      return result;
    } finally {
      await pool.end().catch(() => {});
    }
  }

  private sum(f: (r: RunRecord) => number): number {
    return this.records.reduce((a, x) => a + f(x), 0);
  }

  private describeKey(key: string): string {
    const runId = key.split(":")[0];
    const rec = this.records.find((x) => x.runId === runId);
    return rec ? `run ${rec.tag}, plan ${JSON.stringify(rec.plan.rounds)}` : "unknown run";
  }

  private async renderDebug(
    result: ChaosResult,
    q: <R extends pg.QueryResultRow>(sql: string, params?: unknown[]) => Promise<R[]>,
  ): Promise<string> {
    const out: string[] = [];
    out.push(`chaos seed ${result.seed} (reproduce the schedule with CHAOS_SEED=${result.seed})`);
    out.push("", "fault timeline:");
    for (const f of result.timeline)
      out.push(
        `  +${(f.at / 1000).toFixed(1).padStart(6)}s ${f.kind.padEnd(16)} ${f.target.padEnd(28)} ${f.detail} (${f.ms} ms)${f.error ? ` FAILED: ${f.error}` : ""}`,
      );
    if (result.violations.length === 0) return out.join("\n");
    out.push("", `violations (${result.violations.length}):`);
    for (const x of result.violations.slice(0, 40)) out.push(`  - ${x}`);
    // A few failing runs in full: journal and persisted events.
    const runIds = new Set<string>();
    const known = new Set(this.records.map((x) => x.runId));
    for (const x of result.violations) {
      for (const m of x.matchAll(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g))
        if (known.has(m[0]) && runIds.size < 4) runIds.add(m[0]);
    }
    for (const id of runIds) {
      const rec = this.records.find((x) => x.runId === id);
      out.push("", `run ${id}${rec ? ` (${rec.tag}, plan ${JSON.stringify(rec.plan.rounds)})` : ""}:`);
      if (rec)
        out.push(
          `  client: ${this.streamRequests.get(id) ?? 0} stream requests, ${rec.streamGiveUps} give-ups, ` +
            `approvals ${rec.approvals}, unknown outcomes ${rec.unknownOutcomes}, terminal ${rec.terminal ?? "(none)"}`,
          `  client saw ids: ${rec.ids.join(" ")}`,
        );
      try {
        for (const s of await q<Record<string, unknown>>(
          `SELECT step_no, kind, status, attempt, epoch, tool_name, idempotency_key, error, started_at, finished_at
             FROM steps WHERE run_id = $1 ORDER BY step_no`,
          [id],
        ))
          out.push(`  step ${JSON.stringify(s)}`);
        for (const e of await q<Record<string, unknown>>(
          "SELECT id, type, left(data::text, 240) AS data, created_at FROM run_events WHERE run_id = $1 ORDER BY id",
          [id],
        ))
          out.push(`  event ${JSON.stringify(e)}`);
      } catch (err) {
        out.push(`  (could not read: ${err instanceof Error ? err.message : String(err)})`);
      }
    }
    // A couple of threads named by violations, message by message.
    const threadIds = new Set<string>();
    for (const x of result.violations) {
      const m = /^thread ([0-9a-f-]{36})/.exec(x);
      if (m?.[1]) threadIds.add(m[1]);
      if (threadIds.size >= 2) break;
    }
    for (const tid of threadIds) {
      out.push("", `thread ${tid} messages (seq role run):`);
      try {
        const rows = await q<{ seq: number; role: string; run_id: string | null; created_at: Date }>(
          "SELECT seq::int AS seq, role, run_id, created_at FROM messages WHERE thread_id = $1 ORDER BY messages.seq",
          [tid],
        );
        for (const m of rows) {
          const rec = this.records.find((x) => x.runId === m.run_id);
          out.push(
            `  ${String(m.seq).padStart(4)} ${m.role.padEnd(9)} ${rec?.tag ?? m.run_id ?? "-"} ${m.created_at.toISOString()}`,
          );
        }
        const runs = await q<{ id: string; seq: number; status: string; input_seq: number | null }>(
          "SELECT id, seq::int AS seq, status, input_seq::int AS input_seq FROM runs WHERE thread_id = $1 ORDER BY runs.seq",
          [tid],
        );
        for (const r of runs)
          out.push(
            `  run ${this.records.find((x) => x.runId === r.id)?.tag ?? r.id} seq ${r.seq} ${r.status} input_seq ${r.input_seq}`,
          );
      } catch (err) {
        out.push(`  (could not read: ${err instanceof Error ? err.message : String(err)})`);
      }
    }
    out.push("", "process output (error-level log lines, then the tail):");
    for (const l of this.cluster?.logs(200_000) ?? []) {
      out.push(`--- ${l.name} pid ${l.pid} ${l.alive ? "alive" : `exited ${l.exit}`}`);
      const errors = l.output
        .split("\n")
        .filter((x) => /"level":(50|60)/.test(x))
        .slice(0, 8)
        .map((x) => x.slice(0, 1_500));
      if (errors.length) out.push(...errors, "...");
      out.push(l.output.slice(-2_000).trimEnd() || "(no output)");
    }
    out.push(`--- postgres log: errors`, this.pg?.errors(80) ?? "");
    out.push(`--- postgres log: tail`, this.pg?.log(2_000).trimEnd() ?? "");
    out.push(`--- redis output`, this.redis?.output(1_500).trimEnd() ?? "");
    return out.join("\n");
  }

  /** Kill everything, remove the private services. Idempotent. */
  dispose(): Promise<void> {
    this.disposed ??= (async () => {
      this.stopping = true;
      this.abort.abort(new Error("disposed"));
      await this.cluster?.stop().catch(() => {});
      await this.effects?.close().catch(() => {});
      await this.redis?.close().catch(() => {});
      await this.pg?.close().catch(() => {});
    })();
    return this.disposed;
  }
}

export function renderReport(f: ChaosFigures, violations: number): string {
  const pct = (a: number, b: number) => (b > 0 ? `${((100 * a) / b).toFixed(1)}%` : "0%");
  const faults = Object.entries(f.faults)
    .map(([k, n]) => `${k} ×${n}`)
    .join(", ");
  return [
    `chaos: seed ${f.seed}, ${(f.wallMs / 1000).toFixed(1)} s wall, ${violations === 0 ? "PASSED" : `FAILED (${violations} violations)`}`,
    `  faults       ${faults}`,
    `  runs         created ${f.runsCreated} on ${f.threads} threads: succeeded ${f.succeeded}, failed ${f.failed}, cancelled ${f.cancelled}`,
    `               lost ${f.lost}, stuck ${f.stuck}, unacknowledged duplicates ${f.orphanRuns}`,
    `  approvals    ${f.approvals} (rejected ${f.approvalsRejected}); unknown side-effect outcomes ${f.unknownOutcomes} (resolved: approved ${f.unknownResolvedApprove}, rejected as already done ${f.unknownResolvedReject})`,
    `  attempts     highest ${f.maxAttempts} (default limit ${DEFAULT_MAX_ATTEMPTS} lost attempts without progress); runs claimed more than once ${f.runsRetried}`,
    `  effects      idempotent applied ${f.idempotentApplied} (raw calls ${f.idempotentRequests}, keys retried ${f.idempotentRetried}), side effects sent ${f.sidePerformed}, pure reads ${f.pureRequests}; duplicate effects ${f.duplicateEffects}, runs off their plan ${f.planMismatches}`,
    `  clients      429 answers ${f.rateLimited} (waited Retry-After)`,
    `  messages     ${f.messages} in ${f.threadsChecked} threads: seq gaps ${f.messageGaps}, order violations ${f.messageOrderViolations}`,
    `  events       coarse seen ${f.coarseEventsSeen}, deltas seen ${f.deltasSeen}; runs with coarse gaps ${f.eventGaps}, duplicate/out-of-order ids ${f.eventDuplicatesOrReorders}`,
    `  streams      ${f.streamRequests} requests, ${f.streamReconnects} reconnects; LB ${f.lbRequests} requests, ${f.lbRerouted} rerouted, ${f.lb502} × 502, ${f.lbCut} cut mid-response`,
    `  processes    crashed on their own ${f.crashes}`,
    `  tokens       model calls ${f.llmCalls} for ${f.llmStepsJournaled} journaled LLM steps (re-issued ${f.reissuedCalls}); paid ${f.tokensPaid}, journaled ${f.tokensJournaled}, wasted by crashes ${f.tokensWasted} (${pct(f.tokensWasted, f.tokensPaid)})`,
  ].join("\n");
}

/** The seed: $CHAOS_SEED, or a fresh random one. */
export function chaosSeed(): number {
  const env = process.env.CHAOS_SEED;
  if (env !== undefined && /^\d+$/.test(env)) return Number(env) >>> 0;
  return Math.floor(Math.random() * 2 ** 32) >>> 0;
}
