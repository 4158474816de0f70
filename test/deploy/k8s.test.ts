import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { desiredWorkers, KEDA_QUEUE_QUERY } from "../../src/observability/queue-stats.js";
import { claimRun, enqueueRun, suspendRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { createTestDb, type TestDb } from "../support/pg.js";
import { ROOT } from "../support/procs.js";

/**
 * The Kubernetes base renders with `kubectl kustomize` (Debian's
 * kubernetes-client) and says what the design needs: probes, resources,
 * grace periods longer than the worker's drain, the KEDA trigger on the
 * shared query, PDBs, the migration Job. The KEDA query itself runs against
 * a real database with a known queue.
 *
 * kubectl prints YAML only; `kubectl annotate --local -o json` (no cluster
 * needed) turns the rendered stream into JSON, so no YAML parser is needed.
 */

// ---- the shapes this test reads -------------------------------------------

interface Meta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface Probe {
  httpGet?: { path: string; port: string | number };
  periodSeconds?: number;
  timeoutSeconds?: number;
  failureThreshold?: number;
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string } };
}
interface Container {
  name: string;
  image: string;
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string } }[];
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  startupProbe?: Probe;
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean };
}
interface PodTemplate {
  metadata: { labels: Record<string, string> };
  spec: {
    containers: Container[];
    terminationGracePeriodSeconds?: number;
    restartPolicy?: string;
    securityContext?: { runAsNonRoot?: boolean };
  };
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: Meta;
  data?: Record<string, string>;
  // Read per kind below through the typed views.
  spec?: unknown;
}
interface Workload extends K8sObject {
  spec: {
    replicas?: number;
    selector?: { matchLabels: Record<string, string> };
    template: PodTemplate;
    backoffLimit?: number;
  };
}
interface ScaledObject extends K8sObject {
  spec: {
    scaleTargetRef: { name: string; kind?: string; envSourceContainerName?: string };
    minReplicaCount: number;
    maxReplicaCount: number;
    triggers: { type: string; metricType?: string; metadata: Record<string, string> }[];
  };
}

// ---- rendering --------------------------------------------------------------

function run(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === "ENOENT"
          ? new Error(
              `${cmd} is not installed: this test needs kubectl (Debian: \`apt-get install kubernetes-client\`)`,
            )
          : e,
      );
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(" ")} exited with ${code}: ${err}`));
    });
    child.stdin.end(input ?? "");
  });
}

/** Split a stream of concatenated JSON documents (what kubectl prints for several objects). */
function parseJsonStream(text: string): unknown[] {
  const out: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === "{") {
      if (depth === 0) start = i;
      depth++;
    } else if (c === "}") {
      depth--;
      if (depth === 0) out.push(JSON.parse(text.slice(start, i + 1)));
    }
  }
  if (depth !== 0 || inString) throw new Error("truncated JSON stream from kubectl");
  return out;
}

const squash = (sql: string) => sql.replace(/\s+/g, " ").trim();

/** Kubernetes quantities to numbers (cores, bytes). */
function quantity(q: string): number {
  const m = /^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G)?$/.exec(q);
  if (!m) throw new Error(`unparseable quantity ${q}`);
  const n = Number(m[1]);
  const unit = m[2] ?? "";
  const mult: Record<string, number> = {
    "": 1,
    m: 1e-3,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    Ki: 2 ** 10,
    Mi: 2 ** 20,
    Gi: 2 ** 30,
    Ti: 2 ** 40,
  };
  return n * mult[unit]!;
}

let objects: K8sObject[] = [];
let t: TestDb | undefined;

const all = (kind: string) => objects.filter((o) => o.kind === kind);
function one<T extends K8sObject = K8sObject>(kind: string, name: string): T {
  const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
  expect(found, `${kind}/${name}`).toHaveLength(1);
  return found[0] as T;
}
const container = (w: Workload): Container => {
  expect(w.spec.template.spec.containers, w.metadata.name).toHaveLength(1);
  return w.spec.template.spec.containers[0]!;
};
const envOf = (c: Container, name: string) => c.env?.find((e) => e.name === name);
const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

beforeAll(async () => {
  // Fails (never skips) without kubectl: the deployment is part of the product.
  const yaml = await run("kubectl", ["kustomize", "deploy/k8s"]);
  const json = await run(
    "kubectl",
    ["annotate", "--local", "-f", "-", "capstan.dev/unused-", "-o", "json"],
    yaml,
  );
  objects = parseJsonStream(json) as K8sObject[];
}, 60_000);
afterAll(async () => {
  await t?.drop();
});

describe("deploy/k8s", () => {
  const config = () => {
    const cms = all("ConfigMap");
    expect(cms).toHaveLength(1);
    return cms[0]!;
  };

  it("renders the expected objects, namespace-less, labelled, with no secrets inside", () => {
    const kinds = objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    expect(kinds).toEqual(
      [
        `ConfigMap/${config().metadata.name}`,
        "Deployment/capstan-ingress",
        "Deployment/capstan-worker",
        "HorizontalPodAutoscaler/capstan-ingress",
        "Job/capstan-migrate",
        "PodDisruptionBudget/capstan-ingress",
        "PodDisruptionBudget/capstan-worker",
        "ScaledObject/capstan-worker",
        "Service/capstan-ingress",
      ].sort(),
    );
    expect(config().metadata.name).toMatch(/^capstan-config-[a-z0-9]+$/);
    for (const o of objects) {
      expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBeUndefined();
      expect(o.metadata.labels?.["app.kubernetes.io/part-of"], `${o.kind}/${o.metadata.name}`).toBe(
        "capstan",
      );
    }
    expect(all("Secret")).toEqual([]);
  });

  it("runs every container as non-root, read-only, with requests and limits, on the pinned image", () => {
    const workloads = [...all("Deployment"), ...all("Job")] as Workload[];
    expect(workloads).toHaveLength(3);
    for (const w of workloads) {
      const c = container(w);
      const name = w.metadata.name;
      expect(c.image, name).toBe("registry.example.com/capstan:0.1.0");
      expect(w.spec.template.spec.securityContext?.runAsNonRoot, name).toBe(true);
      expect(c.securityContext, name).toMatchObject({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
      });
      for (const r of ["cpu", "memory"]) {
        const req = c.resources?.requests?.[r];
        const lim = c.resources?.limits?.[r];
        expect(req, `${name} requests.${r}`).toBeDefined();
        expect(lim, `${name} limits.${r}`).toBeDefined();
        expect(quantity(req!), `${name} ${r} request <= limit`).toBeLessThanOrEqual(quantity(lim!));
      }
      // Settings come from the generated ConfigMap, the connection string from the Secret.
      expect(c.envFrom?.map((e) => e.configMapRef?.name)).toEqual([config().metadata.name]);
      expect(envOf(c, "DATABASE_URL")?.valueFrom?.secretKeyRef).toEqual({
        name: "capstan-secrets",
        key: "DATABASE_URL",
      });
    }
  });

  it("probes the ingress on its HTTP port and lets the HPA own its replicas", () => {
    const ing = one<Workload>("Deployment", "capstan-ingress");
    const c = container(ing);
    expect(c.args?.[0]).toBe("ingress");
    const http = c.ports?.find((p) => p.name === "http");
    expect(http?.containerPort).toBe(Number(config().data?.PORT));
    expect(config().data?.HOST).toBe("0.0.0.0");
    expect(c.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "http" });
    expect(c.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "http" });
    expect(c.startupProbe?.httpGet?.path).toBe("/healthz");
    expect(envOf(c, "REDIS_URL")?.valueFrom?.secretKeyRef?.name).toBe("capstan-secrets");
    expect(ing.spec.replicas).toBeUndefined();
    expect(ing.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(5);

    const svc = one<
      K8sObject & { spec: { selector: Record<string, string>; ports: { targetPort: string }[] } }
    >("Service", "capstan-ingress");
    expect(matches(svc.spec.selector, ing.spec.template.metadata.labels)).toBe(true);
    expect(svc.spec.ports[0]?.targetPort).toBe("http");

    const hpa = one<
      K8sObject & {
        spec: {
          scaleTargetRef: { kind: string; name: string };
          minReplicas: number;
          maxReplicas: number;
          metrics: { type: string; resource?: { name: string } }[];
        };
      }
    >("HorizontalPodAutoscaler", "capstan-ingress");
    expect(hpa.apiVersion).toBe("autoscaling/v2");
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: "Deployment", name: "capstan-ingress" });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
    expect(hpa.spec.maxReplicas).toBeGreaterThanOrEqual(hpa.spec.minReplicas);
    expect(hpa.spec.metrics.some((m) => m.type === "Resource" && m.resource?.name === "cpu")).toBe(true);
  });

  it("probes the worker on its ops port and gives it longer than its shutdown grace to drain", () => {
    const w = one<Workload>("Deployment", "capstan-worker");
    const c = container(w);
    expect(c.args?.[0]).toBe("worker");
    const ops = c.ports?.find((p) => p.name === "ops");
    expect(ops?.containerPort).toBe(Number(config().data?.CAPSTAN_OPS_PORT));
    expect(c.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "ops" });
    expect(c.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "ops" });
    expect(c.startupProbe?.httpGet?.port).toBe("ops");
    expect(w.spec.replicas).toBeUndefined(); // KEDA owns it

    // The kubelet SIGKILLs after terminationGracePeriodSeconds: the worker's
    // grace (in-flight steps) plus releasing leases and closing must fit, with margin.
    const graceMs = Number(config().data?.CAPSTAN_SHUTDOWN_GRACE_MS);
    expect(graceMs).toBeGreaterThan(0);
    expect(w.spec.template.spec.terminationGracePeriodSeconds! * 1000).toBeGreaterThanOrEqual(
      graceMs + 10_000,
    );
  });

  it("scales workers with KEDA on the shared queue query, with a warm pool", () => {
    const so = one<ScaledObject>("ScaledObject", "capstan-worker");
    expect(so.apiVersion).toBe("keda.sh/v1alpha1");
    expect(so.spec.scaleTargetRef.name).toBe("capstan-worker");
    expect(so.spec.minReplicaCount).toBeGreaterThanOrEqual(1);
    expect(so.spec.maxReplicaCount).toBeGreaterThanOrEqual(so.spec.minReplicaCount);
    expect(so.spec.triggers).toHaveLength(1);
    const trig = so.spec.triggers[0]!;
    expect(trig.type).toBe("postgresql");
    expect(trig.metricType).toBe("AverageValue");
    expect(squash(trig.metadata.query!)).toBe(squash(KEDA_QUEUE_QUERY));
    const target = Number(trig.metadata.targetQueryValue);
    expect(Number.isInteger(target) && target > 0).toBe(true);
    // A worker is asked to carry at most what it can run at once.
    expect(target).toBeLessThanOrEqual(Number(config().data?.CAPSTAN_WORKER_CONCURRENCY));
    // KEDA reads the connection string from the worker container's environment.
    const w = one<Workload>("Deployment", "capstan-worker");
    const c = container(w);
    expect(so.spec.scaleTargetRef.envSourceContainerName).toBe(c.name);
    expect(envOf(c, trig.metadata.connectionFromEnv!)).toBeDefined();
  });

  it("fits the whole fleet at its maximum size into max_connections = 200 (deploy/README.md, Sizing)", () => {
    const pool = (w: Workload) => Number(envOf(container(w), "CAPSTAN_DB_POOL_SIZE")?.value);
    const worker = one<Workload>("Deployment", "capstan-worker");
    const ingress = one<Workload>("Deployment", "capstan-ingress");
    const job = one<Workload>("Job", "capstan-migrate");
    const workersMax = one<ScaledObject>("ScaledObject", "capstan-worker").spec.maxReplicaCount;
    const ingressMax = one<K8sObject & { spec: { maxReplicas: number } }>(
      "HorizontalPodAutoscaler",
      "capstan-ingress",
    ).spec.maxReplicas;
    for (const p of [pool(worker), pool(ingress), pool(job)]) expect(p).toBeGreaterThan(0);
    // Pools plus LISTEN connections (worker 2, ingress 1), the Job, KEDA's poll.
    const total = workersMax * (pool(worker) + 2) + ingressMax * (pool(ingress) + 1) + pool(job) + 1;
    expect(total).toBe(169); // the number the guide quotes
    expect(total).toBeLessThanOrEqual(200 - 20); // room for administration
  });

  it("has disruption budgets that select each deployment's pods", () => {
    for (const name of ["capstan-ingress", "capstan-worker"]) {
      const pdb = one<
        K8sObject & {
          spec: {
            selector: { matchLabels: Record<string, string> };
            maxUnavailable?: string | number;
            minAvailable?: string | number;
          };
        }
      >("PodDisruptionBudget", name);
      const d = one<Workload>("Deployment", name);
      expect(matches(pdb.spec.selector.matchLabels, d.spec.template.metadata.labels), name).toBe(true);
      // It must not select the other deployment's pods.
      const other = one<Workload>(
        "Deployment",
        name === "capstan-ingress" ? "capstan-worker" : "capstan-ingress",
      );
      expect(matches(pdb.spec.selector.matchLabels, other.spec.template.metadata.labels), name).toBe(false);
      expect(pdb.spec.maxUnavailable ?? pdb.spec.minAvailable, name).toBeDefined();
    }
  });

  it("migrates with a Job, and the long-running roles do not migrate themselves", () => {
    const job = one<Workload>("Job", "capstan-migrate");
    const c = container(job);
    expect(c.args).toEqual(["migrate"]);
    expect(["Never", "OnFailure"]).toContain(job.spec.template.spec.restartPolicy);
    expect(job.spec.backoffLimit).toBeGreaterThan(0);
    for (const name of ["capstan-ingress", "capstan-worker"]) {
      expect(container(one<Workload>("Deployment", name)).args).toContain("--no-migrate");
    }
  });

  it("the KEDA query returns the scaling demand of a real database", async () => {
    t = await createTestDb();
    const db = t.db;
    const enqueue = async (tenantId: string, threadId?: string) =>
      enqueueRun(db, {
        tenantId,
        threadId: threadId ?? (await createThread(db, tenantId)).id,
        agent: "a",
        content: "x",
        maxAttempts: 3,
        defaultMaxPending: 1000,
      });
    // Tenant "open" (no cap): 7 thread heads, one of them with a run blocked behind it.
    const open = await ensureTenant(db, "open");
    const firstThread = (await createThread(db, open.id)).id;
    await enqueue(open.id, firstThread);
    await enqueue(open.id, firstThread);
    for (let i = 0; i < 6; i++) await enqueue(open.id);
    // Claim three (only "open" has work yet) and park one in `waiting`:
    // open = 4 ready + 2 running (+ 1 blocked, 1 waiting: not demand).
    const claimed = [];
    for (let i = 0; i < 3; i++) claimed.push((await claimRun(db, { workerId: "w", leaseMs: 60_000 }))!);
    expect(claimed.every((r) => r.tenantId === open.id)).toBe(true);
    await suspendRun(db, claimed[0]!.lease, { reason: "approval" });
    // Tenant "capped" (cap 2): 4 ready, but only 2 can run at once.
    const capped = await ensureTenant(db, "capped", { maxConcurrency: 2 });
    for (let i = 0; i < 4; i++) await enqueue(capped.id);
    // Tenant "roomy" (cap 5): 1 ready; its cap does not bind.
    const roomy = await ensureTenant(db, "roomy", { maxConcurrency: 5 });
    await enqueue(roomy.id);

    const so = one<ScaledObject>("ScaledObject", "capstan-worker");
    const trig = so.spec.triggers[0]!;
    // Exactly the SQL KEDA will run, from the rendered manifest.
    const r = await db.query<Record<string, unknown>>(trig.metadata.query!);
    expect(r.rows).toHaveLength(1);
    const demand = Object.values(r.rows[0]!)[0];
    expect(demand).toBe(4 + 2 + 2 + 1);
    // KEDA (AverageValue): ceil(9 / 40) = 1 worker, clamped up to the warm pool.
    expect(
      desiredWorkers(9, {
        targetInFlightPerWorker: Number(trig.metadata.targetQueryValue),
        minWorkers: so.spec.minReplicaCount,
        maxWorkers: so.spec.maxReplicaCount,
      }),
    ).toBe(Math.max(so.spec.minReplicaCount, 1));
  });
});
