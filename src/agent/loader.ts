/**
 * Loads `capstan.config.ts` (or `.mts`, `.js`, `.mjs`) with jiti, so users
 * write TypeScript without a build step. The default export is validated as a
 * CapstanConfig; errors name the file and say what to fix.
 */
import { existsSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { CapstanError } from "../errors.js";
import { normalizeConfig } from "./define.js";
import type { CapstanConfig } from "./types.js";

/** Looked up in this order in the working directory. */
export const CONFIG_FILE_NAMES = [
  "capstan.config.ts",
  "capstan.config.mts",
  "capstan.config.js",
  "capstan.config.mjs",
] as const;

/** The config file in `cwd`, or null if there is none. */
export function findConfigFile(cwd: string): string | null {
  for (const name of CONFIG_FILE_NAMES) {
    const p = resolve(cwd, name);
    if (existsSync(p) && statSync(p).isFile()) return p;
  }
  return null;
}

/**
 * Loads and validates the config.
 *
 * - `path` given (relative to `cwd`): that file must exist.
 * - `path` undefined: the first of CONFIG_FILE_NAMES in `cwd`; returns `null`
 *   when there is none (the caller decides, e.g. the built-in demo agent).
 *
 * Throws `config_invalid` (message starts with the file path) when the file
 * cannot be loaded or its default export is not a valid config.
 *
 * `nativeTypeScript`: the process already loads TypeScript (the CLI run from
 * source under tsx): import a `.ts`/`.mts` config natively, with this
 * process's modules, instead of transpiling it (and every source file it
 * imports, a second copy of them) with jiti's Babel, which costs seconds of
 * CPU at every start. Native imports are cached per process like `.mjs`.
 */
export async function loadConfigFile(
  path: string | undefined,
  cwd: string,
  opts: { nativeTypeScript?: boolean } = {},
): Promise<CapstanConfig | null> {
  let file: string;
  if (path !== undefined) {
    file = resolve(cwd, path);
    if (!existsSync(file) || !statSync(file).isFile()) {
      throw new CapstanError("config_invalid", `config file ${file} does not exist`, { details: { file } });
    }
  } else {
    const found = findConfigFile(cwd);
    if (found === null) return null;
    file = found;
  }

  let mod: unknown;
  try {
    if (file.endsWith(".mjs") || (opts.nativeTypeScript === true && /\.m?ts$/.test(file))) {
      mod = await import(pathToFileURL(file).href);
    } else {
      // No module cache: reloading a TypeScript config sees the file as it is
      // now (`.js` files go through Node's native ESM loader, which caches per
      // process). No filesystem cache: loading must not write anywhere. Loaded
      // only when needed (it is a large module).
      const { createJiti } = await import("jiti");
      const jiti = createJiti(file, { moduleCache: false, fsCache: false, interopDefault: false });
      mod = await jiti.import(file);
    }
  } catch (err) {
    // Errors thrown by defineAgent & co. inside the file come from the config's
    // own copy of this package, so they are recognised by message, not class.
    const msg = err instanceof Error ? err.message : String(err);
    throw new CapstanError("config_invalid", `${file}: failed to load: ${msg}`, {
      cause: err,
      details: { file },
    });
  }

  const exported = defaultExport(mod);
  if (exported === undefined) {
    throw new CapstanError(
      "config_invalid",
      `${file}: no default export; end the file with \`export default defineConfig({ agents: [...] })\``,
      { details: { file } },
    );
  }
  try {
    // Re-validates even defineConfig() output: the file may have built it
    // with another copy of capstan, or by hand.
    return normalizeConfig(exported, "default export");
  } catch (err) {
    if (err instanceof CapstanError) {
      throw new CapstanError("config_invalid", `${file}: ${err.message}`, {
        cause: err,
        fields: err.fields,
        details: { file },
      });
    }
    throw err;
  }
}

/**
 * The ESM default export. A CommonJS file (`module.exports = {...}`, no
 * `__esModule` marker) counts as default-exporting `module.exports`.
 */
function defaultExport(mod: unknown): unknown {
  if (typeof mod !== "object" || mod === null) return undefined;
  const isEsm = Object.prototype.toString.call(mod) === "[object Module]" || "__esModule" in mod;
  if ("default" in mod) return mod.default;
  return isEsm ? undefined : mod;
}
