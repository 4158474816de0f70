import { describe, expect, it } from "vitest";
import { isCapstanError } from "../errors.js";
import {
  compareEventIds,
  formatEventId,
  fromStreamId,
  isValidEventId,
  parseEventId,
  toStreamId,
} from "./event-id.js";

describe("event ids", () => {
  it("parses coarse and delta ids", () => {
    expect(parseEventId("0")).toEqual({ n: 0, k: 0 });
    expect(parseEventId("5")).toEqual({ n: 5, k: 0 });
    expect(parseEventId("5.3")).toEqual({ n: 5, k: 3 });
    expect(parseEventId("12.0")).toEqual({ n: 12, k: 0 });
    expect(parseEventId("9007199254740991.9007199254740991")).toEqual({
      n: Number.MAX_SAFE_INTEGER,
      k: Number.MAX_SAFE_INTEGER,
    });
  });

  it("accepts only N and N.k with non-negative integers", () => {
    for (const ok of ["0", "1", "42", "0.1", "3.7", "10.10", "3.0"]) expect(isValidEventId(ok)).toBe(true);
    for (const bad of [
      "",
      " ",
      "1 ",
      " 1",
      "-1",
      "+1",
      "1.",
      ".1",
      "1.2.3",
      "01",
      "1.01",
      "1e3",
      "0x10",
      "1-2",
      "abc",
      "1.-2",
      "1.5e2",
      "9007199254740992",
      "99999999999999999999",
      "1.9007199254740992",
    ]) {
      expect(isValidEventId(bad), bad).toBe(false);
    }
    expect(isValidEventId(5)).toBe(false);
    expect(isValidEventId(null)).toBe(false);
    expect(isValidEventId(undefined)).toBe(false);
  });

  it("throws validation_failed on invalid input", () => {
    expect(() => parseEventId("x")).toThrow(/invalid event id/);
    try {
      parseEventId("1.2.3");
      expect.unreachable();
    } catch (err) {
      expect(isCapstanError(err, "validation_failed")).toBe(true);
    }
    expect(() => compareEventIds("1", "nope")).toThrow(/invalid event id/);
  });

  it("formats canonically and round-trips", () => {
    expect(formatEventId({ n: 5, k: 0 })).toBe("5");
    expect(formatEventId({ n: 5, k: 3 })).toBe("5.3");
    expect(formatEventId(parseEventId("7.0"))).toBe("7");
    for (const id of ["0", "1", "5.3", "123456789.987654321"])
      expect(formatEventId(parseEventId(id))).toBe(id);
    expect(() => formatEventId({ n: -1, k: 0 })).toThrow();
    expect(() => formatEventId({ n: 1.5, k: 0 })).toThrow();
  });

  it("compares in (N, k) numeric order", () => {
    expect(compareEventIds("1", "2")).toBe(-1);
    expect(compareEventIds("2", "1")).toBe(1);
    expect(compareEventIds("2", "2")).toBe(0);
    expect(compareEventIds("2", "2.0")).toBe(0);
    expect(compareEventIds("2", "2.1")).toBe(-1);
    expect(compareEventIds("2.9", "2.10")).toBe(-1);
    expect(compareEventIds("2.10", "3")).toBe(-1);
    expect(compareEventIds("10", "9.99")).toBe(1);
    expect(compareEventIds("0", "0.1")).toBe(-1);
    const sorted = ["10", "2.10", "2", "0", "2.9", "3", "2.1"].sort(compareEventIds);
    expect(sorted).toEqual(["0", "2", "2.1", "2.9", "2.10", "3", "10"]);
  });

  it("maps to and from Redis stream entry ids exactly", () => {
    expect(toStreamId("0")).toBe("0-0");
    expect(toStreamId("5")).toBe("5-0");
    expect(toStreamId("5.3")).toBe("5-3");
    expect(fromStreamId("5-0")).toBe("5");
    expect(fromStreamId("5-3")).toBe("5.3");
    expect(() => fromStreamId("5")).toThrow();
    expect(() => fromStreamId("5-x")).toThrow();
    expect(() => toStreamId("5-3")).toThrow();
  });
});
