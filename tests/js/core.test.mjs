// Core behaviour through the official socket.io-client over WebSocket. Run by
// tests/socketio.rs, which starts the server with the configuration these tests expect.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { URL, connect, rawSocket, eventually, sleep } from "./helpers.mjs";

const msg = (text, username = "tester") => ({ text, username });
const trigger = (c, roomId, event, data) =>
  c.request("dialogue:trigger", { roomId, event, data });

test("connect: dialogue:connected, autoJoin, history after joined", async () => {
  const a = await connect("alice");
  const connected = await a.waitFor("dialogue:connected");
  assert.equal(connected.userId, "alice");
  assert.equal(typeof connected.clientId, "string");
  const joined = await a.waitFor("dialogue:joined");
  assert.deepEqual(joined, { roomId: "general", roomName: "General Chat" });
  const history = await a.waitFor("dialogue:history");
  assert.equal(history.roomId, "general");
  assert.ok(Array.isArray(history.events));
  const order = a.log.map((e) => e.event);
  assert.ok(order.indexOf("dialogue:joined") < order.indexOf("dialogue:history"), order.join());
  a.close();

  const anon = await connect(undefined);
  const c = await anon.waitFor("dialogue:connected");
  assert.equal(c.userId, c.clientId, "without userId the connection id is the user id");
  anon.close();
});

test("error codes for unknown rooms, missing membership and bad requests", async () => {
  const a = await connect("alice");
  await a.waitFor("dialogue:joined");
  await a.expectError("dialogue:join", { roomId: "nope" }, "ROOM_NOT_FOUND");
  await a.expectError("dialogue:trigger", { roomId: "nope", event: "message", data: msg("x") }, "ROOM_NOT_FOUND");
  await a.expectError("dialogue:trigger", { roomId: "paging", event: "message", data: msg("x") }, "NOT_IN_ROOM");
  await a.expectError("dialogue:subscribe", { roomId: "paging", eventName: "message" }, "NOT_IN_ROOM");
  await a.expectError("dialogue:getHistory", { roomId: "paging", eventName: "message" }, "NOT_IN_ROOM");
  await a.expectError("dialogue:leave", { roomId: "paging" }, "NOT_IN_ROOM");
  await a.expectError("dialogue:join", { room: "general" }, "INVALID_REQUEST");
  await a.expectError("dialogue:join", "general", "INVALID_REQUEST");
  await a.expectError("dialogue:fly", { roomId: "general" }, "INVALID_REQUEST");
  await a.expectError("dialogue:trigger", { roomId: "general", event: "bogus", data: {} }, "EVENT_NOT_ALLOWED");
  await a.expectError("dialogue:subscribe", { roomId: "general", eventName: "bogus" }, "EVENT_NOT_ALLOWED");
  await a.expectError("dialogue:getHistory", { roomId: "general", eventName: "message", start: 10, end: 5 }, "INVALID_REQUEST");
  // Errors without an ack still arrive as dialogue:error.
  a.socket.emit("dialogue:join", { roomId: "still-nope" });
  const err = await a.waitFor("dialogue:error", (e) => e.message.includes("still-nope"));
  assert.equal(err.code, "ROOM_NOT_FOUND");
  // The connection is still up and working.
  const ok = await trigger(a, "general", "message", msg("after errors"));
  assert.equal(ok.ok, true);
  a.close();
});

test("delivery follows subscriptions, not the sender's wishes", async () => {
  const a = await connect("alice-sub");
  const b = await connect("bob-sub");
  await a.waitFor("dialogue:joined");
  await b.waitFor("dialogue:joined");

  // general subscribes members to `message` only (defaultSubscriptions).
  await trigger(a, "general", "typing", { on: 1 });
  await b.expectNone("dialogue:event", (e) => e.event === "typing");
  await a.expectNone("dialogue:event", (e) => e.event === "typing");

  assert.equal((await b.request("dialogue:subscribe", { roomId: "general", eventName: "typing" })).ok, true);
  await trigger(a, "general", "typing", { on: 2 });
  const t = await b.waitFor("dialogue:event", (e) => e.event === "typing");
  assert.deepEqual(t.data, { on: 2 });
  assert.equal(t.from, "alice-sub");
  await a.expectNone("dialogue:event", (e) => e.event === "typing");

  const sent = await trigger(a, "general", "message", msg("hello bob"));
  for (const c of [a, b]) {
    const e = await c.waitFor("dialogue:event", (e) => e.event === "message" && e.data.text === "hello bob");
    assert.equal(e.seq, sent.seq);
    assert.equal(e.roomId, "general");
    assert.equal(e.from, "alice-sub");
    assert.ok(Math.abs(e.timestamp - Date.now()) < 60_000, "timestamp in ms");
  }

  await b.request("dialogue:unsubscribe", { roomId: "general", eventName: "message" });
  await trigger(a, "general", "message", msg("not for bob"));
  await b.expectNone("dialogue:event", (e) => e.data?.text === "not for bob");

  await b.request("dialogue:subscribeAll", { roomId: "general" });
  await trigger(a, "general", "message", msg("for everyone"));
  await b.waitFor("dialogue:event", (e) => e.data?.text === "for everyone");

  const left = await b.request("dialogue:leave", { roomId: "general" });
  assert.equal(left.ok, true);
  await b.waitFor("dialogue:left", (e) => e.roomId === "general");
  await trigger(a, "general", "message", msg("bob left"));
  await b.expectNone("dialogue:event", (e) => e.data?.text === "bob left");
  a.close();
  b.close();
});

test("validation failures name the JSON pointer and store nothing", async () => {
  const a = await connect("alice-val");
  await a.waitFor("dialogue:joined");
  const first = await trigger(a, "general", "message", msg("valid"));
  const bad = await a.expectError("dialogue:trigger", { roomId: "general", event: "message", data: { text: "", username: 5 } }, "VALIDATION_FAILED");
  assert.match(bad.message, /\/text/);
  assert.match(bad.message, /\/username/);
  const missing = await a.expectError("dialogue:trigger", { roomId: "general", event: "message", data: { text: "x" } }, "VALIDATION_FAILED");
  assert.match(missing.message, /username/);
  const next = await trigger(a, "general", "message", msg("valid again"));
  assert.equal(next.seq, first.seq + 1, "refused events take no seq");
  a.close();
});

test('"*" rooms accept any event; [] rooms accept none', async () => {
  const a = await connect("alice-star");
  const b = await connect("bob-star");
  for (const c of [a, b]) assert.equal((await c.request("dialogue:join", { roomId: "lobby" })).ok, true);
  const r = await trigger(a, "lobby", "anything:goes", [1, "two"]);
  assert.equal(r.ok, true);
  assert.equal(r.seq, 1);
  const e = await b.waitFor("dialogue:event", (e) => e.roomId === "lobby");
  assert.equal(e.event, "anything:goes");
  assert.deepEqual(e.data, [1, "two"]);
  // A declared event keeps its schema even in a "*" room.
  await a.expectError("dialogue:trigger", { roomId: "lobby", event: "message", data: { text: 1 } }, "VALIDATION_FAILED");

  assert.equal((await a.request("dialogue:join", { roomId: "readonly" })).ok, true);
  await a.expectError("dialogue:trigger", { roomId: "readonly", event: "message", data: msg("x") }, "EVENT_NOT_ALLOWED");
  a.close();
  b.close();
});

test("maxSize refuses the member past the limit with ROOM_FULL", async () => {
  const cs = [await connect("t1"), await connect("t2"), await connect("t3")];
  assert.equal((await cs[0].request("dialogue:join", { roomId: "tiny" })).ok, true);
  assert.equal((await cs[1].request("dialogue:join", { roomId: "tiny" })).ok, true);
  await cs[2].expectError("dialogue:join", { roomId: "tiny" }, "ROOM_FULL");
  await cs[0].request("dialogue:leave", { roomId: "tiny" });
  assert.equal((await cs[2].request("dialogue:join", { roomId: "tiny" })).ok, true);
  cs.forEach((c) => c.close());
});

test("history pages from memory: newest first, contiguous seq, offsets and cursor", async () => {
  const a = await connect("pager");
  await a.request("dialogue:join", { roomId: "paging" });
  for (let i = 1; i <= 60; i++) {
    const r = await trigger(a, "paging", "message", msg(`m${i}`));
    assert.equal(r.seq, i);
  }
  const seqs = (page) => page.events.map((e) => e.seq);
  const range = (hi, lo) => Array.from({ length: hi - lo + 1 }, (_, i) => hi - i);

  const p1 = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message", start: 0, end: 20 });
  assert.equal(p1.ok, true);
  assert.deepEqual(seqs(p1), range(60, 41));
  assert.equal(p1.events[0].data.text, "m60");
  assert.equal(p1.hasMore, true);
  const resp = await a.waitFor("dialogue:historyResponse", (r) => r.start === 0 && r.end === 20);
  assert.deepEqual(seqs(resp), range(60, 41));
  assert.equal(resp.eventName, "message");

  const p2 = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message", start: 20, end: 40 });
  assert.deepEqual(seqs(p2), range(40, 21));
  const p3 = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message", start: 40, end: 60 });
  assert.deepEqual(seqs(p3), range(20, 1));
  assert.equal(p3.hasMore, false);
  const beyond = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message", start: 60, end: 80 });
  assert.deepEqual(beyond.events, []);

  const dflt = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message" });
  assert.deepEqual(seqs(dflt), range(60, 11), "default page is 50");

  const c1 = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message", before: 41, limit: 20 });
  assert.deepEqual(seqs(c1), range(40, 21));
  assert.equal(c1.hasMore, true);
  const c2 = await a.request("dialogue:getHistory", { roomId: "paging", eventName: "message", before: 21, limit: 30 });
  assert.deepEqual(seqs(c2), range(20, 1));
  assert.equal(c2.hasMore, false);
  a.close();
});

test("syncHistoryOnJoin sends the newest N per event right after joined", async () => {
  const a = await connect("syncer");
  await a.request("dialogue:join", { roomId: "sync" });
  for (let i = 1; i <= 8; i++) await trigger(a, "sync", "message", msg(`s${i}`));
  for (let i = 1; i <= 3; i++) await trigger(a, "sync", "note", { n: i });

  const b = await connect("late");
  await b.request("dialogue:join", { roomId: "sync" });
  const joinedAt = b.log.findIndex((e) => e.event === "dialogue:joined" && e.payload.roomId === "sync");
  const h = await b.waitFor("dialogue:history", (h) => h.roomId === "sync");
  const historyAt = b.log.findIndex((e) => e.event === "dialogue:history" && e.payload.roomId === "sync");
  assert.ok(joinedAt >= 0 && joinedAt < historyAt);
  const messages = h.events.filter((e) => e.event === "message").map((e) => e.seq);
  const notes = h.events.filter((e) => e.event === "note").map((e) => e.seq);
  assert.deepEqual(messages, [8, 7, 6, 5, 4]);
  assert.deepEqual(notes, [3, 2, 1]);
  const stamps = h.events.map((e) => e.timestamp);
  assert.deepEqual(stamps, [...stamps].sort((x, y) => y - x), "newest first");
  a.close();
  b.close();
});

test("two connections of one user are independent members", async () => {
  const a1 = await connect("alice-two");
  const a2 = await connect("alice-two");
  const bob = await connect("bob-two");
  for (const c of [a1, a2, bob]) await c.waitFor("dialogue:joined");
  await trigger(bob, "general", "message", msg("to both"));
  await a1.waitFor("dialogue:event", (e) => e.data.text === "to both");
  await a2.waitFor("dialogue:event", (e) => e.data.text === "to both");
  await a1.request("dialogue:leave", { roomId: "general" });
  await trigger(bob, "general", "message", msg("to one"));
  await a2.waitFor("dialogue:event", (e) => e.data.text === "to one");
  await a1.expectNone("dialogue:event", (e) => e.data.text === "to one");
  // a2 may still trigger: leaving is per connection.
  assert.equal((await trigger(a2, "general", "message", msg("still here"))).ok, true);
  [a1, a2, bob].forEach((c) => c.close());
});

test("a namespace other than / gets CONNECT_ERROR", async () => {
  const s = io(URL + "/admin", { transports: ["websocket"], reconnection: false, forceNew: true });
  const err = await new Promise((resolve) => s.once("connect_error", resolve));
  assert.match(err.message, /Invalid namespace/);
  s.close();
});

test("protocol violations close only that connection", async () => {
  const good = await connect("bystander");
  await good.waitFor("dialogue:joined");
  const abuse = [
    ["40", '42{"not":"an array"}'],
    ["40", "4garbage"],
    ["40", "9"],
    ["40", '42["x"'],
    ['42["dialogue:listRooms"]'], // event before CONNECT
    ["40", "42[]"],
  ];
  for (const frames of abuse) {
    const raw = rawSocket();
    await raw.opened;
    await eventually(() => raw.frames.length > 0, 5000, "open packet");
    const open = JSON.parse(raw.frames[0].slice(1));
    assert.equal(typeof open.sid, "string");
    assert.deepEqual(open.upgrades, []);
    assert.equal(typeof open.pingInterval, "number");
    for (const f of frames) raw.ws.send(f);
    const code = await raw.closed;
    assert.ok(code === 1002 || code === 1000, `closed with ${code} after ${frames}`);
  }
  // The server and the other client carry on.
  const r = await trigger(good, "general", "message", msg("still fine"));
  assert.equal(r.ok, true);
  await good.waitFor("dialogue:event", (e) => e.data.text === "still fine");
  good.close();
});

test("oversized payloads: PAYLOAD_TOO_LARGE for data, closed connection for frames", async () => {
  const a = await connect("big");
  await a.request("dialogue:join", { roomId: "lobby" });
  await a.expectError("dialogue:trigger", { roomId: "lobby", event: "blob", data: "x".repeat(5000) }, "PAYLOAD_TOO_LARGE");
  assert.equal((await trigger(a, "lobby", "blob", "small")).ok, true);

  const raw = rawSocket();
  await raw.opened;
  raw.ws.send("40");
  raw.ws.send(`42["dialogue:trigger",{"roomId":"lobby","event":"blob","data":"${"y".repeat(150000)}"}]`);
  const code = await raw.closed;
  assert.equal(code, 1009, "message too big");
  assert.equal((await trigger(a, "lobby", "blob", "after")).ok, true);
  a.close();
});

test("rooms: list, create, announce, delete with permissions", async () => {
  const a = await connect("creator");
  const b = await connect("other");
  // Both are members of the autoJoin room once b's join is confirmed (a's precedes its request).
  await b.waitFor("dialogue:joined", (j) => j.roomId === "general");
  const list = await a.request("dialogue:listRooms");
  const general = list.rooms.find((r) => r.id === "general");
  assert.equal(general.name, "General Chat");
  assert.ok(general.size >= 2);
  await a.waitFor("dialogue:rooms");

  const created = await a.request("dialogue:createRoom", { id: "made", name: "Made Here", maxSize: 10 });
  assert.equal(created.ok, true);
  assert.equal(created.id, "made");
  assert.equal(created.createdBy, "creator");
  assert.equal(created.createdById, "creator", "the field the dialogue-ts client reads");
  const announced = await b.waitFor("dialogue:roomCreated", (r) => r.id === "made");
  assert.equal(announced.name, "Made Here");
  await a.expectError("dialogue:createRoom", { id: "made", name: "Again" }, "ROOM_EXISTS");
  await a.expectError("dialogue:createRoom", { id: "", name: "Empty" }, "INVALID_REQUEST");

  await b.request("dialogue:join", { roomId: "made" });
  assert.equal((await trigger(b, "made", "message", msg("in made"))).seq, 1);
  await b.expectError("dialogue:deleteRoom", { roomId: "made" }, "PERMISSION_DENIED");
  await a.expectError("dialogue:deleteRoom", { roomId: "general" }, "PERMISSION_DENIED");
  await a.expectError("dialogue:deleteRoom", { roomId: "ghost" }, "ROOM_NOT_FOUND");
  assert.equal((await a.request("dialogue:deleteRoom", { roomId: "made" })).ok, true);
  await b.waitFor("dialogue:roomDeleted", (r) => r.roomId === "made");
  await b.expectError("dialogue:trigger", { roomId: "made", event: "message", data: msg("x") }, "ROOM_NOT_FOUND");
  const after = await a.request("dialogue:listRooms");
  assert.equal(after.rooms.some((r) => r.id === "made"), false);
  a.close();
  b.close();
});

test("triggers sent without waiting: one answer each, in order; none lost when the room goes", async () => {
  const a = await connect("piper");
  await a.waitFor("dialogue:joined", (j) => j.roomId === "general");
  assert.equal((await a.request("dialogue:createRoom", { id: "pipe", name: "Pipe" })).ok, true);
  assert.equal((await a.request("dialogue:join", { roomId: "pipe" })).ok, true);
  // 100 triggers, the deletion, 100 more, all sent at once: the first 100 are numbered in
  // the order sent, the later ones find no room, and every one is answered exactly once.
  const before = Array.from({ length: 100 }, (_, i) => trigger(a, "pipe", "message", msg(`b${i}`)));
  const deleted = a.request("dialogue:deleteRoom", { roomId: "pipe" });
  const after = Array.from({ length: 100 }, (_, i) => trigger(a, "pipe", "message", msg(`a${i}`)));
  const answers = await Promise.all(before);
  assert.deepEqual(answers.map((r) => r.seq), Array.from({ length: 100 }, (_, i) => i + 1));
  assert.equal((await deleted).ok, true);
  for (const r of await Promise.all(after)) {
    assert.deepEqual([r.ok, r.code], [false, "ROOM_NOT_FOUND"]);
  }
  const events = a.all("dialogue:event").filter((e) => e.roomId === "pipe");
  assert.deepEqual(events.map((e) => e.data.text), Array.from({ length: 100 }, (_, i) => `b${i}`));
  const errors = a.all("dialogue:error").filter((e) => e.code === "ROOM_NOT_FOUND");
  assert.equal(errors.length, 100, "each refused trigger also gets dialogue:error");
  a.close();
});

test("a client that stops reading is disconnected; the room carries on", async () => {
  const fast = await connect("fast");
  await fast.request("dialogue:join", { roomId: "flood" });
  const raw = rawSocket();
  await raw.opened;
  raw.ws.send("40");
  raw.ws.send('421["dialogue:join",{"roomId":"flood"}]');
  await eventually(() => raw.frames.some((f) => f.startsWith("431")), 5000, "slow client joined");
  raw.ws._socket.pause(); // stop reading: the server's queue for it grows

  const size = async () => (await fast.request("dialogue:listRooms")).rooms.find((r) => r.id === "flood").size;
  assert.equal(await size(), 2);
  const text = "z".repeat(1900);
  let sent = 0;
  const deadline = Date.now() + 60_000;
  while ((await size()) === 2 && Date.now() < deadline) {
    // Pipelined: the server answers them in order without a round trip each.
    const batch = Array.from({ length: 200 }, () => trigger(fast, "flood", "message", msg(text)));
    sent += (await Promise.all(batch)).filter((r) => r.ok).length;
  }
  assert.equal(await size(), 1, "the slow member was dropped");
  // The fast member received every event, in order, none missing.
  await eventually(() => fast.all("dialogue:event").filter((e) => e.roomId === "flood").length === sent, 10_000, "all deliveries");
  const seqs = fast.all("dialogue:event").filter((e) => e.roomId === "flood").map((e) => e.seq);
  assert.deepEqual(seqs, Array.from({ length: sent }, (_, i) => i + 1));
  raw.ws.terminate();
  fast.close();
});
