import { describe, expect, it } from "vitest";
import { abortableSleep, abortReason } from "./abort.js";

describe("abortableSleep", () => {
  it("resolves when the time is up", async () => {
    await expect(abortableSleep(1, new AbortController().signal)).resolves.toBeUndefined();
    await expect(abortableSleep(0)).resolves.toBeUndefined();
  });

  it("rejects with the signal's own reason when aborted while waiting", async () => {
    const ac = new AbortController();
    // Longer than the test may run: only the abort can end it.
    const wait = abortableSleep(600_000, ac.signal);
    const reason = new Error("lease lost");
    ac.abort(reason);
    await expect(wait).rejects.toBe(reason);
  });

  it("rejects at once when the signal has already aborted, wrapping a reason that is not an Error", async () => {
    const ac = new AbortController();
    ac.abort("shutdown");
    const err: unknown = await abortableSleep(600_000, ac.signal).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).cause).toBe("shutdown");
    expect(abortReason(ac.signal).cause).toBe("shutdown");
  });
});
