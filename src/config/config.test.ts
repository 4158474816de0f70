import { describe, expect, it } from "vitest";
import { isCapstanError } from "../errors.js";
import { heartbeatMs, resolveSettings } from "./config.js";

describe("resolveSettings", () => {
  it("layers defaults, file, environment and flags in that order", () => {
    const s = resolveSettings({
      file: { http: { port: 8000 }, worker: { concurrency: 5, leaseMs: 20_000 } },
      env: { PORT: "9000", CAPSTAN_WORKER_CONCURRENCY: "7" },
      flags: { worker: { concurrency: 9 } },
    });
    expect(s.http.port).toBe(9000);
    expect(s.worker.concurrency).toBe(9);
    expect(s.worker.leaseMs).toBe(20_000);
    expect(heartbeatMs(s)).toBe(Math.floor(20_000 / 3));
    expect(s.database.url).toBeUndefined();
  });

  it("names the setting and its source when a value is wrong", () => {
    try {
      resolveSettings({ env: { PORT: "eighty" } });
      expect.unreachable();
    } catch (e) {
      expect(isCapstanError(e, "config_invalid")).toBe(true);
      expect((e as Error).message).toMatch(/http\.port/);
      expect((e as Error).message).toMatch(/environment variable PORT/);
    }
  });

  it("prepared statements are on by default and can be switched off for poolers", () => {
    expect(resolveSettings({}).database.preparedStatements).toBe(true);
    const off = resolveSettings({ env: { CAPSTAN_DB_PREPARED_STATEMENTS: "off" } });
    expect(off.database.preparedStatements).toBe(false);
    expect(() => resolveSettings({ env: { CAPSTAN_DB_PREPARED_STATEMENTS: "sometimes" } })).toThrow(
      /database\.preparedStatements.*CAPSTAN_DB_PREPARED_STATEMENTS/s,
    );
  });

  it("refuses unknown keys and a heartbeat too close to the lease", () => {
    expect(() => resolveSettings({ file: { wrker: {} } })).toThrow(/wrker/);
    expect(() => resolveSettings({ flags: { worker: { leaseMs: 2000, heartbeatMs: 1500 } } })).toThrow(
      /heartbeatMs/,
    );
  });
});
