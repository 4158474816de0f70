import type { MemoryNamespace } from "./types.js";

/** The memory namespace an agent's setting names for one run. */
export function memoryNamespace(ns: MemoryNamespace, threadId: string): string {
  if (ns === "thread") return `thread:${threadId}`;
  if (ns === "tenant") return "tenant";
  return ns.name;
}
