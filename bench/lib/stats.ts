/** Summaries of latency samples (milliseconds). */

export interface Summary {
  n: number;
  median: number;
  p99: number;
  mean: number;
  min: number;
  max: number;
}

/** Nearest-rank percentile of sorted samples, p in [0, 100]. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  if (s.length === 0)
    return { n: 0, median: Number.NaN, p99: Number.NaN, mean: Number.NaN, min: Number.NaN, max: Number.NaN };
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return {
    n: s.length,
    median: round(percentile(s, 50)),
    p99: round(percentile(s, 99)),
    mean: round(mean),
    min: round(s[0]!),
    max: round(s[s.length - 1]!),
  };
}

/** Three significant-ish decimals for the JSON. */
export function round(v: number, digits = 2): number {
  if (!Number.isFinite(v)) return v;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on this machine. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}
