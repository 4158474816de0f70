/**
 * A tiny round-robin HTTP load balancer for the local cluster and the chaos
 * suite (node:http only). No stickiness: every request goes to the next
 * backend in turn, so consecutive requests of one client (and the reconnects
 * of one event stream) land on different ingress replicas.
 *
 * - Responses are streamed through as they arrive (SSE included): no
 *   buffering beyond the sockets' own, with backpressure (pipe).
 * - Request bodies are read first (bounded, `maxBodyBytes`), so a request
 *   whose connection is *refused* can be sent to the next backend: refused
 *   means the backend never saw it. Any other upstream failure answers 502
 *   (or cuts the response if it had started): the client decides whether to
 *   retry (the Capstan client does, with its Idempotency-Key).
 * - A backend that refused a connection is skipped for `downMs`.
 * - A client that goes away aborts its upstream request.
 */
import {
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import type { AddressInfo, Socket } from "node:net";

export interface LbProxyOptions {
  /** Backend base URLs, e.g. ["http://127.0.0.1:7101", "http://127.0.0.1:7102"]. */
  backends: string[];
  /** Listen port (0: any free port). */
  port?: number;
  host?: string;
  /** Largest request body forwarded (413 beyond). Default 1 MiB. */
  maxBodyBytes?: number;
  /** How long a backend that refused a connection is skipped. Default 500 ms. */
  downMs?: number;
  /** Bound on establishing the upstream connection and getting response headers. Default 30 s. */
  headersTimeoutMs?: number;
  /** Open client connections at most (new ones are refused with 503 beyond). Default 2,000. */
  maxConnections?: number;
}

export interface LbStats {
  requests: number;
  /** Requests sent to another backend after a refused connection. */
  rerouted: number;
  /** 502 answers (no backend could take the request). */
  badGateway: number;
  /** Responses cut mid-way because the backend went away. */
  cut: number;
  /** Open proxied exchanges right now. */
  open: number;
  /** Open upstream exchanges per backend URL right now (event streams, mostly). */
  openByBackend: Record<string, number>;
}

export interface LbProxy {
  url: string;
  port: number;
  backends(): string[];
  setBackends(urls: string[]): void;
  stats(): LbStats;
  close(): Promise<void>;
}

// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded.
const HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authorization",
  "proxy-authenticate",
]);

function forwardHeaders(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined || HOP.has(k)) continue;
    out[k] = v;
  }
  return out;
}

interface Backend {
  url: URL;
  downUntil: number;
  open: number;
}

class BodyTooLarge extends Error {}

function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.destroy();
        reject(new BodyTooLarge());
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

export async function startLbProxy(opts: LbProxyOptions): Promise<LbProxy> {
  const maxBody = opts.maxBodyBytes ?? 1_048_576;
  const downMs = opts.downMs ?? 500;
  const headersTimeoutMs = opts.headersTimeoutMs ?? 30_000;
  const backend = (u: string): Backend => ({ url: new URL(u), downUntil: 0, open: 0 });
  let backends: Backend[] = opts.backends.map(backend);
  let next = 0;
  const stats = { requests: 0, rerouted: 0, badGateway: 0, cut: 0, open: 0 };
  const sockets = new Set<Socket>();

  /** The next backend in turn, skipping ones marked down unless all are. */
  const pick = (exclude: Set<Backend>): Backend | undefined => {
    const now = Date.now();
    const n = backends.length;
    let fallback: Backend | undefined;
    for (let i = 0; i < n; i++) {
      const b = backends[(next + i) % n]!;
      if (exclude.has(b)) continue;
      if (b.downUntil <= now) {
        next = (next + i + 1) % n;
        return b;
      }
      fallback ??= b;
    }
    if (fallback) next = (backends.indexOf(fallback) + 1) % n;
    return fallback;
  };

  const fail = (res: ServerResponse, status: number, code: string, detail: string): void => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = JSON.stringify({
      type: "about:blank",
      title: code,
      status,
      code,
      detail,
      request_id: "lb",
    });
    res.writeHead(status, {
      "content-type": "application/problem+json",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  };

  const forward = (req: IncomingMessage, res: ServerResponse, body: Buffer, tried: Set<Backend>): void => {
    const b = pick(tried);
    if (!b) {
      stats.badGateway++;
      fail(res, 502, "bad_gateway", "no backend accepted the connection");
      return;
    }
    tried.add(b);
    const headers = forwardHeaders(req.headers);
    headers.host = b.url.host;
    if (body.length > 0 || req.headers["content-length"] !== undefined)
      headers["content-length"] = String(body.length);
    const up = httpRequest({
      protocol: b.url.protocol,
      hostname: b.url.hostname,
      port: b.url.port,
      method: req.method,
      path: req.url,
      headers,
      agent: false, // one upstream connection per exchange: never a stale pooled socket to a dead replica
    });
    let answered = false;
    b.open++;
    up.once("close", () => b.open--);
    const timer = setTimeout(() => up.destroy(new Error("upstream headers timeout")), headersTimeoutMs);
    const onClientGone = (): void => {
      if (!res.writableFinished) up.destroy();
    };
    res.on("close", onClientGone);

    up.on("socket", (s: Socket) => s.setNoDelay(true));
    up.on("response", (upRes) => {
      answered = true;
      clearTimeout(timer);
      const h = forwardHeaders(upRes.headers);
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, h);
      // SSE: send the headers now, before the first event.
      res.flushHeaders();
      upRes.pipe(res);
      // The backend went away mid-response (killed): cut the client too, so it
      // sees a broken stream (and resumes with Last-Event-ID), never a clean end.
      upRes.once("close", () => {
        if (!upRes.complete && !res.destroyed) {
          stats.cut++;
          res.destroy();
        }
      });
      upRes.on("error", () => {});
    });
    up.on("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      res.off("close", onClientGone);
      if (answered || res.destroyed) {
        if (!res.writableFinished) res.destroy();
        return;
      }
      if (err.code === "ECONNREFUSED") {
        // The backend never saw the request: mark it down and try the next one.
        b.downUntil = Date.now() + downMs;
        if (tried.size < backends.length) {
          stats.rerouted++;
          forward(req, res, body, tried);
          return;
        }
      }
      stats.badGateway++;
      fail(res, 502, "bad_gateway", `upstream ${b.url.host}: ${err.message}`);
    });
    up.end(body);
  };

  const server = createServer((req, res) => {
    stats.requests++;
    stats.open++;
    res.once("close", () => stats.open--);
    req.socket.setNoDelay(true);
    readBody(req, maxBody).then(
      (body) => forward(req, res, body, new Set()),
      (err: unknown) => {
        if (err instanceof BodyTooLarge) fail(res, 413, "payload_too_large", `body over ${maxBody} bytes`);
        else res.destroy();
      },
    );
  });
  server.maxConnections = opts.maxConnections ?? 2_000;
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  // SSE responses live as long as their run: no idle/request timeouts on the client side.
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  server.keepAliveTimeout = 5_000;

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, opts.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = opts.host && opts.host !== "0.0.0.0" ? opts.host : "127.0.0.1";

  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    backends: () => backends.map((b) => b.url.toString().replace(/\/$/, "")),
    setBackends(urls) {
      backends = urls.map(backend);
      next = 0;
    },
    stats: () => ({
      ...stats,
      openByBackend: Object.fromEntries(backends.map((b) => [b.url.toString().replace(/\/$/, ""), b.open])),
    }),
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
