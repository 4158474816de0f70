/**
 * The outside world of the chaos suite (a copy of the idea of
 * test/support/effects-server.ts, extended): it records every model call with
 * its token usage and every raw tool call, per idempotency key and per order,
 * so the checker can tell a retry from a duplicate and compute the tokens
 * wasted by crashes.
 *
 * - POST /llm  {key, input_tokens, output_tokens}  a model call (announced before it answers)
 * - POST /idem {key, order, epoch}  idempotent API: the first call with a key is applied,
 *   later calls with that key are acknowledged with the same receipt and not applied again
 * - POST /side {key, order, epoch}  plain side effect: applied on every call (duplicates show)
 * - POST /pure {key, ...}   a read: counted, no effect
 *
 * `order` names the business effect (e.g. "charge 31 of run R") independently
 * of the key, so an order applied under two keys (a worker that changed its
 * key on retry) shows as applied twice; `epoch` is the caller's fencing token
 * (its lease epoch), so a key called twice by the same attempt (not a retry)
 * shows too.
 *
 * Effects are applied when the request arrives, then the answer is delayed a
 * little (`delayMs`), so a worker killed in that window leaves an effect whose
 * outcome it never learned: exactly the unknown-outcome case of docs/architecture.md#tools-and-effects.
 * Memory is bounded: at most `maxKeys` distinct keys (then 507).
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type EffectKind = "llm" | "idem" | "side" | "pure";

export interface LlmCalls {
  calls: number;
  tokens: number;
}

/** One raw call of an effect (idem or side). */
export interface EffectCall {
  key: string;
  /** The business effect it performs ("" when the caller named none). */
  order: string;
  /** The caller's fencing token (lease epoch), -1 when not sent. */
  epoch: number;
  /** Whether this call applied the effect (idem: only the first call with its key; side: every call). */
  applied: boolean;
}

export interface ChaosEffects {
  url: string;
  llm: Map<string, LlmCalls>;
  /** Raw requests per key, per kind. */
  requests: Record<EffectKind, Map<string, number>>;
  /** Every raw call of the effectful kinds, per key, in arrival order. */
  calls: { idem: Map<string, EffectCall[]>; side: Map<string, EffectCall[]> };
  /** Times each order was applied, per kind (idem: once per distinct key that carried it). */
  appliedOrders: { idem: Map<string, number>; side: Map<string, number> };
  /** Requests refused because the key table was full (must stay 0). */
  overflow: number;
  /** Side-effect calls with this key so far (what a human checks before deciding an unknown outcome). */
  sent(key: string): number;
  totals(): {
    llmCalls: number;
    llmTokens: number;
    idem: number;
    idemApplied: number;
    side: number;
    sideApplied: number;
    pure: number;
  };
  close(): Promise<void>;
}

export async function startChaosEffects(
  opts: { delayMs?: [number, number]; sideDelayMs?: [number, number]; maxKeys?: number } = {},
): Promise<ChaosEffects> {
  const delays: Record<"idem" | "side" | "pure", [number, number]> = {
    idem: opts.delayMs ?? [10, 80],
    pure: opts.delayMs ?? [10, 80],
    // Longer, so that faults land between "sent" and "the worker learned it was sent".
    side: opts.sideDelayMs ?? [50, 400],
  };
  const maxKeys = opts.maxKeys ?? 200_000;
  const llm = new Map<string, LlmCalls>();
  const requests: Record<EffectKind, Map<string, number>> = {
    llm: new Map(),
    idem: new Map(),
    side: new Map(),
    pure: new Map(),
  };
  const calls = { idem: new Map<string, EffectCall[]>(), side: new Map<string, EffectCall[]>() };
  const appliedOrders = { idem: new Map<string, number>(), side: new Map<string, number>() };
  const idemReceipts = new Map<string, string>();
  let seq = 0;
  let overflow = 0;
  let keys = 0;

  const bump = (m: Map<string, number>, key: string): number => {
    const n = (m.get(key) ?? 0) + 1;
    if (n === 1) keys++;
    m.set(key, n);
    return n;
  };

  const readJson = async (req: IncomingMessage): Promise<Record<string, unknown>> => {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > 64 * 1024) throw new Error("body too large");
      chunks.push(c as Buffer);
    }
    if (chunks.length === 0) return {};
    const v: unknown = JSON.parse(Buffer.concat(chunks).toString());
    return typeof v === "object" && v !== null ? (v as Record<string, unknown>) : {};
  };

  const record = (kind: "idem" | "side", call: EffectCall): void => {
    const list = calls[kind].get(call.key) ?? [];
    // Bounded: a key called this often is a violation already; keep the first calls.
    if (list.length < 50) list.push(call);
    calls[kind].set(call.key, list);
    if (call.applied && call.order) bump(appliedOrders[kind], call.order);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const body = await readJson(req);
    const kind = (req.url ?? "").slice(1).split("?")[0] as EffectKind;
    if (!(kind in requests)) {
      res.writeHead(404).end();
      return;
    }
    const key = typeof body.key === "string" ? body.key : "";
    if (keys >= maxKeys) {
      overflow++;
      res.writeHead(507).end();
      return;
    }
    bump(requests[kind], key);
    const order = typeof body.order === "string" ? body.order : "";
    const epoch = typeof body.epoch === "number" ? body.epoch : -1;
    let result: unknown = { ok: true };
    if (kind === "llm") {
      const t = Number(body.input_tokens ?? 0) + Number(body.output_tokens ?? 0);
      const prev = llm.get(key) ?? { calls: 0, tokens: 0 };
      llm.set(key, { calls: prev.calls + 1, tokens: prev.tokens + t });
    } else if (kind === "idem") {
      let receipt = idemReceipts.get(key);
      const applied = receipt === undefined;
      if (receipt === undefined) {
        receipt = `r${++seq}`;
        idemReceipts.set(key, receipt);
      }
      record("idem", { key, order, epoch, applied });
      result = { ok: true, receipt };
    } else if (kind === "side") {
      record("side", { key, order, epoch, applied: true });
      result = { ok: true, sent: requests.side.get(key) };
    }
    if (kind !== "llm") {
      const [lo, hi] = delays[kind];
      if (hi > 0) await new Promise((r) => setTimeout(r, lo + Math.floor(Math.random() * (hi - lo))));
    }
    if (res.destroyed) return;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(result));
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500).end();
      else res.destroy();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);

  return {
    url: `http://127.0.0.1:${port}`,
    llm,
    requests,
    calls,
    appliedOrders,
    get overflow() {
      return overflow;
    },
    sent: (key) => requests.side.get(key) ?? 0,
    totals: () => ({
      llmCalls: [...llm.values()].reduce((a, b) => a + b.calls, 0),
      llmTokens: [...llm.values()].reduce((a, b) => a + b.tokens, 0),
      idem: sum(requests.idem),
      idemApplied: idemReceipts.size,
      side: sum(requests.side),
      sideApplied: sum(requests.side),
      pure: sum(requests.pure),
    }),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A duplicate found in the raw calls: `subject` is the key or order (both start with the run id). */
export interface EffectViolation {
  subject: string;
  message: string;
}

/**
 * What the raw calls of the effectful kinds prove, independent of any
 * journal: an idempotent key may be called more than once only as a retry
 * (each call from a different lease epoch), an idempotent order is applied
 * exactly once (one key per order), and a side effect is sent at most once
 * per key and per order. One entry per duplicate.
 */
export function effectViolations(fx: Pick<ChaosEffects, "calls" | "appliedOrders">): EffectViolation[] {
  const out: EffectViolation[] = [];
  for (const [key, list] of fx.calls.idem) {
    const epochs = list.map((c) => c.epoch);
    if (new Set(epochs).size < epochs.length)
      out.push({
        subject: key,
        message: `idempotent key ${key} called ${list.length} times, more than once by one attempt (epochs ${epochs.join(",")}): not a retry`,
      });
  }
  for (const [order, n] of fx.appliedOrders.idem)
    if (n > 1)
      out.push({ subject: order, message: `idempotent order ${order} applied ${n} times (under ${n} keys)` });
  for (const [key, list] of fx.calls.side)
    if (list.length > 1) out.push({ subject: key, message: `side effect ${key} sent ${list.length} times` });
  for (const [order, n] of fx.appliedOrders.side)
    if (n > 1) out.push({ subject: order, message: `side-effect order ${order} sent ${n} times` });
  return out;
}
