import pg from "pg";
import type { Logger } from "../logger.js";

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

/** `Queryable.query` over a node-postgres pool or client. */
function pgQuery(target: pg.Pool | pg.PoolClient, prepared = true): Queryable["query"] {
  return <R extends pg.QueryResultRow>(text: string, params?: unknown[], opts?: { name?: string }) =>
    prepared && opts?.name
      ? target.query<R>({ name: opts.name, text, values: params ?? [] })
      : target.query<R>(text, params);
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
 * Run `fn` in a transaction. A deadlock or serialization failure rolls the
 * whole transaction back, so it is retried (a few times, with jitter) rather
 * than surfaced: transaction bodies here touch only the database.
 */
async function runTx<T>(pool: pg.Pool, fn: (q: Queryable) => Promise<T>, prepared = true): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await runTxOnce(pool, fn, prepared);
    } catch (err) {
      const code = (err as { code?: unknown } | null)?.code;
      if (attempt >= 4 || (code !== "40P01" && code !== "40001")) throw err;
      await new Promise((r) => setTimeout(r, Math.random() * 20 * attempt));
    }
  }
}

async function runTxOnce<T>(pool: pg.Pool, fn: (q: Queryable) => Promise<T>, prepared: boolean): Promise<T> {
  const client = await pool.connect();
  let broken: unknown;
  // A checked-out client has no error listener of the pool's: without this one,
  // a server restart mid-transaction emits an unhandled 'error' and kills the process.
  const onError = (err: Error) => (broken = err);
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    const out = await fn({ query: pgQuery(client, prepared) });
    await client.query("COMMIT");
    return out;
  } catch (err) {
    try {
      await client.query("ROLLBACK");
    } catch (rollbackErr) {
      broken = rollbackErr;
    }
    throw err;
  } finally {
    // A connection whose rollback failed is in an unknown state: destroy it.
    client.off("error", onError);
    client.release(broken instanceof Error ? broken : undefined);
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
  // An idle client erroring (server restart) must not crash the process.
  pool.on("error", (err) => opts.logger.warn({ err }, "postgres pool client error"));
  const prepared = opts.preparedStatements ?? true;

  const listeners = new Set<{ close(): Promise<void> }>();

  return {
    kind: "postgres",
    query: pgQuery(pool, prepared),
    tx: (fn) => runTx(pool, fn, prepared),
    async listen(channel, onNotify, onReconnect) {
      const l = startPgListener(opts, channel, onNotify, onReconnect);
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
      opts.logger.warn({ err, channel }, "LISTEN connection lost; reconnecting");
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
  pool.on("error", (err) => opts.logger.warn({ err }, "pglite pool error"));
  return {
    kind: "pglite",
    query: pgQuery(pool),
    tx: (fn) => runTx(pool, fn),
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
