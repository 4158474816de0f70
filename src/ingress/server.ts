import type { FastifyInstance } from "fastify";
import { buildIngress, type IngressDeps } from "./app.js";

export interface StartIngressOptions extends IngressDeps {
  host: string;
  /** 0 picks a free port (see the returned `url`). */
  port: number;
  /** How long `close()` lets in-flight requests finish before cutting connections. Default 10,000 ms. */
  closeGraceMs?: number;
}

export interface RunningIngress {
  /** Base URL, e.g. http://127.0.0.1:7070 */
  url: string;
  app: FastifyInstance;
  /**
   * Graceful close: stop accepting, end SSE streams with a `retry:` hint (so
   * clients reconnect to another replica with Last-Event-ID), answer pending
   * `/wait` calls, let other in-flight requests finish within `closeGraceMs`,
   * then cut whatever is left. Idempotent.
   */
  close(): Promise<void>;
}

export async function startIngress(opts: StartIngressOptions): Promise<RunningIngress> {
  const { host, port, closeGraceMs = 10_000, ...deps } = opts;
  const app = await buildIngress(deps);
  await app.listen({ host, port });
  const addr = app.server.address();
  const actualPort = typeof addr === "object" && addr ? addr.port : port;
  const shownHost = host.includes(":") ? `[${host}]` : host === "0.0.0.0" ? "127.0.0.1" : host;
  const url = `http://${shownHost}:${actualPort}`;
  deps.logger.info({ url }, "ingress listening");

  let closing: Promise<void> | undefined;
  return {
    url,
    app,
    close() {
      closing ??= (async () => {
        const timer = setTimeout(() => {
          deps.logger.warn({ closeGraceMs }, "ingress close grace exceeded; closing remaining connections");
          app.server.closeAllConnections();
        }, closeGraceMs);
        try {
          await app.close();
        } finally {
          clearTimeout(timer);
        }
      })();
      return closing;
    },
  };
}
