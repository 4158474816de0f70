import { describe, expect, it } from "vitest";
import { isCapstanError, type CapstanError } from "../errors.js";
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

  it("refuses an unknown key of the config file with the closest valid name", () => {
    const err = (input: Parameters<typeof resolveSettings>[0]) => {
      try {
        resolveSettings(input);
      } catch (e) {
        expect(isCapstanError(e, "config_invalid")).toBe(true);
        return e as CapstanError;
      }
      throw new Error("expected config_invalid");
    };
    const e = err({ file: { http: { prot: 8000 }, wrker: {} } });
    expect(e.message).toBe(
      'invalid configuration: unknown key "server.http.prot": did you mean "server.http.port"?; ' +
        'unknown key "server.wrker": did you mean "server.worker"?',
    );
    expect(e.fields).toEqual([
      { field: "http.prot", message: 'unknown key "server.http.prot": did you mean "server.http.port"?' },
      { field: "wrker", message: 'unknown key "server.wrker": did you mean "server.worker"?' },
    ]);
    // Nested sections owned elsewhere (cost) too; no close name: the known ones are listed.
    expect(err({ file: { cost: { resyncMS: 5_000 } } }).message).toMatch(
      /unknown key "server\.cost\.resyncMS": did you mean "server\.cost\.resyncMs"\?/,
    );
    expect(err({ file: { log: { format: "json" } } }).message).toBe(
      'invalid configuration: unknown key "server.log.format"; known keys: "server.log.level"',
    );
    // A flag is not from the file: no `server.` prefix.
    expect(err({ flags: { http: { prot: 1 } } as never }).message).toMatch(/unknown key "http\.prot"/);
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
