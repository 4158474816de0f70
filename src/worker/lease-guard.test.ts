import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installLeaseGuard } from "./lease-guard.js";

/** The lease check at write time, with Node's own fetch against a local server that counts requests. */

let server: Server;
let url = "";
let received = 0;
beforeAll(async () => {
  server = createServer((_req, res) => {
    received++;
    res.end("ok");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});

describe("lease guard on the global dispatcher", () => {
  it("writes a tool's request only while its lease check holds; other requests pass", async () => {
    const guard = installLeaseGuard();
    try {
      const before = received;
      expect(
        await (
          await guard.run(
            () => true,
            () => fetch(url),
          )
        ).text(),
      ).toBe("ok");
      expect(received).toBe(before + 1);

      const refused = await guard
        .run(
          () => false,
          () => fetch(url),
        )
        .catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(TypeError); // fetch failed…
      expect(String((refused as Error).cause)).toMatch(/lease/); // …because of the lease
      expect(received).toBe(before + 1); // nothing was sent

      // The check runs when the request is written, not when fetch is called: a lease lost
      // after the call began (a pause mid-request) still stops it.
      let valid = true;
      const pending = guard.run(
        () => valid,
        () => fetch(url, { headers: { connection: "close" } }),
      );
      valid = false;
      const late = await pending.catch((e: unknown) => e);
      expect(String((late as Error).cause)).toMatch(/lease/);
      expect(received).toBe(before + 1);

      // Outside a tool call (model calls, embeddings): untouched.
      expect(await (await fetch(url)).text()).toBe("ok");
      expect(received).toBe(before + 2);
    } finally {
      guard.uninstall();
    }
  });
});
