#!/usr/bin/env node
import { pathToFileURL } from "node:url";
import { Command, CommanderError, Option } from "commander";
import { CapstanError, isCapstanError } from "../errors.js";
import { findRunForOperator, listRunsForOperator } from "../state/admin.js";
import { cancelRun } from "../state/scheduler.js";
import type { RunStatus } from "../state/types.js";
import { migrate, schemaStatus } from "../state/migrate.js";
import { createApiKey, ensureTenant, findTenantByName, listApiKeys, revokeApiKey } from "../state/tenants.js";
import { openRuntime, type Role, type Runtime, type RuntimeOptions } from "./runtime.js";
import type { SettingsInput } from "../config/config.js";
import { chooseDemoModel, demoConfig } from "../agent/demo.js";
import { modelLabel } from "../agent/models.js";
import { processMetrics, startIngressRole, startWorkerRole } from "./roles.js";
import { readStatus, renderStatus } from "./status.js";
import { devApiKey, devBanner } from "./dev.js";
import { resolve } from "node:path";

/**
 * `capstan`: one binary for every role. Exit codes: 0 success, 1 runtime
 * failure (e.g. database unreachable), 2 bad usage or configuration.
 */

interface CommonOpts {
  config?: string;
}

const out = (s: string) => process.stdout.write(s + "\n");

async function withRuntime<T>(
  role: Role,
  opts: CommonOpts & { flags?: SettingsInput; migrate?: boolean; coordination?: boolean } & Pick<
      RuntimeOptions,
      "fallbackConfig"
    >,
  fn: (rt: Runtime) => Promise<T>,
): Promise<T> {
  const rt = await openRuntime({
    role,
    cwd: process.cwd(),
    env: process.env,
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

const int = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new CommanderError(
      2,
      "capstan.invalidArgument",
      `${name} must be a non-negative integer, got "${v}"`,
    );
  return n;
};

export function buildCli(): Command {
  const program = new Command("capstan")
    .description("Capstan: a horizontally scalable, crash-safe backend for AI agents")
    .addOption(
      new Option(
        "-c, --config <path>",
        "agent config file (default: capstan.config.ts|.mts|.js|.mjs in the working directory)",
      ),
    )
    .showHelpAfterError()
    .exitOverride();

  program
    .command("worker")
    .description("run the reasoning loop for queued runs (needs DATABASE_URL; REDIS_URL for live streams)")
    .option("--concurrency <n>", "runs executed at once", int("--concurrency"))
    .option("--no-migrate", "do not apply pending migrations at start")
    .action(async (o: { concurrency?: number; migrate: boolean }) => {
      const flags: SettingsInput =
        o.concurrency !== undefined ? { worker: { concurrency: o.concurrency } } : {};
      await withRuntime(
        "worker",
        { ...program.opts<CommonOpts>(), flags, migrate: o.migrate },
        async (rt) => {
          if (rt.agents.size === 0)
            rt.logger.warn("no agents loaded: add a capstan.config.ts (runs will fail with unknown_agent)");
          const role = await startWorkerRole(rt, processMetrics(rt, "worker"), { opsServer: true });
          const sig = await untilSignal();
          rt.logger.info({ signal: sig }, "stopping worker");
          await role.stop();
        },
      );
    });

  program
    .command("ingress")
    .description(
      "serve the HTTP API and SSE streams (needs DATABASE_URL; REDIS_URL to share limits and streams)",
    )
    .option("--port <n>", "listen port (env PORT)", int("--port"))
    .option("--host <host>", "listen address (env HOST)")
    .option("--no-migrate", "do not apply pending migrations at start")
    .action(async (o: { port?: number; host?: string; migrate: boolean }) => {
      const flags: SettingsInput = {
        http: { ...(o.port !== undefined ? { port: o.port } : {}), ...(o.host ? { host: o.host } : {}) },
      };
      await withRuntime(
        "ingress",
        { ...program.opts<CommonOpts>(), flags, migrate: o.migrate },
        async (rt) => {
          const server = await startIngressRole(rt, processMetrics(rt, "ingress"));
          rt.logger.info({ url: server.url }, "ingress listening");
          const sig = await untilSignal();
          rt.logger.info({ signal: sig }, "stopping ingress");
          await server.close();
        },
      );
    });

  program
    .command("dev")
    .description("run ingress and worker in one process on embedded PostgreSQL (PGlite) under .capstan/")
    .option("--port <n>", "listen port (env PORT)", int("--port"))
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
        { ...program.opts<CommonOpts>(), flags, fallbackConfig: () => demoConfig(choice) },
        async (rt) => {
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
      await withRuntime(
        "admin",
        { ...program.opts<CommonOpts>(), migrate: false, coordination: false },
        async (rt) => {
          const r = await migrate(rt.db, rt.logger);
          const s = await schemaStatus(rt.db);
          out(r.applied.length ? `applied: ${r.applied.join(", ")}` : "nothing to apply");
          out(`schema version ${s.database} (this build: ${s.code})`);
        },
      );
    });

  const keys = program.command("keys").description("manage API keys");
  keys
    .command("create")
    .description("create an API key for a tenant (the tenant is created if new); the key is printed once")
    .requiredOption("--tenant <name>", "tenant name")
    .option("--name <label>", "a label for the key")
    .action(async (o: { tenant: string; name?: string }) => {
      await withRuntime("admin", { ...program.opts<CommonOpts>(), coordination: false }, async (rt) => {
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
      await withRuntime("admin", { ...program.opts<CommonOpts>(), coordination: false }, async (rt) => {
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
      await withRuntime("admin", { ...program.opts<CommonOpts>(), coordination: false }, async (rt) => {
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
    .option("--limit <n>", "at most this many (1-1000)", int("--limit"), 50)
    .action(async (o: { status?: RunStatus; tenant?: string; limit: number }) => {
      if (o.limit < 1 || o.limit > 1000)
        throw new CommanderError(2, "capstan.invalidArgument", "--limit must be between 1 and 1000");
      await withRuntime("admin", { ...program.opts<CommonOpts>(), coordination: false }, async (rt) => {
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
    .description("show one run as JSON")
    .action(async (runId: string) => {
      await withRuntime("admin", { ...program.opts<CommonOpts>(), coordination: false }, async (rt) => {
        const r = await findRunForOperator(rt.db, runId);
        if (!r) throw new CapstanError("not_found", `run ${runId} not found`);
        out(JSON.stringify(r, null, 2));
      });
    });
  runs
    .command("cancel <runId>")
    .description("cancel a queued, running or waiting run")
    .action(async (runId: string) => {
      await withRuntime("admin", { ...program.opts<CommonOpts>(), coordination: false }, async (rt) => {
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
      int("--target-per-worker"),
    )
    .option("--min-workers <n>", "warm pool", int("--min-workers"), 2)
    .option("--max-workers <n>", "ceiling", int("--max-workers"), 10)
    .option("--json", "machine-readable output")
    .action(
      async (o: { targetPerWorker?: number; minWorkers: number; maxWorkers: number; json?: boolean }) => {
        await withRuntime(
          "admin",
          { ...program.opts<CommonOpts>(), migrate: false, coordination: false },
          async (rt) => {
            const rule = {
              targetInFlightPerWorker:
                o.targetPerWorker ?? Math.max(1, Math.floor(0.8 * rt.settings.worker.concurrency)),
              minWorkers: o.minWorkers,
              maxWorkers: o.maxWorkers,
            };
            out(
              o.json
                ? JSON.stringify(await readStatus(rt.db, rule), null, 2)
                : await renderStatus(rt.db, rule),
            );
          },
        );
      },
    );

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildCli();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (isCapstanError(err)) {
      process.stderr.write(`capstan: ${err.message}\n`);
      return err.code === "config_invalid" || err.code === "validation_failed" || err.code === "not_found"
        ? 2
        : 1;
    }
    process.stderr.write(`capstan: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isEntry) {
  void main(process.argv).then((code) => process.exit(code));
}
