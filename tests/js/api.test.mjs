// Server HTTP API, JWT authentication, access rules, metrics and readiness. Run by
// tests/api.rs against a server with API key "test-key", auth.mode jwt (secret or ES256 key
// given in JWT_MODE) and access rules for the "staff" room.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import { io } from "socket.io-client";
import { URL, Client, eventually } from "./helpers.mjs";

const KEY = "test-key";
const SECRET = "test-secret-0123456789abcdef0123456789";
const MODE = process.env.JWT_MODE ?? "HS256";
const phase = (name, fn) => test(name, { skip: (process.env.PHASE ?? "api") !== name.split(":")[0] }, fn);

const b64 = (obj) => Buffer.from(typeof obj === "string" ? obj : JSON.stringify(obj)).toString("base64url");
export function sign(claims, { alg = MODE, key } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg, typ: "JWT" })}.${b64({ exp: now + 3600, ...claims })}`;
  if (alg === "none") return `${body}.`;
  if (alg === "HS256") return `${body}.${crypto.createHmac("sha256", key ?? SECRET).update(body).digest("base64url")}`;
  const pem = key ?? fs.readFileSync(new globalThis.URL("./es256-test-private.pem", import.meta.url));
  const sig = crypto.sign("sha256", Buffer.from(body), { key: pem, dsaEncoding: "ieee-p1363" });
  return `${body}.${sig.toString("base64url")}`;
}

async function connectToken(token) {
  const socket = io(URL, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true });
  const client = new Client(socket);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return client;
}
const refused = (token) => connectToken(token).then(
  (c) => { c.close(); throw new Error("connected with a bad token"); },
  (e) => e.message,
);

const api = (path, { method = "GET", body, key = KEY } = {}) =>
  fetch(`${URL}${path}`, {
    method,
    headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });

phase("api: trigger through the API reaches subscribers and history", async () => {
  const c = await connectToken(sign({ sub: "listener", role: "member" }));
  await c.waitFor("dialogue:joined", (j) => j.roomId === "general");
  const res = await api("/api/rooms/general/events/message", { method: "POST", body: { data: { text: "from the backend", username: "ops" }, from: "backend", meta: { source: "job" } } });
  assert.equal(res.status, 201);
  const stored = await res.json();
  assert.equal(stored.from, "backend");
  assert.equal(stored.roomId, "general");
  assert.deepEqual(stored.meta, { source: "job" });
  assert.ok(stored.seq >= 1);
  const got = await c.waitFor("dialogue:event", (e) => e.data.text === "from the backend");
  assert.deepEqual(got, stored);
  const page = await (await api("/api/rooms/general/history/message?start=0&end=5")).json();
  assert.equal(page.events[0].seq, stored.seq);
  const byCursor = await (await api(`/api/rooms/general/history/message?before=${stored.seq + 1}&limit=1`)).json();
  assert.deepEqual(byCursor.events[0], stored);
  c.close();
});

phase("api: errors are JSON with codes; missing or wrong key is 401", async () => {
  const bad = await api("/api/rooms/general/events/message", { method: "POST", body: { data: { text: "" } } });
  assert.equal(bad.status, 400);
  const err = await bad.json();
  assert.equal(err.code, "VALIDATION_FAILED");
  assert.match(err.message, /\/text/);
  assert.equal((await api("/api/rooms/nope/events/message", { method: "POST", body: { data: {} } })).status, 404);
  assert.equal((await (await api("/api/rooms/nope/events/message", { method: "POST", body: { data: {} } })).json()).code, "ROOM_NOT_FOUND");
  assert.equal((await api("/api/rooms/general/events/nope", { method: "POST", body: { data: {} } })).status, 404);
  assert.equal((await api("/api/rooms/general/events/message", { method: "POST", body: "{not json" })).status, 400);
  assert.equal((await api("/api/rooms/general/history/message?start=9&end=1")).status, 400);
  for (const key of [null, "wrong-key"]) {
    const r = await api("/api/rooms", { key });
    assert.equal(r.status, 401);
    assert.equal((await r.json()).code, "UNAUTHORIZED");
  }
});

phase("api: rooms created through the API are full rooms; delete persists", async () => {
  const created = await api("/api/rooms", { method: "POST", body: { id: "ops", name: "Ops", events: ["message"], syncHistoryOnJoin: 10, maxSize: 5 } });
  assert.equal(created.status, 201);
  assert.equal((await created.json()).maxSize, 5);
  assert.equal((await api("/api/rooms", { method: "POST", body: { id: "ops", name: "Again" } })).status, 409);
  const invalid = await api("/api/rooms", { method: "POST", body: { id: "bad", name: "Bad", events: ["nope"] } });
  assert.equal(invalid.status, 400);
  assert.match((await invalid.json()).message, /nope/);
  await api("/api/rooms/ops/events/message", { method: "POST", body: { data: { text: "t1", username: "x" } } });
  const c = await connectToken(sign({ sub: "ops-member", role: "member" }));
  assert.equal((await c.request("dialogue:join", { roomId: "ops" })).ok, true);
  const h = await c.waitFor("dialogue:history", (h) => h.roomId === "ops");
  assert.equal(h.events[0].data.text, "t1");
  const rooms = await (await api("/api/rooms")).json();
  assert.ok(rooms.some((r) => r.id === "ops" && r.size === 1));
  assert.equal((await api("/api/rooms/ops", { method: "DELETE" })).status, 200);
  await c.waitFor("dialogue:roomDeleted", (r) => r.roomId === "ops");
  assert.equal((await api("/api/rooms/ops", { method: "DELETE" })).status, 404);
  c.close();
});

phase("api: the OpenAPI document matches the routes", async () => {
  const doc = await (await fetch(`${URL}/api/openapi.json`)).json();
  assert.equal(doc.openapi.slice(0, 2), "3.");
  const expected = ["GET /api/rooms", "POST /api/rooms", "DELETE /api/rooms/{roomId}", "POST /api/rooms/{roomId}/events/{event}", "GET /api/rooms/{roomId}/history/{event}", "GET /api/rooms/{roomId}/presence", "GET /api/stats"];
  const documented = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`));
  assert.deepEqual(documented.sort(), expected.sort());
  await api("/api/rooms", { method: "POST", body: { id: "doc-room", name: "Doc" } });
  const bodies = { "POST /api/rooms": { id: "doc-room-2", name: "Doc 2" }, "POST /api/rooms/{roomId}/events/{event}": { data: { text: "doc", username: "d" } } };
  for (const op of documented) {
    const [method, path] = op.split(" ");
    const url = path.replace("{roomId}", method === "DELETE" ? "doc-room" : "general").replace("{event}", "message");
    const res = await api(url, { method, body: bodies[op] });
    const spec = doc.paths[path][method.toLowerCase()];
    assert.ok(Object.keys(spec.responses).includes(String(res.status)), `${op} answered ${res.status}, documented ${Object.keys(spec.responses)}`);
    assert.ok(res.status < 300, `${op} answered ${res.status}`);
    const unauth = await api(url, { method, body: bodies[op], key: null });
    assert.equal(unauth.status, 401, `${op} without a key`);
    assert.ok("401" in spec.responses);
  }
});

phase("api: JWT mode accepts a good token and refuses bad ones", async () => {
  const good = await connectToken(sign({ sub: "jwt-user", role: "member" }));
  const c = await good.waitFor("dialogue:connected");
  assert.equal(c.userId, "jwt-user");
  good.close();
  const now = Math.floor(Date.now() / 1000);
  assert.match(await refused(sign({ sub: "late", exp: now - 120 })), /invalid token.*xpired/i);
  const parts = sign({ sub: "mallory", role: "member" }).split(".");
  const tampered = `${parts[0]}.${b64({ sub: "mallory", role: "admin", exp: now + 3600 })}.${parts[2]}`;
  assert.match(await refused(tampered), /invalid token/);
  assert.match(await refused(sign({ sub: "nobody" }, { alg: "none" })), /invalid token/);
  const otherAlg = MODE === "HS256" ? sign({ sub: "x" }, { alg: "ES256" }) : sign({ sub: "x" }, { alg: "HS256" });
  assert.match(await refused(otherAlg), /invalid token/);
  if (MODE === "HS256") assert.match(await refused(sign({ sub: "x" }, { key: "another-secret" })), /invalid token/);
  assert.match(await refused("not.a.jwt"), /invalid token/);
  assert.match(await refused(undefined), /auth.token/);
  assert.match(await refused(sign({ role: "member" })), /invalid token/); // no sub
});

phase("api: bodies are bounded by limits.maxPayloadBytes, answered with the JSON error", async () => {
  // 300 KB of data is within the default 1,000,000-byte limit (the HTTP layer's own 256 KiB
  // default does not apply).
  const big = "x".repeat(300_000);
  const ok = await api("/api/rooms/lounge/events/message", { method: "POST", body: { data: { text: big, username: "ops" } } });
  assert.equal(ok.status, 201, await ok.clone().text().then((t) => t.slice(0, 200)));
  assert.equal((await ok.json()).data.text.length, 300_000);
  const huge = await api("/api/rooms/lounge/events/message", { method: "POST", body: { data: { text: "y".repeat(1_100_000), username: "ops" } } });
  assert.equal(huge.status, 413);
  const err = await huge.json();
  assert.equal(err.code, "PAYLOAD_TOO_LARGE");
  assert.equal(typeof err.message, "string");
  const room = await api("/api/rooms", { method: "POST", body: { id: "big-room", name: "n".repeat(70_000) } });
  assert.equal(room.status, 413);
  assert.equal((await room.json()).code, "PAYLOAD_TOO_LARGE");
});

phase("api: a deleted room's metric series are removed", async () => {
  const created = await api("/api/rooms", { method: "POST", body: { id: "ephemeral", name: "Ephemeral" } });
  assert.equal(created.status, 201);
  const sent = await api("/api/rooms/ephemeral/events/message", { method: "POST", body: { data: { text: "hi", username: "ops" } } });
  assert.equal(sent.status, 201);
  const metrics = async () => (await fetch(`${URL}/metrics`)).text();
  assert.match(await metrics(), /room="ephemeral"/);
  assert.equal((await api("/api/rooms/ephemeral", { method: "DELETE" })).status, 200);
  assert.doesNotMatch(await metrics(), /room="ephemeral"/);
});

phase("api: a token not valid yet (nbf) is refused", async () => {
  const now = Math.floor(Date.now() / 1000);
  assert.match(await refused(sign({ sub: "early", nbf: now + 3600 })), /invalid token.*mmature|invalid token/i);
  const ok = await connectToken(sign({ sub: "on-time", nbf: now - 60 }));
  await ok.waitFor("dialogue:connected");
  ok.close();
});

phase("api: the session ends when the token expires; a fresh token connects again", async () => {
  // exp is checked during the session too (after the 5 s clock-skew leeway): the client gets
  // PERMISSION_DENIED and a server disconnect, and does not reconnect by itself.
  const now = Math.floor(Date.now() / 1000);
  const c = await connectToken(sign({ sub: "short-lived", exp: now + 1 }));
  await c.waitFor("dialogue:connected");
  const reason = new Promise((resolve) => c.socket.once("disconnect", resolve));
  const err = await c.waitFor("dialogue:error", (e) => e.code === "PERMISSION_DENIED", 12_000);
  assert.match(err.message, /token expired/);
  assert.equal(await reason, "io server disconnect");
  // The same client, a fresh token: connected again.
  c.socket.auth = { token: sign({ sub: "short-lived" }) };
  c.socket.connect();
  await c.waitFor("dialogue:connected", (x) => x.userId === "short-lived", 5000);
  c.close();
});

phase("api: access rules allow and deny as configured", async () => {
  const guest = await connectToken(sign({ sub: "guest-1", role: "guest" }));
  const staff = await connectToken(sign({ sub: "staff-1", role: ["staff"] }));
  const admin = await connectToken(sign({ sub: "admin-1", role: "admin" }));
  const listed = await connectToken(sign({ sub: "friend", role: "guest" }));
  assert.equal((await guest.expectError("dialogue:join", { roomId: "staff" }, "JOIN_DENIED")).code, "JOIN_DENIED");
  assert.equal((await staff.request("dialogue:join", { roomId: "staff" })).ok, true);
  assert.equal((await admin.request("dialogue:join", { roomId: "staff" })).ok, true);
  assert.equal((await listed.request("dialogue:join", { roomId: "lounge" })).ok, true);
  await guest.expectError("dialogue:join", { roomId: "lounge" }, "JOIN_DENIED");
  await staff.expectError("dialogue:trigger", { roomId: "staff", event: "announcement", data: { text: "hi" } }, "PERMISSION_DENIED");
  assert.equal((await admin.request("dialogue:trigger", { roomId: "staff", event: "announcement", data: { text: "hi" } })).ok, true);
  assert.equal((await staff.request("dialogue:trigger", { roomId: "staff", event: "message", data: { text: "ok", username: "s" } })).ok, true);
  // Run-time rooms: staff or admin may create; creator or admin may delete.
  await guest.expectError("dialogue:createRoom", { id: "g-room", name: "G" }, "PERMISSION_DENIED");
  assert.equal((await staff.request("dialogue:createRoom", { id: "s-room", name: "S" })).ok, true);
  await guest.expectError("dialogue:deleteRoom", { roomId: "s-room" }, "PERMISSION_DENIED");
  assert.equal((await admin.request("dialogue:deleteRoom", { roomId: "s-room" })).ok, true);
  await staff.expectError("dialogue:deleteRoom", { roomId: "general" }, "PERMISSION_DENIED");
  [guest, staff, admin, listed].forEach((c) => c.close());
});

phase("api: /metrics counts what happened", async () => {
  const c = await connectToken(sign({ sub: "metered", role: "member" }));
  await c.waitFor("dialogue:joined");
  await c.request("dialogue:join", { roomId: "metered" });
  for (let i = 0; i < 7; i++) await c.request("dialogue:trigger", { roomId: "metered", event: "message", data: { text: `m${i}`, username: "m" } });
  await c.request("dialogue:trigger", { roomId: "metered", event: "message", data: { text: "" } });
  await c.request("dialogue:getHistory", { roomId: "metered", eventName: "message" });
  const text = await (await fetch(`${URL}/metrics`)).text();
  const value = (line) => Number(text.split("\n").find((l) => l.startsWith(line))?.split(" ").at(-1));
  assert.equal(value('dialogue_events_triggered_total{event="message",room="metered"}'), 7);
  assert.equal(value('dialogue_events_delivered_total{event="message",room="metered"}'), 7);
  assert.equal(value('dialogue_validation_failures_total{event="message",room="metered"}'), 1);
  assert.equal(value('dialogue_joins_total{room="metered"}'), 1);
  assert.ok(value("dialogue_connections") >= 1);
  assert.ok(value('dialogue_history_reads_total{source="memory"}') >= 1);
  assert.ok(text.includes("dialogue_fanout_seconds_bucket"));
  assert.ok(text.includes("dialogue_persist_backlog"));
  c.close();
  const ready = await fetch(`${URL}/readyz`);
  assert.equal(ready.status, 200);
  assert.equal((await ready.json()).ready, true);
  assert.equal((await fetch(`${URL}/healthz`)).status, 200);
});

phase("api: /api/stats shows each room's members, users, history depth and the latest errors", async () => {
  const stats = async () => (await api("/api/stats")).json();
  const staffOf = (s) => s.rooms.find((r) => r.id === "staff");
  const before = staffOf(await stats());
  const clients = await Promise.all(["stat-a", "stat-a", "stat-b"].map((sub) => connectToken(sign({ sub, role: "staff" }))));
  for (const c of clients) await c.request("dialogue:join", { roomId: "staff" });
  for (let i = 0; i < 3; i++) {
    const r = await api("/api/rooms/staff/events/message", { method: "POST", body: { data: { text: `s${i}`, username: "ops" } } });
    assert.equal(r.status, 201);
  }
  const bad = await clients[2].request("dialogue:trigger", { roomId: "staff", event: "message", data: { text: "" } });
  assert.equal(bad.code, "VALIDATION_FAILED");
  const s = await stats();
  const staff = staffOf(s);
  assert.equal(staff.members, before.members + 3, "three connections");
  assert.equal(staff.users, before.users + 2, "two users: the two tabs of stat-a count once");
  assert.equal(staff.published, before.published + 3);
  assert.equal(staff.delivered, before.delivered + 9, "3 events to 3 members");
  const message = staff.history.find((h) => h.event === "message");
  const was = before.history.find((h) => h.event === "message") ?? { lastSeq: 0, inMemory: 0 };
  assert.equal(message.lastSeq, was.lastSeq + 3);
  assert.equal(message.stored, message.lastSeq, "durability: stored — every acked event is in the database");
  assert.equal(message.inMemory, Math.min(100, was.inMemory + 3));
  assert.ok(s.connections >= 3);
  assert.deepEqual([s.database.backend, s.database.state, s.database.backlog], ["sqlite", "ok", 0]);
  const error = s.errors.find((e) => e.code === "VALIDATION_FAILED" && e.roomId === "staff");
  assert.ok(error, `a recent VALIDATION_FAILED in staff: ${JSON.stringify(s.errors)}`);
  assert.ok(Math.abs(error.at - Date.now()) < 60_000);
  assert.equal(s.series.intervalMs, 5000);
  for (const c of clients) c.close();
  await eventually(async () => staffOf(await stats()).members === before.members, 5000, "the members to be gone");
});

phase("off: with no key the API is off", async () => {
  const r = await api("/api/rooms");
  assert.equal(r.status, 404);
  assert.match((await r.json()).message, /api.keys|DIALOGUE_API_KEYS/);
});

phase("readyz: the database is down", async () => {
  await eventually(async () => (await fetch(`${URL}/readyz`)).status === 503, 15_000, "readyz 503");
  const body = await (await fetch(`${URL}/readyz`)).json();
  assert.equal(body.ready, false);
  assert.equal(body.database, "unavailable");
  assert.equal(body.roomsRestoring, 0);
  // A room created during the outage restores its stored history once the database is back;
  // until then readiness counts it.
  const created = await api("/api/rooms", { method: "POST", body: { id: "late", name: "Late", events: ["message"] } });
  assert.equal(created.status, 201);
  await eventually(async () => (await (await fetch(`${URL}/readyz`)).json()).roomsRestoring === 1, 15_000, "roomsRestoring 1");
});

phase("readyz-back: the database is back", async () => {
  await eventually(async () => (await fetch(`${URL}/readyz`)).status === 200, 20_000, "readyz 200");
  const body = await (await fetch(`${URL}/readyz`)).json();
  assert.equal(body.roomsRestoring, 0);
  assert.equal(body.database, "available");
});
