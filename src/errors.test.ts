import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import type { RunErrorCode, StepErrorCode } from "./errors.js";
import { CODES } from "./ingress/problem.js";

/**
 * The error codes are public contracts, and docs/http-api.md is where a
 * client reads them: each table there must list exactly the codes of its
 * union (a code added to the code must be documented, a removed one
 * dropped), and HTTP codes with the status `problem.ts` answers them with.
 */

// Exhaustive by construction: tsc refuses a missing or an unknown key.
const RUN_ERROR_CODES: Record<RunErrorCode, true> = {
  cancelled: true,
  interrupted: true,
  attempts_exhausted: true,
  unknown_agent: true,
  max_steps_exceeded: true,
  max_tokens_exceeded: true,
  wall_time_exceeded: true,
  budget_exceeded: true,
  rate_limited: true,
  server_busy: true,
  model_error: true,
  internal: true,
};
const STEP_ERROR_CODES: Record<StepErrorCode, true> = {
  unknown_tool: true,
  invalid_arguments: true,
  rejected: true,
  tool_timeout: true,
  tool_error: true,
};

const doc = readFileSync(new URL("../docs/http-api.md", import.meta.url), "utf8");

/** The table rows of the `## title` section, as arrays of trimmed cells. */
function rows(title: string): string[][] {
  const start = doc.indexOf(`\n## ${title}\n`);
  expect(start, `section "${title}" in docs/http-api.md`).toBeGreaterThanOrEqual(0);
  const end = doc.indexOf("\n## ", start + 1);
  return doc
    .slice(start, end < 0 ? undefined : end)
    .split("\n")
    .filter((l) => l.startsWith("|") && !/^\|\s*-/.test(l))
    .map((l) =>
      l
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim()),
    )
    .slice(1); // the header row
}

/** The backquoted code in each row's `column`th cell. */
const codesIn = (table: string[][], column: number): string[] =>
  table.map((r) => /^`([a-z_]+)`$/.exec(r[column] ?? "")?.[1] ?? `(not a code: ${r[column]})`);

describe("docs/http-api.md lists every error code", () => {
  it("has every ErrorCode with the HTTP status it is answered with", () => {
    const table = rows("Errors");
    const codes = codesIn(table, 1);
    const documented: Record<string, number> = {};
    table.forEach((r, i) => (documented[codes[i]!] = Number(r[0])));
    const actual: Record<string, number> = {};
    for (const [code, info] of Object.entries(CODES)) actual[code] = info.status;
    expect(documented).toEqual(actual);
  });

  it("has exactly the RunErrorCodes", () => {
    expect(codesIn(rows("Run error codes"), 0).sort()).toEqual(Object.keys(RUN_ERROR_CODES).sort());
  });

  it("has exactly the StepErrorCodes", () => {
    expect(codesIn(rows("Step error codes"), 0).sort()).toEqual(Object.keys(STEP_ERROR_CODES).sort());
  });
});
