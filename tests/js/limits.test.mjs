// Per-connection rate limits (triggersPerSecond: 5, historyRequestsPerMinute: 3) and the bounds
// on rooms created at run time (roomsPerMinute: 2, maxRuntimeRooms: 3, maxRoomNameBytes: 20,
// maxRoomDescriptionBytes: 50), and on the event names of a "*" room (maxEventTypesPerRoom: 3,
// one of them the declared history event `message`, known from the start).
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, sleep } from "./helpers.mjs";

test("trigger and history rates are limited per connection with RATE_LIMITED", async () => {
  const a = await connect("hasty");
  await a.waitFor("dialogue:joined");
  const results = [];
  for (let i = 0; i < 12; i++) {
    results.push(await a.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `r${i}`, username: "h" } }));
  }
  const ok = results.filter((r) => r.ok).length;
  const limited = results.filter((r) => !r.ok && r.code === "RATE_LIMITED").length;
  assert.ok(ok >= 5 && ok <= 7, `ok=${ok}`);
  assert.equal(ok + limited, 12);
  await a.waitFor("dialogue:error", (e) => e.code === "RATE_LIMITED");

  // Another connection has its own budget.
  const b = await connect("patient");
  await b.waitFor("dialogue:joined");
  const r = await b.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: "mine", username: "p" } });
  assert.equal(r.ok, true);

  const reads = [];
  for (let i = 0; i < 5; i++) reads.push(await a.request("dialogue:getHistory", { roomId: "general", eventName: "message" }));
  assert.deepEqual(reads.map((r) => r.ok), [true, true, true, false, false]);
  assert.equal(reads[3].code, "RATE_LIMITED");
  a.close();
  b.close();
});

test("rooms created at run time: bounded names and descriptions, a rate per user, a global cap", async () => {
  const a = await connect("builder");
  const b = await connect("other-builder");
  const create = (c, id, extra = {}) => c.request("dialogue:createRoom", { id, name: `Room ${id}`, ...extra });

  // Long names and descriptions are refused before anything is created or announced.
  const longName = await create(a, "r-name", { name: "n".repeat(21) });
  assert.deepEqual([longName.ok, longName.code], [false, "INVALID_REQUEST"]);
  assert.match(longName.message, /maxRoomNameBytes/);
  const longText = await create(a, "r-desc", { description: "d".repeat(51) });
  assert.deepEqual([longText.ok, longText.code], [false, "INVALID_REQUEST"]);
  await b.expectNone("dialogue:roomCreated", () => true, 200);

  // Two per user per minute.
  assert.equal((await create(a, "a1")).ok, true);
  assert.equal((await create(a, "a2")).ok, true);
  const third = await create(a, "a3");
  assert.deepEqual([third.ok, third.code], [false, "RATE_LIMITED"]);
  assert.match(third.message, /roomsPerMinute/);

  // Three in all: another user gets one more, then the cap.
  assert.equal((await create(b, "b1")).ok, true);
  const capped = await create(b, "b2");
  assert.deepEqual([capped.ok, capped.code], [false, "RATE_LIMITED"]);
  assert.match(capped.message, /maxRuntimeRooms/);
  // Deleting one makes room for another.
  assert.equal((await b.request("dialogue:deleteRoom", { roomId: "b1" })).ok, true);
  assert.equal((await create(b, "b2")).ok, true);
  a.close();
  b.close();
});

test('"*" rooms: a name takes a place only once a trigger of it was accepted; the count is capped', async () => {
  const c = await connect("namer");
  assert.equal((await c.request("dialogue:join", { roomId: "open" })).ok, true);
  const send = (event) => c.request("dialogue:trigger", { roomId: "open", event, data: {} });
  // Refused by the access rules (the hooks): these names take no place.
  for (const event of ["secret1", "secret2"]) {
    const r = await send(event);
    assert.deepEqual([r.ok, r.code], [false, "PERMISSION_DENIED"]);
  }
  assert.equal((await send("first")).ok, true);
  assert.equal((await send("second")).ok, true);
  await sleep(1100); // triggersPerSecond: 5 — let the budget refill
  assert.equal((await send("first")).ok, true, "known names go on");
  const third = await send("third");
  assert.deepEqual([third.ok, third.code], [false, "EVENT_NOT_ALLOWED"]);
  assert.match(third.message, /maxEventTypesPerRoom/);
  c.close();
});
