import { defineConfig } from "vitest/config";

// Integration tests share one PostgreSQL and one Redis; each test file creates
// its own database/key prefix, so files may run in parallel. Two cores: keep
// the pool small so crash tests with child processes are not starved.
export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default"],
  },
});
