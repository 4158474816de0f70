import { createServer, connect, type Server, type Socket } from "node:net";
import type { AddressInfo } from "node:net";

/**
 * A TCP proxy a test can take down and bring back, to simulate an outage of a
 * shared server (PostgreSQL, Redis) without touching the server itself.
 *
 * - `stop()`: stop listening and destroy every proxied connection: clients see
 *   their connections drop and new connections refused (ECONNREFUSED).
 * - `start()`: listen again on the same port: clients reconnect as usual.
 */
export interface TcpProxy {
  readonly port: number;
  readonly up: boolean;
  /** Open proxied connections right now. */
  connections(): number;
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
  let server: Server | undefined;
  let port = opts.port ?? 0;

  const onConnection = (client: Socket) => {
    const upstream = connect({ host: opts.targetHost, port: opts.targetPort });
    sockets.add(client);
    sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
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
    stop,
    start: async () => {
      if (!server) await listen();
    },
    close: stop,
  };
}
