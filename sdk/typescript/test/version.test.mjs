// Runs against a live server: FLOCK_API_URL names it (the Go end-to-end test
// starts one and runs this file).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createFlockClient } from "../dist/index.js";

const baseUrl = process.env.FLOCK_API_URL;

test("GET /v1/version through the SDK", { skip: !baseUrl && "FLOCK_API_URL is not set" }, async () => {
  const client = createFlockClient(baseUrl);
  const { data, error, response } = await client.GET("/v1/version");
  assert.equal(error, undefined);
  assert.equal(response.status, 200);
  assert.ok(response.headers.get("x-request-id"), "X-Request-Id header is set");
  assert.ok(data.targets.includes("api"), `targets ${data.targets} include api`);
  assert.ok(data.database.schema_version >= 1, "schema is migrated");
  assert.match(data.go_version, /^go1\./);
});

test("errors arrive as problem documents", { skip: !baseUrl && "FLOCK_API_URL is not set" }, async () => {
  const res = await fetch(new URL("/v1/no-such-thing", baseUrl));
  assert.equal(res.status, 404);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  const body = await res.json();
  assert.equal(body.code, "not_found");
  assert.equal(body.request_id, res.headers.get("x-request-id"));
});

const token = process.env.FLOCK_API_TOKEN;

test("authenticated calls carry the bearer token", { skip: !(baseUrl && token) && "FLOCK_API_URL or FLOCK_API_TOKEN is not set" }, async () => {
  const client = createFlockClient(baseUrl, { headers: { Authorization: `Bearer ${token}` } });
  const { data, error, response } = await client.GET("/v1/me");
  assert.equal(error, undefined, JSON.stringify(error));
  assert.equal(response.status, 200);
  assert.match(data.user.email, /@/);

  const anonymous = createFlockClient(baseUrl);
  const denied = await anonymous.GET("/v1/me");
  assert.equal(denied.response.status, 401);
  assert.equal(denied.error.code, "unauthorized");
});
