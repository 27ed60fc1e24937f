// Presence (tests/presence.rs): who is in a room, once per user however many connections
// ("tabs") it has; join and leave notices in `presence: true` rooms, batched, and none above
// limits.presenceMaxMembers (5 connections here); the same over the HTTP API.
import { test } from "node:test";
import assert from "node:assert/strict";
import { URL, connect, sleep } from "./helpers.mjs";

const KEY = "presence-key-0123456789";
const join = async (c, roomId) => assert.equal((await c.request("dialogue:join", { roomId })).ok, true);
const presence = async (c, roomId) => {
  const r = await c.request("dialogue:presence", { roomId });
  assert.equal(r.ok, true, JSON.stringify(r));
  return r;
};
const members = (r) => Object.fromEntries(r.members.map((m) => [m.userId, m.connections]));

test("two tabs of one user count once; notices when a user comes and when its last tab goes", async () => {
  const bob = await connect("p-bob");
  await join(bob, "chat");
  await bob.waitFor("dialogue:memberJoined", (e) => e.roomId === "chat" && e.userIds.includes("p-bob"));
  const tab1 = await connect("p-alice");
  await join(tab1, "chat");
  const came = await bob.waitFor("dialogue:memberJoined", (e) => e.roomId === "chat" && e.userIds.includes("p-alice"));
  assert.deepEqual(came.userIds, ["p-alice"]);
  const tab2 = await connect("p-alice");
  await join(tab2, "chat");
  let now = await presence(bob, "chat");
  assert.deepEqual(members(now), { "p-alice": 2, "p-bob": 1 });
  assert.equal(now.users, 2);
  // The event carries the same answer as the ack.
  const pushed = await bob.waitFor("dialogue:presence", (e) => e.roomId === "chat");
  assert.deepEqual(pushed.members, now.members);

  assert.equal((await tab1.request("dialogue:leave", { roomId: "chat" })).ok, true);
  await bob.expectNone("dialogue:memberLeft", (e) => e.userIds.includes("p-alice"), 300);
  assert.equal(bob.all("dialogue:memberJoined").filter((e) => e.userIds.includes("p-alice")).length, 1, "the second tab was no news");
  now = await presence(bob, "chat");
  assert.deepEqual(members(now), { "p-alice": 1, "p-bob": 1 });

  tab2.close(); // the last tab goes: alice left
  const went = await bob.waitFor("dialogue:memberLeft", (e) => e.roomId === "chat" && e.userIds.includes("p-alice"));
  assert.deepEqual(went.userIds, ["p-alice"]);
  now = await presence(bob, "chat");
  assert.deepEqual(members(now), { "p-bob": 1 });
  tab1.close();
  bob.close();
});

test("a user who comes and goes within one batch is no news; several arrivals share one notice", async () => {
  const watcher = await connect("p-watch");
  await join(watcher, "chat");
  await sleep(200);
  const blink = await connect("p-blink");
  await join(blink, "chat");
  blink.close();
  const crowd = await Promise.all(["p-c1", "p-c2", "p-c3"].map((u) => connect(u)));
  await Promise.all(crowd.map((c) => join(c, "chat")));
  const notice = await watcher.waitFor("dialogue:memberJoined", (e) => e.userIds.includes("p-c3"));
  assert.ok(notice.userIds.length >= 1);
  await sleep(300);
  const arrivals = watcher.all("dialogue:memberJoined").flatMap((e) => e.userIds);
  for (const u of ["p-c1", "p-c2", "p-c3"]) assert.equal(arrivals.filter((x) => x === u).length, 1, `${u} once`);
  const blinked = arrivals.filter((x) => x === "p-blink").length - watcher.all("dialogue:memberLeft").flatMap((e) => e.userIds).filter((x) => x === "p-blink").length;
  assert.equal(blinked, 0, "a blink leaves no one behind");
  assert.ok(watcher.all("dialogue:memberJoined").length < 4, "batched, not one notice per user");
  for (const c of crowd) c.close();
  watcher.close();
});

test("presence is for members; a room without presence answers but sends no notices", async () => {
  const out = await connect("p-out");
  const r = await out.request("dialogue:presence", { roomId: "chat" });
  assert.equal(r.code, "NOT_IN_ROOM", JSON.stringify(r));
  const missing = await out.request("dialogue:presence", { roomId: "nowhere" });
  assert.equal(missing.code, "ROOM_NOT_FOUND");
  const a = await connect("p-q1");
  await join(a, "quiet");
  const b = await connect("p-q2");
  await join(b, "quiet");
  await a.expectNone("dialogue:memberJoined", () => true, 300);
  assert.deepEqual(members(await presence(a, "quiet")), { "p-q1": 1, "p-q2": 1 });
  for (const c of [out, a, b]) c.close();
});

test("no notices above limits.presenceMaxMembers (5 connections here)", async () => {
  const many = [];
  for (const u of ["p-b1", "p-b2"]) {
    const c = await connect(u);
    await join(c, "big");
    many.push(c);
  }
  const first = many[0];
  await first.waitFor("dialogue:memberJoined", (e) => e.roomId === "big" && e.userIds.includes("p-b2"));
  for (const u of ["p-b3", "p-b4", "p-b5", "p-b6"]) {
    const c = await connect(u);
    await join(c, "big");
    many.push(c);
  }
  await sleep(300);
  const seen = first.all("dialogue:memberJoined").flatMap((e) => e.userIds);
  assert.ok(!seen.includes("p-b6"), `the sixth member was announced: ${JSON.stringify(seen)}`);
  assert.equal((await presence(first, "big")).users, 6, "presence still answers");
  for (const c of many) c.close();
});

test("GET /api/rooms/{roomId}/presence", async () => {
  const c = await connect("p-api");
  await join(c, "chat");
  const res = await fetch(`${URL}/api/rooms/chat/presence`, { headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(members(body)["p-api"], 1);
  assert.equal((await fetch(`${URL}/api/rooms/chat/presence`)).status, 401);
  const gone = await fetch(`${URL}/api/rooms/nowhere/presence`, { headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(gone.status, 404);
  assert.equal((await gone.json()).code, "ROOM_NOT_FOUND");
  c.close();
});

test("a room created at run time with presence: true sends notices (without, none)", async () => {
  const a = await connect("p-maker");
  const made = await a.request("dialogue:createRoom", { id: "made-presence", name: "Made", presence: true });
  assert.equal(made.ok, true, JSON.stringify(made));
  await a.request("dialogue:createRoom", { id: "made-quiet", name: "Quiet" });
  const api = await fetch(`${URL}/api/rooms`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ id: "api-presence", name: "API", presence: true }),
  });
  assert.equal(api.status, 201);
  for (const room of ["made-presence", "made-quiet", "api-presence"]) await join(a, room);
  const b = await connect("p-visitor");
  for (const room of ["made-presence", "made-quiet", "api-presence"]) await join(b, room);
  for (const room of ["made-presence", "api-presence"]) {
    await a.waitFor("dialogue:memberJoined", (e) => e.roomId === room && e.userIds.includes("p-visitor"));
  }
  await a.expectNone("dialogue:memberJoined", (e) => e.roomId === "made-quiet", 300);
  b.close();
  await a.waitFor("dialogue:memberLeft", (e) => e.roomId === "made-presence" && e.userIds.includes("p-visitor"));
  a.close();
});
