#!/usr/bin/env node
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Command, Option } from "commander";
import { CapstanError } from "../errors.js";
import { findRunForOperator, listRunsForOperator } from "../state/admin.js";
import { cancelRun } from "../state/scheduler.js";
import type { RunStatus } from "../state/types.js";
import { migrate, schemaStatus } from "../state/migrate.js";
import { createApiKey, ensureTenant, findTenantByName, listApiKeys, revokeApiKey } from "../state/tenants.js";
import type { Role, Runtime, RuntimeOptions } from "./runtime.js";
import type { SettingsInput } from "../config/config.js";
import { chooseDemoModel, demoConfig } from "../agent/demo.js";
import { modelLabel } from "../agent/models.js";
import { runView } from "../ingress/views.js";
import { readStatus, renderStatus, statusJson } from "./status.js";
import { devApiKey, devBanner } from "./dev.js";
import { CliError, describeExit, EXIT, EXIT_CODES_HELP } from "./exit.js";
import { wholeNumber } from "./flags.js";

/**
 * `capstan`: one binary for every role. Data (a key, `--json`, the dev
 * banner) goes to stdout, logs and errors to stderr; exit codes are in
 * ./exit.ts and in `capstan --help`. The runtime and the roles are imported
 * when a command needs them: `--help` and `--version` load neither.
 */

interface CommonOpts {
  config?: string;
}

const out = (s: string) => process.stdout.write(s + "\n");

/** This package's version (package.json is two levels up from both src/cli and dist/cli). */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version?: unknown;
  };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
}

/** `capstan keys create` for the command `create` under `keys`. */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

async function withRuntime<T>(
  role: Role,
  opts: CommonOpts & { flags?: SettingsInput; migrate?: boolean; coordination?: boolean } & Pick<
      RuntimeOptions,
      "fallbackConfig" | "command"
    >,
  fn: (rt: Runtime) => Promise<T>,
): Promise<T> {
  const { openRuntime } = await import("./runtime.js");
  const rt = await openRuntime({
    role,
    cwd: process.cwd(),
    env: process.env,
    ...(opts.command ? { command: opts.command } : {}),
    ...(opts.config ? { configPath: opts.config } : {}),
    ...(opts.flags ? { flags: opts.flags } : {}),
    ...(opts.migrate !== undefined ? { migrate: opts.migrate } : {}),
    ...(opts.coordination !== undefined ? { coordination: opts.coordination } : {}),
    ...(opts.fallbackConfig ? { fallbackConfig: opts.fallbackConfig } : {}),
  });
  try {
    return await fn(rt);
  } finally {
    await rt.close();
  }
}

/** Resolve on the first SIGTERM/SIGINT; a second one exits at once. */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.removeListener("SIGTERM", on);
      process.removeListener("SIGINT", on);
      process.once(sig, () => process.exit(130));
      resolve(sig);
    };
    process.on("SIGTERM", on);
    process.on("SIGINT", on);
  });
}

/**
 * Refuse to read a database without this build's schema (a stack trace about
 * a missing relation otherwise). Commands that migrate at start never get here.
 */
async function requireSchema(rt: Runtime): Promise<void> {
  const s = await schemaStatus(rt.db);
  if (s.database === 0)
    throw new CliError(EXIT.noSchema, "the database has no Capstan schema: run `capstan migrate`");
  if (s.database < s.code)
    throw new CliError(
      EXIT.noSchema,
      `the database schema is version ${s.database}, this build needs ${s.code}: run \`capstan migrate\``,
    );
}

const port = (flag: string) => wholeNumber(flag, { min: 0, max: 65535 });

export function buildCli(): Command {
  // The command being run (`capstan keys create`), named to whoever finds the data directory locked.
  let command = "capstan";
  const program = new Command("capstan")
    .description("Capstan: a horizontally scalable, crash-safe backend for AI agents")
    .version(packageVersion(), "-V, --version", "print the version")
    .addOption(
      new Option(
        "-c, --config <path>",
        "agent config file (default: capstan.config.ts|.mts|.js|.mjs in the working directory)",
      ),
    )
    .showHelpAfterError("(add --help for usage)")
    .exitOverride()
    .addHelpText("after", EXIT_CODES_HELP)
    .hook("preAction", (_program, action) => {
      command = commandPath(action);
    });
  const common = () => ({ ...program.opts<CommonOpts>(), command });

  program
    .command("worker")
    .description("run the reasoning loop for queued runs (needs DATABASE_URL; REDIS_URL for live streams)")
    .option("--concurrency <n>", "runs executed at once", wholeNumber("--concurrency", { min: 1 }))
    .option("--no-migrate", "do not apply pending migrations at start")
    .action(async (o: { concurrency?: number; migrate: boolean }) => {
      const flags: SettingsInput =
        o.concurrency !== undefined ? { worker: { concurrency: o.concurrency } } : {};
      await withRuntime("worker", { ...common(), flags, migrate: o.migrate }, async (rt) => {
        if (rt.agents.size === 0)
          rt.logger.warn("no agents loaded: add a capstan.config.ts (runs will fail with unknown_agent)");
        const { processMetrics, startWorkerRole } = await import("./roles.js");
        const role = await startWorkerRole(rt, processMetrics(rt, "worker"), { opsServer: true });
        const sig = await untilSignal();
        rt.logger.info({ signal: sig }, "stopping worker");
        await role.stop();
      });
    });

  program
    .command("ingress")
    .description(
      "serve the HTTP API and SSE streams (needs DATABASE_URL; REDIS_URL to share limits and streams)",
    )
    .option("--port <n>", "listen port (env PORT)", port("--port"))
    .option("--host <host>", "listen address (env HOST)")
    .option("--no-migrate", "do not apply pending migrations at start")
    .action(async (o: { port?: number; host?: string; migrate: boolean }) => {
      const flags: SettingsInput = {
        http: { ...(o.port !== undefined ? { port: o.port } : {}), ...(o.host ? { host: o.host } : {}) },
      };
      await withRuntime("ingress", { ...common(), flags, migrate: o.migrate }, async (rt) => {
        const { processMetrics, startIngressRole } = await import("./roles.js");
        const server = await startIngressRole(rt, processMetrics(rt, "ingress"));
        rt.logger.info({ url: server.url }, "ingress listening");
        const sig = await untilSignal();
        rt.logger.info({ signal: sig }, "stopping ingress");
        await server.close();
      });
    });

  program
    .command("dev")
    .description("run ingress and worker in one process on embedded PostgreSQL (PGlite) under .capstan/")
    .option("--port <n>", "listen port (env PORT)", port("--port"))
    .option("--data-dir <dir>", "where embedded data lives (env CAPSTAN_DATA_DIR)")
    .action(async (o: { port?: number; dataDir?: string }) => {
      const choice = chooseDemoModel({
        ...(process.env.OPENAI_API_KEY ? { openaiApiKey: process.env.OPENAI_API_KEY } : {}),
        ...(process.env.CAPSTAN_COMPATIBLE_BASE_URL
          ? { compatibleBaseUrl: process.env.CAPSTAN_COMPATIBLE_BASE_URL }
          : {}),
        ...(process.env.CAPSTAN_COMPATIBLE_MODEL
          ? { compatibleModel: process.env.CAPSTAN_COMPATIBLE_MODEL }
          : {}),
      });
      const flags: SettingsInput = {
        ...(o.dataDir ? { dataDir: o.dataDir } : {}),
        ...(o.port !== undefined ? { http: { port: o.port } } : {}),
        worker: { leaseMs: 15_000, pollMs: 1_000, shutdownGraceMs: 2_000 },
      };
      await withRuntime(
        "dev",
        { ...common(), flags, fallbackConfig: () => demoConfig(choice) },
        async (rt) => {
          const { processMetrics, startIngressRole, startWorkerRole } = await import("./roles.js");
          const metrics = processMetrics(rt, "dev");
          const worker = await startWorkerRole(rt, metrics, { opsServer: false });
          const server = await startIngressRole(rt, metrics);
          const dataDir = resolve(process.cwd(), rt.settings.dataDir);
          const key = await devApiKey(rt.db, dataDir);
          const [first] = rt.agents.values();
          const model = rt.config?.agents.find((a) => a.name === first?.def.name)?.model;
          out(
            devBanner({
              url: server.url,
              key,
              agent: first?.def.name ?? "(none)",
              model: first?.def.name === "demo" ? choice.description : model ? modelLabel(model) : "(none)",
              dataDir,
            }),
          );
          const sig = await untilSignal();
          rt.logger.info({ signal: sig }, "stopping");
          await server.close();
          await worker.stop();
        },
      );
    });

  program
    .command("migrate")
    .description("apply pending database migrations (safe to run concurrently)")
    .action(async () => {
      await withRuntime("admin", { ...common(), migrate: false, coordination: false }, async (rt) => {
        const r = await migrate(rt.db, rt.logger);
        const s = await schemaStatus(rt.db);
        out(r.applied.length ? `applied: ${r.applied.join(", ")}` : "nothing to apply");
        out(`schema version ${s.database} (this build: ${s.code})`);
      });
    });

  const keys = program.command("keys").description("manage API keys");
  keys
    .command("create")
    .description("create an API key for a tenant (the tenant is created if new); the key is printed once")
    .requiredOption("--tenant <name>", "tenant name")
    .option("--name <label>", "a label for the key")
    .action(async (o: { tenant: string; name?: string }) => {
      await withRuntime("admin", { ...common(), coordination: false }, async (rt) => {
        const tenant = await ensureTenant(rt.db, o.tenant);
        const { key, info } = await createApiKey(rt.db, tenant.id, o.name);
        out(key);
        process.stderr.write(
          `created key ${info.id} (${info.prefix}…) for tenant ${tenant.name}; it is not shown again\n`,
        );
      });
    });
  keys
    .command("list")
    .description("list API keys (never the secrets)")
    .option("--tenant <name>", "only this tenant")
    .action(async (o: { tenant?: string }) => {
      await withRuntime("admin", { ...common(), coordination: false }, async (rt) => {
        let tenantId: string | undefined;
        if (o.tenant) {
          // A read: never create the tenant (a typo must not leave one behind).
          const tenant = await findTenantByName(rt.db, o.tenant);
          if (!tenant) throw new CapstanError("not_found", `tenant ${o.tenant} not found`);
          tenantId = tenant.id;
        }
        for (const k of await listApiKeys(rt.db, tenantId)) {
          out(
            `${k.id}  ${k.prefix}…  ${k.name ?? "-"}  ${k.createdAt.toISOString()}  ${k.revokedAt ? "revoked" : "active"}`,
          );
        }
      });
    });
  keys
    .command("revoke <idOrPrefix>")
    .description("revoke an API key by id or displayed prefix")
    .action(async (idOrPrefix: string) => {
      await withRuntime("admin", { ...common(), coordination: false }, async (rt) => {
        const k = await revokeApiKey(rt.db, idOrPrefix);
        out(`revoked ${k.id} (${k.prefix}…)`);
      });
    });

  const runs = program.command("runs").description("inspect and cancel runs (operator view, all tenants)");
  runs
    .command("list")
    .description("list recent runs, newest first")
    .addOption(
      new Option("--status <status>", "only this status").choices([
        "queued",
        "running",
        "waiting",
        "succeeded",
        "failed",
        "cancelled",
      ]),
    )
    .option("--tenant <name>", "only this tenant")
    .option("--limit <n>", "at most this many (1-1000)", wholeNumber("--limit", { min: 1, max: 1000 }), 50)
    .action(async (o: { status?: RunStatus; tenant?: string; limit: number }) => {
      await withRuntime("admin", { ...common(), coordination: false }, async (rt) => {
        const list = await listRunsForOperator(rt.db, {
          limit: o.limit,
          ...(o.status ? { status: o.status } : {}),
          ...(o.tenant ? { tenantName: o.tenant } : {}),
        });
        for (const r of list) {
          out(
            `${r.id}  ${r.status.padEnd(9)}  ${r.agent}  ${r.tenantName}  attempts=${r.attempts}  ${r.createdAt.toISOString()}`,
          );
        }
      });
    });
  runs
    .command("get <runId>")
    .description("show one run as JSON (the API's run object, plus its tenant)")
    .action(async (runId: string) => {
      await withRuntime("admin", { ...common(), coordination: false }, async (rt) => {
        const r = await findRunForOperator(rt.db, runId);
        if (!r) throw new CapstanError("not_found", `run ${runId} not found`);
        // The API's run object (snake_case), and whose run it is.
        out(JSON.stringify({ ...runView(r), tenant: r.tenantName }, null, 2));
      });
    });
  runs
    .command("cancel <runId>")
    .description("cancel a queued, running or waiting run")
    .action(async (runId: string) => {
      await withRuntime("admin", { ...common(), coordination: false }, async (rt) => {
        const r = await findRunForOperator(rt.db, runId);
        if (!r) throw new CapstanError("not_found", `run ${runId} not found`);
        const { run } = await cancelRun(rt.db, r.tenantId, r.id);
        out(`${run.id} ${run.status}`);
      });
    });

  program
    .command("status")
    .description(
      "queue depth, oldest age, in-flight, throughput, and the worker count the scaling rule asks for",
    )
    .option(
      "--target-per-worker <n>",
      "in-flight runs per worker the rule aims for (default 80% of concurrency)",
      wholeNumber("--target-per-worker", { min: 1 }),
    )
    .option("--min-workers <n>", "warm pool", wholeNumber("--min-workers", { min: 0 }), 2)
    .option("--max-workers <n>", "ceiling", wholeNumber("--max-workers", { min: 1 }), 10)
    .option("--json", "machine-readable output (snake_case, like the API)")
    .action(
      async (o: { targetPerWorker?: number; minWorkers: number; maxWorkers: number; json?: boolean }) => {
        await withRuntime("admin", { ...common(), migrate: false, coordination: false }, async (rt) => {
          await requireSchema(rt);
          const rule = {
            targetInFlightPerWorker:
              o.targetPerWorker ?? Math.max(1, Math.floor(0.8 * rt.settings.worker.concurrency)),
            minWorkers: o.minWorkers,
            maxWorkers: o.maxWorkers,
          };
          out(
            o.json
              ? JSON.stringify(statusJson(await readStatus(rt.db, rule)), null, 2)
              : await renderStatus(rt.db, rule),
          );
        });
      },
    );

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildCli();
  try {
    await program.parseAsync(argv);
    return EXIT.ok;
  } catch (err) {
    const { code, message } = describeExit(err);
    if (message !== undefined) process.stderr.write(`capstan: ${message}\n`);
    return code;
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isEntry) {
  void main(process.argv).then((code) => process.exit(code));
}
