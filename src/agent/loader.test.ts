import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { generateText } from "ai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isCapstanError } from "../errors.js";
import { agentVersion } from "./define.js";
import { findConfigFile, loadConfigFile } from "./loader.js";
import { resolveModel, toolSchemas } from "./models.js";

// Temp dirs live inside the repo so config files can import "zod" from its node_modules.
const root = resolve(import.meta.dirname, "../../test", `tmp-${randomBytes(6).toString("hex")}`);
const sdk = resolve(import.meta.dirname, "define.js");

function dir(name: string, files: Record<string, string>): string {
  const d = join(root, name);
  mkdirSync(d, { recursive: true });
  for (const [f, content] of Object.entries(files)) writeFileSync(join(d, f), content);
  return d;
}

const tsConfig = `
import { z } from "zod";
import { defineConfig, defineAgent, tool } from ${JSON.stringify(sdk)};

type Order = { orderId: string; status: string };

const lookup = tool({
  description: "Look up an order",
  input: z.object({ orderId: z.string().describe("the order id") }),
  effect: "pure",
  run: async ({ orderId }): Promise<Order> => ({ orderId, status: "shipped" }),
});

export default defineConfig({
  agents: [
    defineAgent({
      name: "support",
      model: "scripted:tools",
      instructions: "Help with orders.",
      tools: { lookup },
      limits: { maxSteps: 5 },
    }),
  ],
  models: { compatible: { baseURL: "http://127.0.0.1:11434/v1" } },
});
`;

async function configError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(isCapstanError(err, "config_invalid")).toBe(true);
    return (err as Error).message;
  }
  throw new Error("expected config_invalid");
}

beforeAll(() => mkdirSync(root, { recursive: true }));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("loadConfigFile()", () => {
  it("loads a TypeScript config that imports zod", async () => {
    const d = dir("ts", { "capstan.config.ts": tsConfig });
    const cfg = await loadConfigFile(undefined, d);
    expect(cfg).not.toBeNull();
    const agent = cfg!.agents[0]!;
    expect(agent.name).toBe("support");
    expect(agent.limits).toEqual({ maxSteps: 5, maxTokens: 200_000, wallTimeMs: 600_000 });
    expect(cfg!.models?.compatible?.baseURL).toBe("http://127.0.0.1:11434/v1");

    // The loaded tool is fully usable: validation, execution, schemas, versioning.
    const lookup = agent.tools.lookup!;
    expect(lookup.input.safeParse({ orderId: 1 }).success).toBe(false);
    expect(await lookup.run({ orderId: "o1" }, {} as never)).toEqual({ orderId: "o1", status: "shipped" });
    expect(agentVersion(agent)).toMatch(/^[0-9a-f]{16}$/);
    const r = await generateText({
      model: resolveModel(agent.model, cfg!.models),
      prompt: 'lookup {"orderId": "o9"}',
      tools: toolSchemas(agent),
      maxRetries: 0,
    });
    expect(r.toolCalls[0]).toMatchObject({ toolName: "lookup", input: { orderId: "o9" } });
  });

  it("returns null when there is no config file, and finds .mjs", async () => {
    const empty = dir("empty", {});
    expect(await loadConfigFile(undefined, empty)).toBeNull();
    const mjs = dir("mjs", {
      "capstan.config.mjs": `import { defineConfig } from ${JSON.stringify(sdk)};\nexport default defineConfig({ agents: [] });\n`,
    });
    expect(findConfigFile(mjs)).toBe(join(mjs, "capstan.config.mjs"));
    expect(await loadConfigFile(undefined, mjs)).toEqual({ agents: [] });
  });

  it("prefers capstan.config.ts and loads an explicit path relative to cwd", async () => {
    const d = dir("both", {
      "capstan.config.ts": tsConfig,
      "capstan.config.js": "export default { agents: [] };\n",
      "other.config.mts": "export default { agents: [] };\n",
    });
    expect(findConfigFile(d)).toBe(join(d, "capstan.config.ts"));
    expect(await loadConfigFile("other.config.mts", d)).toEqual({ agents: [] });
    expect(await configError(loadConfigFile("missing.ts", d))).toMatch(/missing\.ts does not exist/);
  });

  it("validates configs written by hand, naming the file and the problem", async () => {
    const d = dir("bad", {
      "nodefault.ts": "export const agents = 1;\n",
      "cjs.cjs": "module.exports = { agents: [] };\n",
      "badagent.ts": `export default { agents: [{ name: "Bad Name", model: "scripted:echo", instructions: "" }] };\n`,
      "badeffect.ts": `
import { z } from "zod";
export default {
  agents: [{
    name: "ok", model: "scripted:echo", instructions: "",
    tools: { t: { description: "d", input: z.object({}), effect: "risky", run: () => 1 } },
  }],
};
`,
      "throws.ts": `import { defineAgent } from ${JSON.stringify(sdk)};\ndefineAgent({ name: "x", model: "nope:1", instructions: "" });\nexport default { agents: [] };\n`,
      "syntax.ts": "export default { agents: [ ;\n",
    });
    const f = (n: string) => join(d, n);
    expect(await configError(loadConfigFile("nodefault.ts", d))).toBe(
      `${f("nodefault.ts")}: no default export; end the file with \`export default defineConfig({ agents: [...] })\``,
    );
    expect(await loadConfigFile("cjs.cjs", d)).toEqual({ agents: [] });
    expect(await configError(loadConfigFile("badagent.ts", d))).toMatch(
      new RegExp(`^${f("badagent.ts")}: default export agents\\[0\\]: name: must match`),
    );
    expect(await configError(loadConfigFile("badeffect.ts", d))).toMatch(
      /badeffect\.ts: default export agents\[0\] agent "ok" tool "t": effect: must be one of/,
    );
    expect(await configError(loadConfigFile("throws.ts", d))).toMatch(
      /throws\.ts: failed to load: .*"nope:1"/,
    );
    expect(await configError(loadConfigFile("syntax.ts", d))).toMatch(/syntax\.ts: failed to load/);
  });

  it("sees edits of a TypeScript config on reload (no stale module cache)", async () => {
    const d = dir("reload", { "capstan.config.ts": "export default { agents: [] };\n" });
    expect((await loadConfigFile(undefined, d))?.agents).toEqual([]);
    writeFileSync(
      join(d, "capstan.config.ts"),
      'export default { agents: [{ name: "late", model: "scripted:echo", instructions: "" }] };\n',
    );
    expect((await loadConfigFile(undefined, d))?.agents.map((a) => a.name)).toEqual(["late"]);
  });
});
