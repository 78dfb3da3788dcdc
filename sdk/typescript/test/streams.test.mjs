// The stream helpers against a live server (FLOCK_API_URL, FLOCK_API_TOKEN;
// the Go end-to-end test starts one and runs this file). A device registered
// here reports its state over HTTP; each report is a device.state event.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import WebSocket from "ws";
import { createFlockClient, openStream, openEventSocket, FlockEventSource, streamPath } from "../dist/index.js";

const baseUrl = process.env.FLOCK_API_URL;
const token = process.env.FLOCK_API_TOKEN;
const skip = !(baseUrl && token) && "FLOCK_API_URL or FLOCK_API_TOKEN is not set";

const b64url = (b) => Buffer.from(b).toString("base64url");

// A fleet with one registered device that can report its state.
async function world() {
  const api = createFlockClient(baseUrl, { headers: { Authorization: `Bearer ${token}` } });
  const org = (await api.POST("/v1/orgs", { body: { name: "Streams" } })).data;
  const fleet = (await api.POST("/v1/orgs/{orgId}/fleets", { params: { path: { orgId: org.id } }, body: { name: "s", architecture: "amd64" } })).data;
  const key = (await api.POST("/v1/fleets/{fleetId}/provisioning-keys", { params: { path: { fleetId: fleet.id } }, body: { name: "k" } })).data;
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const id = randomUUID();
  const reg = await api.POST("/device/v1/register", {
    body: { provisioning_key: key.secret, uuid: id, public_key: publicKey.export({ format: "jwk" }).x, name: "node-dev", device_type: "generic-amd64" },
  });
  assert.equal(reg.response.status, 201, JSON.stringify(reg.error));
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64url(JSON.stringify({ alg: "EdDSA", typ: "JWT" }))}.${b64url(JSON.stringify({
    iss: id, sub: id, aud: reg.data.token_endpoint, iat: now, exp: now + 120, jti: randomUUID(),
  }))}`;
  const assertion = `${input}.${b64url(sign(null, Buffer.from(input), privateKey))}`;
  const tok = await api.POST("/device/v1/token", { body: { assertion } });
  assert.equal(tok.response.status, 200, JSON.stringify(tok.error));
  const report = async (seq) => {
    const res = await fetch(new URL("/device/v1/state", baseUrl), {
      method: "PATCH", headers: { Authorization: `Bearer ${tok.data.access_token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ seq, os_version: `v${seq}` }),
    });
    assert.equal(res.status, 204, await res.text());
  };
  return { org, fleet, device: id, report };
}

// collect gathers stream events and lets a test wait until a condition holds.
function collector() {
  const events = [];
  const waiters = [];
  return {
    events,
    push(e) {
      events.push(e);
      for (const w of [...waiters]) if (w.cond()) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
    },
    until(what, cond, ms = 30000) {
      if (cond()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(events.map((e) => [e.type, e.data?.state?.seq]))}`)), ms);
        waiters.push({ cond, resolve: () => { clearTimeout(timer); resolve(); } });
      });
    },
  };
}

const seqs = (events) => events.filter((e) => e.type === "device.state").map((e) => e.data.state.seq);
const opened = (source) => new Promise((resolve, reject) => {
  if (source.readyState === 1) return resolve();
  source.addEventListener("open", () => resolve(), { once: true });
  source.addEventListener("error", () => source.readyState === 2 && reject(new Error(`stream refused: ${source.status} ${JSON.stringify(source.problem)}`)), { once: true });
});

test("SSE: a fleet's state events, resumed after a disconnect with nothing lost or repeated", { skip }, async () => {
  const w = await world();
  const first = collector();
  const s1 = openStream(baseUrl, { fleetId: w.fleet.id }, (e) => first.push(e), { token, types: ["device.state"] });
  await opened(s1.source);
  await w.report(1);
  await first.until("seq 1", () => seqs(first.events).includes(1));
  s1.close();
  const resumeFrom = first.events.at(-1).id;
  assert.equal(first.events.at(-1).device_id, w.device);
  assert.equal(first.events.at(-1).fleet_id, w.fleet.id);

  await w.report(2); // while nobody listens
  const second = collector();
  const s2 = openStream(baseUrl, { fleetId: w.fleet.id }, (e) => second.push(e), { token, types: ["device.state"], lastEventId: resumeFrom });
  await second.until("seq 2 replayed", () => seqs(second.events).includes(2));
  await w.report(3);
  await second.until("seq 3 live", () => seqs(second.events).includes(3));
  s2.close();
  assert.deepEqual(seqs(second.events), [2, 3]);
});

test("WebSocket: the same events with the token as a subprotocol, resumed by id", { skip }, async () => {
  const w = await world();
  const first = collector();
  const s1 = openStream(baseUrl, { deviceId: w.device }, (e) => first.push(e), { token, types: ["device.state"] });
  await opened(s1.source);
  await w.report(1);
  await first.until("seq 1", () => seqs(first.events).includes(1));
  s1.close();

  await w.report(2);
  const ws = collector();
  const sock = openEventSocket(baseUrl, { deviceId: w.device }, (e) => ws.push(e),
    { token, WebSocket, types: ["device.state"], lastEventId: first.events.at(-1).id });
  await ws.until("seq 2 replayed", () => seqs(ws.events).includes(2));
  await w.report(3);
  await ws.until("seq 3 live", () => seqs(ws.events).includes(3));
  assert.equal(sock.lastEventId, ws.events.at(-1).id);
  sock.close();
  assert.deepEqual(seqs(ws.events), [2, 3]);
});

test("a stream of another organisation's fleet is a 404 problem, and is not retried", { skip }, async () => {
  const source = new FlockEventSource(new URL(streamPath({ fleetId: randomUUID() }), baseUrl), { headers: { Authorization: `Bearer ${token}` } });
  await assert.rejects(opened(source), /404/);
  assert.equal(source.readyState, FlockEventSource.CLOSED);
  assert.equal(source.problem.code, "not_found");
});
