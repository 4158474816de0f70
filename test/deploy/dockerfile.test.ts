import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../support/procs.js";

/**
 * Static checks of deploy/Dockerfile (no Docker daemon in CI): the properties
 * the deployment relies on. The build steps themselves are the package's own
 * scripts (`npm ci`, `npm run build`), exercised by every CI run.
 */

interface Stage {
  from: string;
  name: string | undefined;
  lines: string[];
}

function stages(dockerfile: string): Stage[] {
  const out: Stage[] = [];
  // Join continuation lines, drop comments and blanks.
  const lines = dockerfile
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  for (const line of lines) {
    const m = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$/i.exec(line);
    if (m) out.push({ from: m[1]!, name: m[2], lines: [] });
    else out.at(-1)?.lines.push(line);
  }
  return out;
}

describe("deploy/Dockerfile", () => {
  it("builds in a node:20-slim stage and runs production deps as non-root", async () => {
    const text = await readFile(join(ROOT, "deploy/Dockerfile"), "utf8");
    expect(text).toMatch(/^ARG NODE_IMAGE=node:20-slim$/m);
    const s = stages(text);
    expect(s.map((x) => x.name)).toEqual(["build", "deps", "runtime"]);
    for (const stage of s) expect(stage.from).toBe("${NODE_IMAGE}");

    const build = s[0]!.lines.join("\n");
    expect(build).toMatch(/RUN npm ci\b/);
    expect(build).toMatch(/RUN npm run build/);

    const deps = s[1]!.lines.join("\n");
    expect(deps).toMatch(/RUN npm ci --omit=dev/);

    const runtime = s[2]!.lines;
    expect(runtime).toContain("COPY --from=deps /app/node_modules ./node_modules");
    expect(runtime).toContain("COPY --from=build /app/dist ./dist");
    // No dev dependencies and no compiler in the final image.
    expect(runtime.some((l) => /npm (ci|install)/.test(l))).toBe(false);
    const user = runtime.filter((l) => l.startsWith("USER ")).at(-1);
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^USER (root|0)\b/);
    expect(runtime.at(-2)).toBe('ENTRYPOINT ["node", "bin/capstan.js"]');
  });

  it("ships a .dockerignore that keeps local builds and dependencies out of the context", async () => {
    const ignore = await readFile(join(ROOT, "deploy/Dockerfile.dockerignore"), "utf8");
    for (const p of ["**/node_modules", "dist", ".git", ".capstan"]) {
      expect(ignore.split("\n")).toContain(p);
    }
  });
});
