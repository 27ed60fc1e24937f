// Connection-state recovery with the stock socket.io-client (tests/recovery.rs): the CONNECT
// answer carries a pid, history events an offset; a session recovered after a lost transport
// gets back its identity, rooms (autoJoin ones too), subscriptions and what it missed —
// without asking, once, in order, before live events — and no join history again; a room left
// stays left; joining a restored room again is harmless.
// Configuration (RECOVERY in tests/recovery.rs): lobby (autoJoin: message), r1 (message, note,
// typing without history), r2 (message, note; note keeps a window of 5), r3 (message); every
// room syncs 10 events of history on join.
import { test } from "node:test";
import assert from "node:assert/strict";
import { eventually } from "./helpers.mjs";
import { rconnect, post, sleep } from "./recovery-helpers.mjs";

const isOffset = (args) => args.length >= 2 && typeof args.at(-1) === "string";

test("the CONNECT answer carries a pid; events of history types carry an offset", async () => {
  const a = await rconnect("pid-alice");
  assert.equal(typeof a.pid, "string", `pid in the CONNECT answer: ${JSON.stringify(a.connects)}`);
  assert.ok(a.pid.length > 0);
  assert.equal(a.socket.recovered, false, "a first connection is not a recovered one");
  assert.equal((await a.request("dialogue:join", { roomId: "r1" })).ok, true);
  const offsets = [];
  a.socket.on("dialogue:event", (msg, offset) => offsets.push({ seq: msg.seq, event: msg.event, offset }));
  const m = await post(a, "r1", "message", { text: "one" });
  const n = await post(a, "r1", "note", { text: "two" });
  await a.waitFor("dialogue:event", (e) => e.event === "note" && e.seq === n);
  for (const o of offsets) assert.equal(typeof o.offset, "string", `offset of ${JSON.stringify(o)}`);
  assert.deepEqual(offsets.map((o) => [o.event, o.seq]), [["message", m], ["note", n]]);
  // The client keeps the newest one, to present on its next reconnect.
  assert.equal(a.offset, offsets.at(-1).offset);
  // Two connections get two pids.
  const b = await rconnect("pid-bob");
  assert.notEqual(b.pid, a.pid);
  a.close();
  b.close();
});

test("a recovered session keeps identity, rooms, subscriptions and left rooms, and gets what it missed once, before live events", async () => {
  const bob = await rconnect("rec-bob");
  for (const r of ["r1", "r2", "r3"]) assert.equal((await bob.request("dialogue:join", { roomId: r })).ok, true);
  const early = await post(bob, "r1", "message", { text: "before alice" });

  const alice = await rconnect("rec-alice");
  const hello = await alice.waitFor("dialogue:connected");
  assert.equal(hello.userId, "rec-alice");
  await alice.waitFor("dialogue:joined", (j) => j.roomId === "lobby");
  for (const r of ["r1", "r2", "r3"]) {
    const ack = await alice.request("dialogue:join", { roomId: r });
    assert.equal(ack.ok, true, JSON.stringify(ack));
  }
  // A fresh join does send the join history (the control for "not again after recovery").
  const h1 = await alice.waitFor("dialogue:history", (h) => h.roomId === "r1");
  assert.ok(h1.events.some((e) => e.seq === early), JSON.stringify(h1));
  const unsub = await alice.request("dialogue:unsubscribe", { roomId: "r1", eventName: "note" });
  assert.equal(unsub.ok, true, JSON.stringify(unsub));
  assert.equal((await alice.request("dialogue:leave", { roomId: "r3" })).ok, true);

  // Live, before the cut: what alice gets (and does not get) now, she must get after too.
  const expected = { "r1/message": [], "r2/message": [], "r2/note": [], "lobby/message": [] };
  const push = (room, event, seq) => expected[`${room}/${event}`]?.push(seq);
  const send = async (room, event, tag) => {
    const seq = await post(bob, room, event, { tag });
    push(room, event, seq);
    return seq;
  };
  await send("r1", "message", "live-1");
  await send("r1", "note", "live-1"); // unsubscribed
  await send("r2", "message", "live-1");
  await send("r2", "note", "live-1");
  await send("r3", "message", "live-1"); // left
  const lobbyLive = await send("lobby", "message", "live-1");
  await alice.waitFor("dialogue:event", (e) => e.roomId === "lobby" && e.seq === lobbyLive);
  await sleep(200);
  assert.deepEqual(alice.seqs("r1", "note"), [], "unsubscribed before the cut");
  assert.deepEqual(alice.seqs("r3"), [], "left before the cut");
  const before = { pid: alice.pid, id: alice.socket.id, offset: alice.offset };
  assert.equal(typeof before.offset, "string", "alice holds an offset");

  // The transport goes away without a Socket.IO DISCONNECT; alice stays away meanwhile.
  await alice.cut({ reconnect: false });
  const cutAt = alice.log.length;
  const missed = {};
  const miss = async (room, event, n) => {
    for (let i = 0; i < n; i++) {
      const seq = await send(room, event, `missed-${i}`);
      (missed[`${room}/${event}`] ??= []).push(seq);
    }
  };
  await miss("r1", "message", 3);
  await miss("r1", "note", 2); // unsubscribed: not replayed
  await miss("r2", "message", 2);
  await miss("r2", "note", 8); // more than the window of 5: part of it from the database
  await miss("lobby", "message", 2); // autoJoin room
  await miss("r3", "message", 2); // left: not replayed

  const back = await alice.comeBack();
  assert.equal(back.recovered, true, `recovered after a lost transport: ${JSON.stringify(alice.connects)}`);
  assert.equal(back.pid, before.pid, "the same pid");

  // Live events right away, racing the replay (which reads part of r2/note from the
  // database), without any join: the rooms are hers; the identity is hers.
  await send("r1", "message", "after-1");
  await send("r1", "note", "after-1"); // still unsubscribed
  await send("r2", "note", "after-1");
  await send("r3", "message", "after-1"); // still left
  await send("lobby", "message", "after-1");
  const own = await alice.request("dialogue:trigger", { roomId: "r2", event: "message", data: { tag: "alice" } });
  assert.equal(own.ok, true, `alice is still in r2 without joining again: ${JSON.stringify(own)}`);
  push("r2", "message", own.seq);
  const ownEvent = await alice.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.event === "message" && e.seq === own.seq);
  assert.equal(ownEvent.from, "rec-alice", "the same identity");
  const left = await alice.request("dialogue:trigger", { roomId: "r3", event: "message", data: {} });
  assert.deepEqual([left.ok, left.code], [false, "NOT_IN_ROOM"], "r3 stays left");
  await eventually(
    () => Object.entries(expected).every(([k, seqs]) => alice.seqs(...k.split("/")).includes(seqs.at(-1))),
    10_000,
    `the replay and the live events; got ${JSON.stringify(alice.all("dialogue:event").map((e) => [e.roomId, e.event, e.seq]))}`,
  );
  await sleep(300);

  // Every subscribed event exactly once, in seq order; the unsubscribed and left ones never.
  for (const [k, seqs] of Object.entries(expected)) {
    const [room, event] = k.split("/");
    assert.deepEqual(alice.seqs(room, event), seqs, `${k}`);
  }
  assert.deepEqual(alice.seqs("r1", "note"), [], "r1/note stays unsubscribed");
  assert.deepEqual(alice.seqs("r3"), [], "r3 stays left");

  // Nothing re-sent for the restored rooms; replayed events carry offsets.
  const after = alice.log.slice(cutAt);
  const resent = after.filter((e) => ["dialogue:joined", "dialogue:history", "dialogue:left"].includes(e.event));
  assert.deepEqual(resent, [], "no joined/history/left for restored rooms");
  for (const c of after.filter((e) => e.event === "dialogue:connected")) {
    assert.equal(c.payload.userId, "rec-alice", "dialogue:connected after recovery names the same user");
  }
  assert.equal(alice.raw.length, alice.log.length);
  for (const r of alice.raw.slice(cutAt).filter((r) => r.event === "dialogue:event")) {
    assert.ok(isOffset(r.args), `offset on ${JSON.stringify(r.args)}`);
  }

  // The replay of a room comes before any live event of it.
  for (const room of ["r1", "r2", "lobby"]) {
    const arrivals = after.filter((e) => e.event === "dialogue:event" && e.payload.roomId === room);
    const isMissed = (e) => (missed[`${room}/${e.payload.event}`] ?? []).includes(e.payload.seq);
    const firstLive = arrivals.findIndex((e) => !isMissed(e));
    const lastMissed = arrivals.findLastIndex(isMissed);
    assert.ok(firstLive === -1 || lastMissed < firstLive, `${room}: ${JSON.stringify(arrivals.map((e) => [e.payload.event, e.payload.seq]))}`);
  }

  // Joining a restored room again: ack and dialogue:joined, but no history and no replay.
  const mark = alice.log.length;
  const again = await alice.request("dialogue:join", { roomId: "r1" });
  assert.equal(again.ok, true, JSON.stringify(again));
  assert.equal(again.roomId, "r1");
  await eventually(
    () => alice.log.slice(mark).some((e) => e.event === "dialogue:joined" && e.payload.roomId === "r1"),
    5000,
    "dialogue:joined for the second join",
  );
  await sleep(300);
  const sinceMark = alice.log.slice(mark);
  assert.deepEqual(sinceMark.filter((e) => e.event === "dialogue:history"), [], "no history for a second join");
  assert.deepEqual(sinceMark.filter((e) => e.event === "dialogue:event"), [], "no replay for a second join");
  // And live events still arrive once (not once per join).
  const once = await send("r1", "message", "after-join");
  await alice.waitFor("dialogue:event", (e) => e.roomId === "r1" && e.event === "message" && e.seq === once);
  await sleep(200);
  assert.deepEqual(alice.seqs("r1", "message"), expected["r1/message"]);

  console.log(`RESULT ${JSON.stringify({ test: "rooms", sameSocketId: alice.socket.id === before.id, connects: alice.connects })}`);
  alice.close();
  bob.close();
});

test("an automatic reconnection (engine closed under the client) recovers by itself", async () => {
  const writer = await rconnect("auto-writer");
  assert.equal((await writer.request("dialogue:join", { roomId: "r2" })).ok, true);
  const reader = await rconnect("auto-reader");
  assert.equal((await reader.request("dialogue:join", { roomId: "r2" })).ok, true);
  const sent = [];
  for (let round = 0; round < 3; round++) {
    sent.push(await post(writer, "r2", "note", { round }));
    await reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === sent.at(-1));
    const next = reader.nextConnect();
    reader.socket.io.engine.close(); // the client reconnects on its own
    for (let i = 0; i < 4; i++) sent.push(await post(writer, "r2", "note", { round, i }));
    const c = await next;
    assert.equal(c.recovered, true, `round ${round}: ${JSON.stringify(reader.connects)}`);
  }
  await reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.event === "note" && e.seq === sent.at(-1));
  await sleep(200);
  assert.deepEqual(reader.seqs("r2", "note"), sent);
  writer.close();
  reader.close();
});

test("a recovered session keeps its socket.id, and an anonymous client (no userId) recovers as the same user", async () => {
  const writer = await rconnect("id-writer");
  assert.equal((await writer.request("dialogue:join", { roomId: "r2" })).ok, true);
  for (const userId of ["id-reader", undefined]) {
    const reader = await rconnect(userId);
    const [hello] = reader.all("dialogue:connected");
    assert.equal(hello.clientId, reader.socket.id);
    assert.equal(hello.userId, userId ?? reader.socket.id, "anonymous: the socket id is the user");
    assert.equal((await reader.request("dialogue:join", { roomId: "r2" })).ok, true);
    const before = reader.socket.id;
    const next = reader.nextConnect();
    reader.socket.io.engine.close();
    const seq = await post(writer, "r2", "message", { for: userId ?? "anonymous" });
    const c = await next;
    assert.equal(c.recovered, true, JSON.stringify(reader.connects));
    assert.equal(reader.socket.id, before, "socket.id survives a recovery, as in Socket.IO");
    const again = reader.all("dialogue:connected").at(-1);
    assert.deepEqual([again.clientId, again.userId, again.recovered], [before, hello.userId, true]);
    await reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === seq);
    // Its triggers carry the same user as before.
    const mine = await post(reader, "r2", "message", { from: "reader" });
    const echoed = await reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === mine);
    assert.equal(echoed.from, hello.userId);
    reader.close();
  }
  writer.close();
});
