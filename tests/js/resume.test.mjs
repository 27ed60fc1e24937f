// Native resume (issue 12, part 1): `dialogue:join {roomId, since: {event: seq}}` replays
// exactly the events after the client's positions — from the window and from the database
// when older — in seq order, before any live event, then live events; no gap, no duplicate.
// Configuration (tests/resume.rs): `note` keeps a window of 5, `message` of 100;
// limits.maxResumeEvents: 40.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, sleep } from "./helpers.mjs";

const ROOM = "chat";
const seqsOf = (client, event) =>
  client.all("dialogue:event").filter((e) => e.roomId === ROOM && e.event === event).map((e) => e.seq);
const range = (lo, hi) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);

async function send(client, event, n) {
  const seqs = [];
  for (let i = 0; i < n; i++) {
    const r = await client.request("dialogue:trigger", { roomId: ROOM, event, data: { i } });
    assert.equal(r.ok, true, JSON.stringify(r));
    seqs.push(r.seq);
  }
  return seqs;
}

test("a rejoin with since gets exactly what it missed, from the window and the database, then live events", async () => {
  const writer = await connect("writer");
  assert.equal((await writer.request("dialogue:join", { roomId: ROOM })).ok, true);
  const reader = await connect("reader");
  assert.equal((await reader.request("dialogue:join", { roomId: ROOM })).ok, true);
  await send(writer, "note", 3);
  await send(writer, "message", 2);
  await sleep(100);
  const seen = { note: Math.max(...seqsOf(reader, "note")), message: Math.max(...seqsOf(reader, "message")) };
  reader.close();

  // Away: 12 notes (the window keeps 5, so 7 come from the database) and 4 messages.
  const notes = await send(writer, "note", 12);
  const messages = await send(writer, "message", 4);

  const back = await connect("reader");
  const ack = await back.request("dialogue:join", { roomId: ROOM, since: seen });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.deepEqual(ack.resume, { resumed: true, events: { note: 12, message: 4 } });
  // Replayed before the ack, in order, each once; no syncHistoryOnJoin history.
  assert.deepEqual(seqsOf(back, "note"), notes);
  assert.deepEqual(seqsOf(back, "message"), messages);
  assert.deepEqual(back.all("dialogue:history").filter((h) => h.roomId === ROOM), []);
  const order = back.log.map((e) => e.event);
  assert.ok(order.indexOf("dialogue:joined") < order.indexOf("dialogue:event"), JSON.stringify(order));

  // Live events follow without a gap.
  const live = await send(writer, "note", 2);
  await back.waitFor("dialogue:event", (e) => e.seq === live[1] && e.event === "note");
  assert.deepEqual(seqsOf(back, "note"), [...notes, ...live]);
  writer.close();
  back.close();
});

test("events triggered while a resume is being served are neither lost nor doubled", async () => {
  const writer = await connect("racer");
  assert.equal((await writer.request("dialogue:join", { roomId: ROOM })).ok, true);
  const before = await send(writer, "note", 1);
  // 30 notes in flight while the reader resumes from before them.
  const inFlight = [];
  for (let i = 0; i < 30; i++) {
    inFlight.push(writer.request("dialogue:trigger", { roomId: ROOM, event: "note", data: { i } }));
    if (i === 10) {
      const reader = await connect("late");
      const joining = reader.request("dialogue:join", { roomId: ROOM, since: { note: before[0] } });
      inFlight.push(joining.then((ack) => ({ reader, ack })));
    }
  }
  const results = await Promise.all(inFlight);
  const { reader, ack } = results.find((r) => r.reader);
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.resume.resumed, true, JSON.stringify(ack));
  const sent = results.filter((r) => r.seq).map((r) => r.seq);
  await reader.waitFor("dialogue:event", (e) => e.event === "note" && e.seq === Math.max(...sent));
  assert.deepEqual(seqsOf(reader, "note"), range(before[0] + 1, Math.max(...sent)));
  writer.close();
  reader.close();
});

test("too far behind, or a position the room never reached: the join succeeds and says why", async () => {
  const writer = await connect("far");
  assert.equal((await writer.request("dialogue:join", { roomId: ROOM })).ok, true);
  const last = (await send(writer, "message", 1))[0];
  const reader = await connect("far-reader");
  const far = await reader.request("dialogue:join", { roomId: ROOM, since: { message: 0, note: 0 } });
  assert.equal(far.ok, true, JSON.stringify(far));
  assert.equal(far.resume.resumed, false);
  assert.equal(far.resume.reason, "TOO_FAR_BEHIND");
  assert.match(far.resume.message, /maxResumeEvents/);
  assert.deepEqual(reader.all("dialogue:event"), [], "nothing replayed");
  assert.equal((await reader.request("dialogue:leave", { roomId: ROOM })).ok, true);

  const ahead = await reader.request("dialogue:join", { roomId: ROOM, since: { message: last + 1000 } });
  assert.equal(ahead.ok, true);
  assert.equal(ahead.resume.reason, "UNKNOWN_POSITION");
  // Still a member: live events arrive.
  const next = (await send(writer, "message", 1))[0];
  await reader.waitFor("dialogue:event", (e) => e.seq === next);

  // A bad since is refused before anything happens.
  const bad = await reader.request("dialogue:join", { roomId: ROOM, since: { message: -1 } });
  assert.deepEqual([bad.ok, bad.code], [false, "INVALID_REQUEST"]);
  writer.close();
  reader.close();
});

test("autoJoin rooms resume from the positions in the CONNECT auth", async () => {
  const LOBBY = "lobby";
  const lobbySeqs = (c) => c.all("dialogue:event").filter((e) => e.roomId === LOBBY).map((e) => e.seq);
  const writer = await connect("lobby-writer");
  await writer.waitFor("dialogue:joined", (j) => j.roomId === LOBBY);
  const post = async (n) => {
    const seqs = [];
    for (let i = 0; i < n; i++) {
      const r = await writer.request("dialogue:trigger", { roomId: LOBBY, event: "note", data: { i } });
      assert.equal(r.ok, true, JSON.stringify(r));
      seqs.push(r.seq);
    }
    return seqs;
  };
  const reader = await connect("lobby-reader");
  await reader.waitFor("dialogue:joined", (j) => j.roomId === LOBBY);
  const first = await post(3);
  await reader.waitFor("dialogue:event", (e) => e.roomId === LOBBY && e.seq === first[2]);
  reader.close();
  const missed = await post(8); // the window keeps 5: three come from the database

  const back = await connect(undefined, { auth: { userId: "lobby-reader", since: { [LOBBY]: { note: first[2] } } } });
  const joined = await back.waitFor("dialogue:joined", (j) => j.roomId === LOBBY);
  assert.deepEqual(joined.resume, { resumed: true, events: { note: 8 } });
  await back.waitFor("dialogue:event", (e) => e.roomId === LOBBY && e.seq === missed[7]);
  assert.deepEqual(lobbySeqs(back), missed);
  assert.deepEqual(back.all("dialogue:history").filter((h) => h.roomId === LOBBY), [], "no join history");

  // Without since: today's behaviour, the join history.
  const fresh = await connect("lobby-fresh");
  const history = await fresh.waitFor("dialogue:history", (h) => h.roomId === LOBBY);
  assert.ok(history.events.length > 0);

  // A malformed since is refused at CONNECT.
  await assert.rejects(connect(undefined, { auth: { userId: "bad", since: { [LOBBY]: { note: "x" } } } }), /auth\.since/);
  writer.close();
  back.close();
  fresh.close();
});
