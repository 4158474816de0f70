import { describe, expect, it } from "vitest";
import { isCapstanError } from "../errors.js";
import { resolveSettings } from "./config.js";

describe("tracing settings", () => {
  it("are off by default, with the OTLP/HTTP defaults", () => {
    expect(resolveSettings().tracing).toEqual({
      enabled: false,
      endpoint: "http://localhost:4318/v1/traces",
      headers: {},
      serviceName: "capstan",
      sampleRatio: 1,
      batchDelayMs: 5_000,
      exportTimeoutMs: 10_000,
      maxQueueSize: 2_048,
    });
  });

  it("take the config file, then CAPSTAN_TRACING and the standard OTEL_* variables", () => {
    const s = resolveSettings({
      file: {
        tracing: { serviceName: "from-file", headers: { "x-team": "agents", authorization: "file" } },
      },
      env: {
        CAPSTAN_TRACING: "otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT: "https://collector.example:4318/otlp/",
        OTEL_EXPORTER_OTLP_HEADERS: "authorization=Bearer%20abc, x-scope = general",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS: "x-scope=traces",
        OTEL_TRACES_SAMPLER_ARG: "0.25",
        OTEL_BSP_SCHEDULE_DELAY: "200",
        OTEL_EXPORTER_OTLP_TIMEOUT: "3000",
        OTEL_BSP_MAX_QUEUE_SIZE: "100",
      },
    });
    expect(s.tracing).toEqual({
      enabled: true,
      // The general endpoint is a base URL: the traces path is appended.
      endpoint: "https://collector.example:4318/otlp/v1/traces",
      // Merged by name: environment over file, traces-specific over general; values percent-decoded.
      headers: { "x-team": "agents", authorization: "Bearer abc", "x-scope": "traces" },
      serviceName: "from-file",
      sampleRatio: 0.25,
      batchDelayMs: 200,
      exportTimeoutMs: 3_000,
      maxQueueSize: 100,
    });
  });

  it("uses a traces-specific endpoint as is, and OTEL_SERVICE_NAME over the file", () => {
    const s = resolveSettings({
      file: { tracing: { enabled: true, serviceName: "from-file" } },
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://general:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://traces:4318/custom/path",
        OTEL_SERVICE_NAME: "from-env",
        OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: "1234",
      },
    });
    expect(s.tracing.enabled).toBe(true);
    expect(s.tracing.endpoint).toBe("http://traces:4318/custom/path");
    expect(s.tracing.serviceName).toBe("from-env");
    expect(s.tracing.exportTimeoutMs).toBe(1_234);
  });

  it("needs an explicit switch: an OTLP endpoint alone does not turn tracing on", () => {
    expect(resolveSettings({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" } }).tracing.enabled).toBe(
      false,
    );
    expect(resolveSettings({ env: { CAPSTAN_TRACING: "OTLP" } }).tracing.enabled).toBe(true);
    expect(
      resolveSettings({ file: { tracing: { enabled: true } }, env: { CAPSTAN_TRACING: "off" } }).tracing,
    ).toMatchObject({ enabled: false });
  });

  it("is turned off by OTEL_SDK_DISABLED=true, whatever else says", () => {
    const on = { CAPSTAN_TRACING: "otlp" };
    expect(resolveSettings({ env: { ...on, OTEL_SDK_DISABLED: "true" } }).tracing.enabled).toBe(false);
    expect(resolveSettings({ env: { ...on, OTEL_SDK_DISABLED: "false" } }).tracing.enabled).toBe(true);
  });

  it.each([
    [{ CAPSTAN_TRACING: "jaeger" }, /tracing\.enabled.*environment variable CAPSTAN_TRACING/],
    [
      { OTEL_TRACES_SAMPLER_ARG: "1.5" },
      /tracing\.sampleRatio.*environment variable OTEL_TRACES_SAMPLER_ARG/,
    ],
    [{ OTEL_TRACES_SAMPLER_ARG: "half" }, /tracing\.sampleRatio.*OTEL_TRACES_SAMPLER_ARG/],
    [{ OTEL_EXPORTER_OTLP_HEADERS: "no-equals-sign" }, /tracing\.headers.*OTEL_EXPORTER_OTLP_HEADERS/],
    [{ OTEL_EXPORTER_OTLP_HEADERS: "a=%E0%A4%A" }, /tracing\.headers.*OTEL_EXPORTER_OTLP_HEADERS/],
    [
      { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "not a url" },
      /tracing\.endpoint.*OTEL_EXPORTER_OTLP_TRACES_ENDPOINT/,
    ],
    [{ OTEL_BSP_SCHEDULE_DELAY: "0" }, /tracing\.batchDelayMs.*OTEL_BSP_SCHEDULE_DELAY/],
  ])("names the variable of an invalid value: %o", (env, message) => {
    try {
      resolveSettings({ env });
      expect.unreachable();
    } catch (e) {
      expect(isCapstanError(e, "config_invalid")).toBe(true);
      expect((e as Error).message).toMatch(message);
    }
  });

  it("refuses unknown keys in the file's tracing section", () => {
    expect(() => resolveSettings({ file: { tracing: { endpoints: "x" } } })).toThrow(/endpoints/);
  });
});
