import { CliError, EXIT } from "./exit.js";

/**
 * Parsers of numeric flags for commander. A bad value stops the command with
 * the flag, what it expects and what it got (exit code 2), e.g.
 * `--concurrency: expected a positive whole number, got "abc"`.
 */
export function wholeNumber(flag: string, range: { min: number; max?: number }): (raw: string) => number {
  const { min, max } = range;
  const expected =
    max !== undefined
      ? `a whole number from ${min} to ${max}`
      : min === 1
        ? "a positive whole number"
        : `a whole number of at least ${min}`;
  return (raw) => {
    const n = /^\s*\d+\s*$/.test(raw) ? Number(raw) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || (max !== undefined && n > max))
      throw new CliError(EXIT.usage, `${flag}: expected ${expected}, got ${JSON.stringify(raw)}`);
    return n;
  };
}
