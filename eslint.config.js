// Type-aware lint: floating promises and misused promises are the bugs that
// lose work in a system built from async loops.
import { readdirSync } from "node:fs";
import { URL } from "node:url";
import js from "@eslint/js";
import tseslint from "typescript-eslint";

/**
 * Which folders of src/ each folder may import (docs/architecture.md#source-folders).
 * A folder may always import itself and the foundation modules at the top of
 * src/ (errors.ts, logger.ts, json.ts, abort.ts) — except `client`, which ships
 * alone as `capstan/client` and imports nothing outside src/client. Every
 * other src/ folder is refused. A new folder must be added here.
 */
const LAYERS = {
  // The bottom: PostgreSQL and Redis/in-memory coordination know no policy.
  state: [],
  coord: [],
  client: [],
  config: ["cost"],
  // One policy layer: agent definitions carry cost settings; cost keys hash agent definitions.
  agent: ["config", "coord", "cost", "state"],
  cost: ["agent", "config", "coord", "state"],
  observability: ["config", "state"],
  // The two roles meet only through state and coord: neither imports the other.
  worker: ["agent", "config", "coord", "cost", "observability", "state"],
  ingress: ["agent", "client", "config", "coord", "cost", "observability", "state"],
  cli: ["agent", "client", "config", "coord", "cost", "ingress", "observability", "state", "worker"],
};

const SRC_FOLDERS = readdirSync(new URL("src/", import.meta.url), { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();
for (const f of SRC_FOLDERS) {
  if (!(f in LAYERS)) throw new Error(`eslint.config.js: src/${f} has no entry in LAYERS`);
}

/**
 * no-restricted-imports for one folder, one block per file depth (an import
 * leaves src/<folder> with exactly as many `../` as the file is deep).
 */
function layer(folder, allowed) {
  const refused = SRC_FOLDERS.filter((f) => f !== folder && !allowed.includes(f));
  return [1, 2, 3, 4].map((depth) => {
    const up = `(\\.\\./){${depth}}`;
    const patterns =
      folder === "client"
        ? [{ regex: `^${up}`, message: "src/client imports nothing outside src/client." }]
        : refused.length === 0
          ? []
          : [
              {
                regex: `^${up}(${refused.join("|")})(/|$)`,
                message: `src/${folder} may import only ${[folder, ...allowed].map((f) => `src/${f}`).join(", ")} and the modules at the top of src/ (docs/architecture.md#source-folders).`,
              },
            ];
    return {
      files: [`src/${folder}/${"*/".repeat(depth - 1)}*.ts`],
      rules: { "no-restricted-imports": ["error", { patterns }] },
    };
  });
}

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", ".capstan/**", "coverage/**", "bench/results/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/only-throw-error": "off",
      "@typescript-eslint/require-await": "off",
    },
  },
  ...Object.entries(LAYERS).flatMap(([folder, allowed]) => layer(folder, allowed)),
  {
    // The foundation modules import no folder of src/ (a test may reach further).
    files: ["src/*.ts"],
    ignores: ["src/*.test.ts", "src/index.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              regex: `^\\./(${SRC_FOLDERS.join("|")})/`,
              message: "The modules at the top of src/ import no folder of src/.",
            },
          ],
        },
      ],
    },
  },
  {
    files: ["**/*.js", "**/*.mjs"],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: { process: "readonly", console: "readonly" },
    },
  },
);
