import { describe, expect, it } from "vitest";
import { CliError } from "./exit.js";
import { wholeNumber } from "./flags.js";

describe("wholeNumber", () => {
  const concurrency = wholeNumber("--concurrency", { min: 1 });
  const port = wholeNumber("--port", { min: 0, max: 65535 });

  it("accepts whole numbers in range", () => {
    expect(concurrency("8")).toBe(8);
    expect(port("0")).toBe(0);
    expect(port("65535")).toBe(65535);
  });

  it.each([
    [concurrency, "abc", '--concurrency: expected a positive whole number, got "abc"'],
    [concurrency, "0", '--concurrency: expected a positive whole number, got "0"'],
    [concurrency, "1.5", '--concurrency: expected a positive whole number, got "1.5"'],
    [concurrency, "1e3", '--concurrency: expected a positive whole number, got "1e3"'],
    [concurrency, "0x10", '--concurrency: expected a positive whole number, got "0x10"'],
    [concurrency, "", '--concurrency: expected a positive whole number, got ""'],
    [port, "-1", '--port: expected a whole number from 0 to 65535, got "-1"'],
    [port, "65536", '--port: expected a whole number from 0 to 65535, got "65536"'],
    [
      wholeNumber("--min-workers", { min: 0 }),
      "x",
      '--min-workers: expected a whole number of at least 0, got "x"',
    ],
  ])("refuses %#: %s", (parse, raw, message) => {
    let err: unknown;
    try {
      parse(raw);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CliError);
    expect((err as CliError).message).toBe(message);
    expect((err as CliError).exitCode).toBe(2);
  });
});
