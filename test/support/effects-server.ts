import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A stand-in for the outside world that tools and models talk to. It records
 * every effect so tests can assert "happened exactly once", and it can hold
 * the next request of a kind open until released, so a test can kill a
 * worker exactly while that call is in flight.
 *
 * - POST /llm            a model call (counted; used by fixture models)
 * - POST /idem  {key}    an idempotent effect: performed once per key, replays acknowledged
 * - POST /side  {key}    a plain side effect: performed on every request
 * - POST /pure  {key}    a read: counted, no effect
 */
export type Kind = "llm" | "idem" | "side" | "pure";

export interface Arrival {
  kind: Kind;
  key: string;
  at: number;
}

interface Hold {
  kind: Kind;
  arrived: Promise<Arrival>;
  onArrive: (a: Arrival) => void;
  release: () => void;
  released: Promise<void>;
}

export interface EffectsServer {
  url: string;
  arrivals: Arrival[];
  /** Effects actually performed, per key (idem: once per key; side: every request). */
  performed: Map<string, number>;
  requests: (kind: Kind, key?: string) => number;
  /** Hold the next request of `kind` open; resolves `arrived` when it comes. */
  hold(kind: Kind): { arrived: Promise<Arrival>; release: () => void };
  close(): Promise<void>;
}

export async function startEffectsServer(): Promise<EffectsServer> {
  const arrivals: Arrival[] = [];
  const performed = new Map<string, number>();
  const idemResults = new Map<string, unknown>();
  const holds: Hold[] = [];
  let seq = 0;

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = chunks.length ? (JSON.parse(Buffer.concat(chunks).toString()) as { key?: string }) : {};
    const kind = (req.url ?? "").slice(1).split("?")[0] as Kind;
    const key = body.key ?? "";
    const arrival = { kind, key, at: Date.now() };
    arrivals.push(arrival);
    let result: unknown = { ok: true };
    if (kind === "idem") {
      if (!idemResults.has(key)) {
        performed.set(key, (performed.get(key) ?? 0) + 1);
        idemResults.set(key, { ok: true, receipt: `r${++seq}` });
      }
      result = idemResults.get(key);
    } else if (kind === "side") {
      performed.set(key, (performed.get(key) ?? 0) + 1);
      result = { ok: true, sent: performed.get(key) };
    }
    const hi = holds.findIndex((h) => h.kind === kind);
    if (hi >= 0) {
      const h = holds.splice(hi, 1)[0]!;
      h.onArrive(arrival);
      await h.released;
    }
    if (res.destroyed) return;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(result));
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    arrivals,
    performed,
    requests: (kind, key) =>
      arrivals.filter((a) => a.kind === kind && (key === undefined || a.key === key)).length,
    hold(kind) {
      let onArrive!: (a: Arrival) => void;
      let release!: () => void;
      const arrived = new Promise<Arrival>((r) => (onArrive = r));
      const released = new Promise<void>((r) => (release = r));
      holds.push({ kind, arrived, onArrive, release, released });
      return { arrived, release };
    },
    async close() {
      for (const h of holds.splice(0)) h.release();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
