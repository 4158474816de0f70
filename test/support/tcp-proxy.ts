import { createServer, connect, type Server, type Socket } from "node:net";
import type { AddressInfo } from "node:net";

/**
 * A TCP proxy a test can take down and bring back, to simulate an outage of a
 * shared server (PostgreSQL, Redis) without touching the server itself.
 *
 * - `stop()`: stop listening and destroy every proxied connection: clients see
 *   their connections drop and new connections refused (ECONNREFUSED).
 * - `start()`: listen again on the same port: clients reconnect as usual.
 * - `holdReplies()`: keep forwarding what clients send, but hold back what the
 *   server answers (until `stop()`): a statement runs and commits while its
 *   client never hears back, as when a connection dies during COMMIT. With
 *   `afterClientSends`, only from the moment a client sends bytes containing
 *   that text (e.g. "COMMIT"), on that client's connection.
 */
export interface TcpProxy {
  readonly port: number;
  readonly up: boolean;
  /** Open proxied connections right now. */
  connections(): number;
  /** Stop delivering the server's bytes to clients (this and new connections) until the next `stop()`. */
  holdReplies(opts?: { afterClientSends?: string }): void;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stop for good (test cleanup). */
  close(): Promise<void>;
}

export async function startTcpProxy(opts: {
  targetHost: string;
  targetPort: number;
  port?: number;
}): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  const pairs = new Set<{ client: Socket; upstream: Socket }>();
  let holding = false;
  let holdAfter: Buffer | undefined;
  let server: Server | undefined;
  let port = opts.port ?? 0;

  const onConnection = (client: Socket) => {
    const upstream = connect({ host: opts.targetHost, port: opts.targetPort });
    sockets.add(client);
    sockets.add(upstream);
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
      pairs.delete(pair);
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    client.pipe(upstream);
    if (!holding) upstream.pipe(client);
    // Runs as the chunk is read, before the server can have answered it.
    client.on("data", (chunk: Buffer) => {
      if (holdAfter && chunk.includes(holdAfter)) upstream.unpipe(client);
    });
  };

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer(onConnection);
      s.once("error", reject);
      s.listen(port, "127.0.0.1", () => {
        s.removeListener("error", reject);
        port = (s.address() as AddressInfo).port;
        server = s;
        resolve();
      });
    });

  const stop = () =>
    new Promise<void>((resolve) => {
      const s = server;
      server = undefined;
      for (const sock of sockets) sock.destroy();
      sockets.clear();
      pairs.clear();
      holding = false;
      holdAfter = undefined;
      if (!s) return resolve();
      s.close(() => resolve());
    });

  await listen();
  return {
    get port() {
      return port;
    },
    get up() {
      return server !== undefined;
    },
    connections: () => sockets.size / 2,
    holdReplies(o = {}) {
      if (o.afterClientSends !== undefined) {
        holdAfter = Buffer.from(o.afterClientSends);
        return;
      }
      holding = true;
      for (const { client, upstream } of pairs) upstream.unpipe(client);
    },
    stop,
    start: async () => {
      if (!server) await listen();
    },
    close: stop,
  };
}
