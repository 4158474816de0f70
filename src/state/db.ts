import pg from "pg";
import { throttledLog, type Logger, type ThrottledLog } from "../logger.js";
import {
  DbConnectionError,
  isConnectionError,
  isTransientConnectFailure,
  pgCode,
  type ConnectionOutcome,
} from "./pg-errors.js";

/** The one thing SQL functions need: run a parameterised statement. */
export interface Queryable {
  /**
   * `opts.name` asks for a named (prepared) statement: parsed and planned
   * once per connection, then sent as Bind/Execute only; for the hot, long
   * statements (the fenced journal write). The name must identify `text`.
   * Implementations may ignore it (the statement then runs unprepared).
   */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    params?: unknown[],
    opts?: { name?: string },
  ): Promise<pg.QueryResult<R>>;
}

/** Runs one statement on a client, prepared when asked and allowed. */
function runStatement<R extends pg.QueryResultRow>(
  client: pg.PoolClient,
  prepared: boolean,
  text: string,
  params: unknown[] | undefined,
  opts: { name?: string } | undefined,
): Promise<pg.QueryResult<R>> {
  return prepared && opts?.name
    ? client.query<R>({ name: opts.name, text, values: params ?? [] })
    : client.query<R>(text, params);
}

export type Unlisten = () => Promise<void>;

/**
 * int8 (bigint, count(*)) as a JS number: every int8 Capstan stores (seqs,
 * token counts, event ids) stays far below 2^53. Set per pool, not globally.
 */
const parseInt8 = (v: string): number => Number(v);
const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary"): unknown =>
    oid === 20
      ? parseInt8
      : (pg.types.getTypeParser(oid, format) as unknown)) as typeof pg.types.getTypeParser,
};

/**
 * The database handle every state function takes. Two implementations share
 * all SQL: a node-postgres pool against PostgreSQL, and the same pool type
 * over embedded PGlite (one connection). Code inside `tx` must use the
 * transaction's Queryable only: with the embedded single connection, asking
 * the pool for a second connection inside a transaction would deadlock.
 */
export interface Db extends Queryable {
  readonly kind: "postgres" | "pglite";
  tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T>;
  /**
   * Subscribe to NOTIFY on a channel. `onReconnect` fires after the listening
   * connection was lost and re-established (notifications may have been missed:
   * callers should poll once).
   */
  listen(channel: string, onNotify: (payload: string) => void, onReconnect?: () => void): Promise<Unlisten>;
  /** Pool statistics for metrics. */
  stats(): { total: number; idle: number; waiting: number };
  close(): Promise<void>;
}

/**
 * How the Db itself retries a connection failure: a few quick tries on fresh
 * connections, so a terminated session or a restart blip costs milliseconds;
 * a longer outage surfaces at once as `DbConnectionError` (503 at the API;
 * the worker's step retries, src/worker/db-retry.ts, wait longer).
 */
const CONNECTION_RETRY = { tries: 10, baseDelayMs: 10, maxDelayMs: 160, budgetMs: 3_000 };

function retryAllowed(tryNo: number, startedAt: number): boolean {
  return tryNo < CONNECTION_RETRY.tries && Date.now() - startedAt < CONNECTION_RETRY.budgetMs;
}

function backoff(tryNo: number): Promise<void> {
  const cap = Math.min(CONNECTION_RETRY.maxDelayMs, CONNECTION_RETRY.baseDelayMs * 2 ** (tryNo - 1));
  return new Promise((r) => setTimeout(r, cap / 2 + (Math.random() * cap) / 2));
}

/**
 * A checked-out client, watched: the client's own 'error' and 'end' events
 * are how a broken connection is recognised (a pg error like "Client has
 * encountered a connection error and is not queryable" carries no code). A
 * checked-out client has no error listener of the pool's either: without
 * ours, a server restart mid-transaction would be an unhandled 'error' and
 * kill the process.
 */
interface Checkout {
  client: pg.PoolClient;
  /** The connection's failure, once it broke while checked out. */
  broken(): Error | undefined;
  /** Back to the pool; a broken connection (or `destroy`) is discarded instead. */
  release(destroy?: unknown): void;
}

/**
 * Every client of a pool gets a lasting 'error' listener the moment it
 * connects. pg-pool removes its own listener when it hands a new client out,
 * before the caller can add one; a session terminated right after its
 * handshake (the FATAL can arrive in the same packet as ReadyForQuery) would
 * otherwise be an uncaught 'error' and end the process. The error is kept:
 * such a client is dead, whatever the pool thinks.
 */
interface Conns {
  pool: pg.Pool;
  /** Clients whose connection failed (any time since they connected). */
  lost: WeakMap<pg.Client, Error>;
}

function guarded(pool: pg.Pool): Conns {
  const lost = new WeakMap<pg.Client, Error>();
  pool.on("connect", (client) => {
    client.on("error", (err) => lost.set(client, err));
  });
  return { pool, lost };
}

async function checkout(conns: Conns): Promise<Checkout> {
  let client: pg.PoolClient;
  try {
    client = await conns.pool.connect();
  } catch (err) {
    throw isTransientConnectFailure(err) ? new DbConnectionError("not_applied", err) : err;
  }
  const dead = conns.lost.get(client);
  if (dead) {
    client.release(dead);
    throw new DbConnectionError("not_applied", dead);
  }
  let broken: Error | undefined;
  const onError = (err: Error) => (broken ??= err);
  const onEnd = () => (broken ??= new Error("the connection ended"));
  client.on("error", onError);
  client.on("end", onEnd);
  return {
    client,
    broken: () => broken,
    release(destroy) {
      client.off("error", onError);
      client.off("end", onEnd);
      const reason = broken ?? (destroy === undefined ? undefined : toError(destroy));
      client.release(reason);
    },
  };
}

function toError(v: unknown): Error {
  return v instanceof Error ? v : new Error(String(v));
}

/**
 * Classify a statement's failure by origin: the connection broke under it
 * (the client's events), or the server / socket said so (SQLSTATE, errno).
 */
function asConnectionError(err: unknown, c: Checkout, outcome: ConnectionOutcome): unknown {
  if (err instanceof DbConnectionError) return err;
  return c.broken() !== undefined || isConnectionError(err) ? new DbConnectionError(outcome, err) : err;
}

/** One statement on its own connection (autocommit). */
async function queryOnce<R extends pg.QueryResultRow>(
  conns: Conns,
  prepared: boolean,
  text: string,
  params: unknown[] | undefined,
  opts: { name?: string } | undefined,
): Promise<pg.QueryResult<R>> {
  const c = await checkout(conns);
  let failure: unknown;
  try {
    return await runStatement<R>(c.client, prepared, text, params, opts);
  } catch (err) {
    // Sent and unanswered: it may have run. (Never sent: the checkout threw.)
    failure = asConnectionError(err, c, "unknown");
    throw failure;
  } finally {
    c.release(failure instanceof DbConnectionError ? failure : undefined);
  }
}

/**
 * `Db.query`: a statement that certainly did not run is retried on a fresh
 * connection. Once one may have run (outcome unknown), every further try
 * runs it inside a READ ONLY transaction: if it cannot write, that answer is
 * as good as the first; if it can (PostgreSQL refuses it, 25006), the caller
 * gets the first failure, `outcome: "unknown"`, and must find out itself
 * what happened.
 */
function poolQuery(conns: Conns, prepared: boolean): Queryable["query"] {
  return async <R extends pg.QueryResultRow>(text: string, params?: unknown[], opts?: { name?: string }) => {
    const startedAt = Date.now();
    let unknown: DbConnectionError | undefined;
    for (let tryNo = 1; ; tryNo++) {
      try {
        if (!unknown) return await queryOnce<R>(conns, prepared, text, params, opts);
        return await runTxOnce(conns, (q) => q.query<R>(text, params, opts), prepared, true);
      } catch (err) {
        if (unknown && pgCode(err) === "25006") throw unknown;
        if (!(err instanceof DbConnectionError)) throw err;
        // In READ ONLY, even a lost COMMIT leaves nothing behind: just try again.
        if (!unknown && err.outcome === "unknown") unknown = err;
        if (!retryAllowed(tryNo, startedAt)) throw unknown ?? err;
        await backoff(tryNo);
      }
    }
  };
}

/**
 * Run `fn` in a transaction. A deadlock or serialization failure rolls the
 * whole transaction back, and so does a connection lost before COMMIT was
 * sent (the server ends the session's transaction): both are retried (a few
 * times, with jitter) rather than surfaced, which is why transaction bodies
 * must touch only the database. A connection lost during COMMIT is surfaced
 * as `DbConnectionError` with `outcome: "unknown"`: it may have committed.
 */
async function runTx<T>(
  conns: Conns,
  fn: (q: Queryable) => Promise<T>,
  prepared = true,
  opts: { readOnly?: boolean } = {},
): Promise<T> {
  const startedAt = Date.now();
  for (let tryNo = 1; ; tryNo++) {
    try {
      return await runTxOnce(conns, fn, prepared, opts.readOnly ?? false);
    } catch (err) {
      if (err instanceof DbConnectionError) {
        if (err.outcome === "unknown" || !retryAllowed(tryNo, startedAt)) throw err;
        await backoff(tryNo);
        continue;
      }
      const code = pgCode(err);
      if (tryNo >= 4 || (code !== "40P01" && code !== "40001")) throw err;
      await new Promise((r) => setTimeout(r, Math.random() * 20 * tryNo));
    }
  }
}

async function runTxOnce<T>(
  conns: Conns,
  fn: (q: Queryable) => Promise<T>,
  prepared: boolean,
  readOnly: boolean,
): Promise<T> {
  const c = await checkout(conns);
  let destroy: unknown;
  let commitSent = false;
  try {
    await c.client.query(readOnly ? "BEGIN READ ONLY" : "BEGIN");
    const out = await fn({
      query: <R extends pg.QueryResultRow>(text: string, params?: unknown[], o?: { name?: string }) =>
        runStatement<R>(c.client, prepared, text, params, o),
    });
    // Broken already: COMMIT would not even be sent, and the server has rolled back.
    commitSent = c.broken() === undefined;
    await c.client.query("COMMIT");
    return out;
  } catch (err) {
    const failure = asConnectionError(err, c, commitSent ? "unknown" : "not_applied");
    if (failure instanceof DbConnectionError) {
      destroy = failure;
      throw failure;
    }
    try {
      await c.client.query("ROLLBACK");
    } catch (rollbackErr) {
      // A connection whose rollback failed is in an unknown state: destroy it.
      destroy = rollbackErr;
    }
    throw err;
  } finally {
    c.release(destroy);
  }
}

export interface PgDbOptions {
  url: string;
  poolSize: number;
  logger: Logger;
  /** Per-statement timeout; protects the pool from runaway queries. */
  statementTimeoutMs?: number;
  /** Honour `opts.name` (prepared statements). Default true; off behind poolers that cannot. */
  preparedStatements?: boolean;
  applicationName?: string;
}

export function createPgDb(opts: PgDbOptions): Db {
  const pool = new pg.Pool({
    connectionString: opts.url,
    max: opts.poolSize,
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: opts.statementTimeoutMs ?? 30_000,
    application_name: opts.applicationName ?? "capstan",
    types,
  });
  const conns = guarded(pool);
  // An idle client erroring (server restart, a terminated session) must not crash the
  // process; a restart errors every idle client at once, hence the throttle.
  const idleErrors = throttledLog(opts.logger, "warn", "postgres pool client error (idle connection lost)", {
    intervalMs: 10_000,
  });
  pool.on("error", (err) => idleErrors.log({ err }));
  const listenLost = throttledLog(opts.logger, "warn", "LISTEN connection lost; reconnecting", {
    intervalMs: 10_000,
  });
  const prepared = opts.preparedStatements ?? true;

  const listeners = new Set<{ close(): Promise<void> }>();

  return {
    kind: "postgres",
    query: poolQuery(conns, prepared),
    tx: (fn) => runTx(conns, fn, prepared),
    async listen(channel, onNotify, onReconnect) {
      const l = startPgListener(opts, listenLost, channel, onNotify, onReconnect);
      listeners.add(l);
      await l.ready;
      return async () => {
        listeners.delete(l);
        await l.close();
      };
    },
    stats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    async close() {
      await Promise.all([...listeners].map((l) => l.close()));
      await pool.end();
      idleErrors.flush();
      listenLost.flush();
    },
  };
}

/**
 * A dedicated connection that LISTENs and reconnects with backoff when the
 * server goes away. Notifications sent while disconnected are lost, which is
 * why `onReconnect` exists and why claimers also poll.
 */
function startPgListener(
  opts: PgDbOptions,
  lost: ThrottledLog,
  channel: string,
  onNotify: (payload: string) => void,
  onReconnect?: () => void,
): { ready: Promise<void>; close(): Promise<void> } {
  let closed = false;
  let client: pg.Client | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let firstConnect = true;
  let resolveReady!: () => void;
  let rejectReady!: (err: unknown) => void;
  const ready = new Promise<void>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  let backoff = 100;

  const connect = async (): Promise<void> => {
    if (closed) return;
    const c = new pg.Client({ connectionString: opts.url, application_name: "capstan-listen" });
    client = c;
    const onLost = (err?: unknown) => {
      if (closed || client !== c) return;
      client = undefined;
      lost.log({ err, channel });
      c.removeAllListeners();
      c.on("error", () => {});
      void c.end().catch(() => {});
      retryTimer = setTimeout(() => void connect(), backoff);
      backoff = Math.min(backoff * 2, 5_000);
    };
    c.on("error", onLost);
    c.on("end", () => onLost());
    c.on("notification", (msg) => {
      if (msg.channel === channel) onNotify(msg.payload ?? "");
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
      backoff = 100;
      if (firstConnect) {
        firstConnect = false;
        resolveReady();
      } else {
        onReconnect?.();
      }
    } catch (err) {
      if (firstConnect) {
        firstConnect = false;
        closed = true;
        c.removeAllListeners();
        c.on("error", () => {});
        void c.end().catch(() => {});
        rejectReady(err);
        return;
      }
      onLost(err);
    }
  };
  void connect();

  return {
    ready,
    async close() {
      closed = true;
      if (retryTimer) clearTimeout(retryTimer);
      const c = client;
      client = undefined;
      if (c) {
        c.removeAllListeners();
        c.on("error", () => {});
        await c.end().catch(() => {});
      }
    },
  };
}

export interface PgliteDbOptions {
  /** Directory for the database files, or `memory://` for a throwaway database. */
  dataDir: string;
  logger: Logger;
  /** Load pgvector (default true). False only to test the memory store's exact fallback. */
  pgvector?: boolean;
}

/**
 * Embedded PostgreSQL (PGlite) behind the same node-postgres interface, so
 * embedded mode runs the production SQL. PGlite is single-connection: the
 * pool has size 1 and notifications come from PGlite's own listener.
 */
export async function createPgliteDb(opts: PgliteDbOptions): Promise<Db> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { createPgConfig } = await import("@electric-sql/pglite/node-postgres");
  // pgvector ships as a separate package for PGlite 0.5: load it so the
  // memory store gets HNSW search in embedded mode too.
  const { vector } = await import("@electric-sql/pglite-pgvector");
  const lite = await PGlite.create(opts.dataDir, opts.pgvector === false ? {} : { extensions: { vector } });
  const pool = new pg.Pool({ ...createPgConfig(lite), max: 1, types });
  const conns = guarded(pool);
  pool.on("error", (err) => opts.logger.warn({ err }, "pglite pool error"));
  return {
    kind: "pglite",
    query: poolQuery(conns, true),
    tx: (fn) => runTx(conns, fn),
    async listen(channel, onNotify) {
      const unlisten = await lite.listen(channel, onNotify);
      return async () => {
        await unlisten();
      };
    },
    stats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    async close() {
      await pool.end();
      await lite.close();
    },
  };
}
