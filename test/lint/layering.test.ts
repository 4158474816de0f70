/**
 * The layering rules of eslint.config.js (docs/architecture.md#source-folders)
 * fire: the real config lints snippets placed, by file name, in the folders
 * whose imports it restricts. Type-aware rules are switched off here (they
 * need a TypeScript program and say nothing about imports).
 */
import { ESLint } from "eslint";
import tseslint from "typescript-eslint";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../support/procs.js";

let eslint: ESLint;

beforeAll(() => {
  eslint = new ESLint({
    cwd: ROOT,
    overrideConfig: [{ files: ["**/*.ts"], ...tseslint.configs.disableTypeChecked }],
  });
});

/** The messages of the layering rule for `code` as if it were the file `path` (relative to the repo). */
async function layeringErrors(path: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: `${ROOT}${path}` });
  expect(result?.filePath).toBe(`${ROOT}${path}`);
  return (result?.messages ?? []).filter((m) => m.ruleId === "no-restricted-imports").map((m) => m.message);
}

describe("import layering (no-restricted-imports)", () => {
  it("refuses a policy module in src/state, at any depth", async () => {
    const top = await layeringErrors(
      "src/state/probe.ts",
      'export { assertWithinBudget } from "../cost/budget.js";\n',
    );
    expect(top).toHaveLength(1);
    expect(top[0]).toContain("src/state may import only src/state");
    const nested = await layeringErrors(
      "src/state/memories/probe.ts",
      'import type { Worker } from "../../worker/worker.js";\nexport type W = Worker;\n',
    );
    expect(nested).toHaveLength(1);
  });

  it("lets src/state import itself and the foundation modules", async () => {
    const code = [
      'import { CapstanError } from "../errors.js";',
      'import type { Logger } from "../logger.js";',
      'import type { Db } from "./db.js";',
      'import { abortableSleep } from "../abort.js";',
      "export type T = [CapstanError, Logger, Db, typeof abortableSleep];",
      "",
    ].join("\n");
    expect(await layeringErrors("src/state/probe.ts", code)).toEqual([]);
    expect(await layeringErrors("src/state/memories/probe.ts", code.replaceAll('"../', '"../../'))).toEqual(
      [],
    );
  });

  it("refuses src/state in src/coord", async () => {
    const errors = await layeringErrors(
      "src/coord/redis/probe.ts",
      'import type { Db } from "../../state/db.js";\nexport type D = Db;\n',
    );
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain("src/coord may import only src/coord");
  });

  it("refuses anything outside src/client in src/client, even the foundation modules", async () => {
    const errors = await layeringErrors(
      "src/client/probe.ts",
      'import { CapstanError } from "../errors.js";\nimport type { X } from "./types.js";\nexport type T = [CapstanError, X];\n',
    );
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain("'../errors.js'");
    expect(errors[0]).toContain("src/client imports nothing outside src/client.");
  });

  it("keeps the two roles apart: the worker does not import the ingress", async () => {
    const errors = await layeringErrors(
      "src/worker/probe.ts",
      'import type { IngressContext } from "../ingress/context.js";\nexport type C = IngressContext;\n',
    );
    expect(errors).toHaveLength(1);
  });
});
