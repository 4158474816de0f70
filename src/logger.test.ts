import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { throttledLog } from "./logger.js";

function capture() {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: "info" },
    { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) },
  );
  return { lines, logger };
}

describe("throttledLog", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("writes the first at once, then at most one line per interval, counting what it held back", () => {
    const { lines, logger } = capture();
    const t = throttledLog(logger, "warn", "publish failed", { intervalMs: 10_000 });
    t.log({ n: 1 });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, msg: "publish failed", n: 1 });
    expect(lines[0]).not.toHaveProperty("suppressed");

    // 5,000 failures within the interval: no line yet.
    for (let n = 2; n <= 5_001; n++) {
      vi.advanceTimersByTime(1);
      t.log({ n });
    }
    expect(lines).toHaveLength(1);

    // The interval ends: one line for the last of them, with the count of the others.
    vi.advanceTimersByTime(10_000);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ n: 5_001, suppressed: 4_999 });
    // Every occurrence is accounted for: written (2) + suppressed.
    expect(2 + (lines[1]!.suppressed as number)).toBe(5_001);
  });

  it("a lone occurrence after a quiet interval is written at once, without a count", () => {
    const { lines, logger } = capture();
    const t = throttledLog(logger, "warn", "m", { intervalMs: 1_000 });
    t.log({ n: 1 });
    vi.advanceTimersByTime(5_000);
    t.log({ n: 2 });
    expect(lines.map((l) => [l.n, l.suppressed])).toEqual([
      [1, undefined],
      [2, undefined],
    ]);
  });

  it("flush writes what is held back now (e.g. at shutdown) and nothing when nothing is", () => {
    const { lines, logger } = capture();
    const t = throttledLog(logger, "warn", "m", { intervalMs: 60_000 });
    t.flush();
    expect(lines).toHaveLength(0);
    t.log({ n: 1 });
    t.log({ n: 2 });
    t.log({ n: 3 });
    t.flush();
    expect(lines.map((l) => [l.n, l.suppressed])).toEqual([
      [1, undefined],
      [3, 1],
    ]);
    vi.advanceTimersByTime(120_000); // the timer was stopped: no further line
    expect(lines).toHaveLength(2);
  });
});
