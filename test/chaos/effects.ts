/**
 * The outside world of the chaos suite (a copy of the idea of
 * test/support/effects-server.ts, extended): it records every model call with
 * its token usage and every tool effect, per key, so the suite can assert
 * "performed at most once" and compute the tokens wasted by crashes.
 *
 * - POST /llm  {key, input_tokens, output_tokens}  a model call (announced before it answers)
 * - POST /idem {key, ...}   idempotent effect: performed once per key, replays acknowledged
 * - POST /side {key, ...}   plain side effect: performed on every request (duplicates show)
 * - POST /pure {key, ...}   a read: counted, no effect
 *
 * Effects are performed when the request arrives, then the answer is delayed a
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

export interface ChaosEffects {
  url: string;
  llm: Map<string, LlmCalls>;
  /** Requests per key, per kind. */
  requests: Record<EffectKind, Map<string, number>>;
  /** Effects performed per key (idem: at most once by construction of the API; side: every request). */
  performed: { idem: Map<string, number>; side: Map<string, number> };
  /** Requests refused because the key table was full (must stay 0). */
  overflow: number;
  totals(): { llmCalls: number; llmTokens: number; idem: number; side: number; pure: number };
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
  const performed = { idem: new Map<string, number>(), side: new Map<string, number>() };
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
    let result: unknown = { ok: true };
    if (kind === "llm") {
      const t = Number(body.input_tokens ?? 0) + Number(body.output_tokens ?? 0);
      const prev = llm.get(key) ?? { calls: 0, tokens: 0 };
      llm.set(key, { calls: prev.calls + 1, tokens: prev.tokens + t });
    } else if (kind === "idem") {
      let receipt = idemReceipts.get(key);
      if (receipt === undefined) {
        receipt = `r${++seq}`;
        idemReceipts.set(key, receipt);
        bump(performed.idem, key);
      }
      result = { ok: true, receipt };
    } else if (kind === "side") {
      result = { ok: true, sent: bump(performed.side, key) };
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
    performed,
    get overflow() {
      return overflow;
    },
    totals: () => ({
      llmCalls: [...llm.values()].reduce((a, b) => a + b.calls, 0),
      llmTokens: [...llm.values()].reduce((a, b) => a + b.tokens, 0),
      idem: sum(requests.idem),
      side: sum(requests.side),
      pure: sum(requests.pure),
    }),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
