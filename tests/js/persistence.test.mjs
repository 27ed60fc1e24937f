// Persistent history scenarios, one per PHASE (set by tests/persistence.rs, which restarts
// the server and inspects the database between phases). Results go back as `RESULT {json}`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, sleep } from "./helpers.mjs";

const ROOM = "hist";
const phase = (name, fn) => test(name, { skip: process.env.PHASE !== name }, fn);
const result = (value) => console.log(`RESULT ${JSON.stringify(value)}`);
const msg = (i) => ({ text: `m${i}`, username: "p" });
const trigger = (c, i) => c.request("dialogue:trigger", { roomId: ROOM, event: "message", data: msg(i) });
const history = (c, range) => c.request("dialogue:getHistory", { roomId: ROOM, eventName: "message", ...range });
const desc = (hi, lo) => Array.from({ length: hi - lo + 1 }, (_, i) => hi - i);

async function fill(c, from, to) {
  for (let i = from; i <= to; i++) {
    const r = await trigger(c, i);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.seq, i);
  }
}

/** Pages back by cursor from `before` to the first event; returns every seq seen. */
async function scrollByCursor(c, before, limit = 20) {
  const seqs = [];
  for (let guard = 0; guard < 10_000; guard++) {
    const page = await history(c, { before, limit });
    assert.equal(page.ok, true, JSON.stringify(page));
    seqs.push(...page.events.map((e) => e.seq));
    if (!page.hasMore) break;
    before = page.events.at(-1).seq;
  }
  return seqs;
}

async function joined(userId) {
  const c = await connect(userId);
  assert.equal((await c.request("dialogue:join", { roomId: ROOM })).ok, true);
  return c;
}

phase("thousand", async () => {
  const c = await joined("writer");
  await fill(c, 1, 1000);
  const byOffsets = [];
  for (let start = 0; start < 1000; start += 20) {
    const page = await history(c, { start, end: start + 20 });
    assert.equal(page.events.length, 20, `page at ${start}`);
    assert.equal(page.hasMore, start + 20 < 1000);
    byOffsets.push(...page.events.map((e) => e.seq));
  }
  assert.deepEqual(byOffsets, desc(1000, 1), "offsets: every seq once, newest first");
  const seam = await history(c, { start: 90, end: 110 });
  assert.deepEqual(seam.events.map((e) => e.seq), desc(910, 891), "across the memory/database seam");
  assert.equal(seam.events[0].data.text, "m910");
  assert.equal(seam.events.at(-1).from, "writer");
  const byCursor = await scrollByCursor(c, 1001);
  assert.deepEqual(byCursor, desc(1000, 1), "cursor: every seq once, newest first");
  c.close();
});

phase("concurrent", async () => {
  const writer = await joined("writer");
  await fill(writer, 1, 300);
  const reader = await joined("reader");
  let stop = false;
  let written = 300;
  const writing = (async () => {
    while (!stop) {
      const r = await trigger(writer, written + 1);
      assert.equal(r.ok, true);
      written = r.seq;
    }
  })();
  const seqs = await scrollByCursor(reader, 301, 7);
  stop = true;
  await writing;
  assert.ok(written > 300, "events kept arriving while paging");
  assert.deepEqual(seqs, desc(300, 1), "no gap, no duplicate");
  result({ written });
  writer.close();
  reader.close();
});

phase("fill150", async () => {
  const c = await joined("before-restart");
  await fill(c, 1, 150);
  c.close();
});

phase("after-restart", async () => {
  const c = await connect("after-restart");
  await c.request("dialogue:join", { roomId: ROOM });
  const h = await c.waitFor("dialogue:history", (h) => h.roomId === ROOM);
  assert.deepEqual(h.events.map((e) => e.seq), desc(150, 101), "syncHistoryOnJoin after the restart");
  assert.equal(h.events[0].data.text, "m150");
  const r = await trigger(c, 151);
  assert.equal(r.seq, 151, "seq continues");
  assert.deepEqual(await scrollByCursor(c, 1000), desc(151, 1));
  c.close();
});

phase("deep-sync", async () => {
  // syncHistoryOnJoin (50) is larger than the window (limit 10): the rest comes from the database.
  const a = await joined("writer");
  await fill(a, 1, 80);
  const b = await connect("late");
  await b.request("dialogue:join", { roomId: ROOM });
  const h = await b.waitFor("dialogue:history", (h) => h.roomId === ROOM);
  assert.deepEqual(h.events.map((e) => e.seq), desc(80, 31));
  a.close();
  b.close();
});

phase("outage-fill", async () => {
  // The database is down: triggers go on until the backlog is full, then STORAGE_UNAVAILABLE.
  const c = await joined("writer");
  let accepted = Number(process.env.FIRST_SEQ) - 1;
  let refused = null;
  for (let i = 0; i < 500 && !refused; i++) {
    const r = await trigger(c, accepted + 1).catch((e) => ({ ok: false, code: String(e) }));
    if (r.ok) {
      assert.equal(r.seq, accepted + 1);
      accepted = r.seq;
    } else refused = r;
  }
  assert.ok(refused, "the backlog bound was reached");
  assert.equal(refused.code, "STORAGE_UNAVAILABLE", JSON.stringify(refused));
  await c.waitFor("dialogue:error", (e) => e.code === "STORAGE_UNAVAILABLE");
  // Pending (unwritten) events are still readable: the newest 40 are in memory or waiting.
  const recent = await history(c, { start: 0, end: 40 });
  assert.deepEqual(recent.events.map((e) => e.seq), desc(accepted, accepted - 39));
  result({ accepted });
  c.close();
});

phase("outage-recovered", async () => {
  const c = await joined("writer");
  const last = Number(process.env.LAST_SEQ);
  let r;
  for (let i = 0; i < 200; i++) {
    r = await trigger(c, last + 1);
    if (r.ok) break;
    await sleep(100);
  }
  assert.equal(r.ok, true, "triggers are accepted again");
  assert.equal(r.seq, last + 1);
  assert.deepEqual(await scrollByCursor(c, last + 2), desc(last + 1, 1), "nothing lost");
  c.close();
});

phase("delete", async () => {
  const c = await connect("owner");
  assert.equal((await c.request("dialogue:createRoom", { id: "temp", name: "Temporary" })).ok, true);
  await c.request("dialogue:join", { roomId: "temp" });
  for (let i = 1; i <= 30; i++) {
    const r = await c.request("dialogue:trigger", { roomId: "temp", event: "message", data: msg(i) });
    assert.equal(r.seq, i);
  }
  assert.equal((await c.request("dialogue:deleteRoom", { roomId: "temp" })).ok, true);
  c.close();
});

phase("poison-batch", async () => {
  // The database refuses one row (a test trigger rejects the text POISON): the other rows of
  // its batch are stored, the refused one is quarantined and a tombstone keeps its seq.
  const c = await joined("writer");
  const answers = [];
  for (let i = 1; i <= 20; i++) {
    const text = i === 10 ? "POISON" : `m${i}`;
    answers.push(c.socket.timeout(10_000).emitWithAck("dialogue:trigger", {
      roomId: ROOM, event: "message", data: { text, username: "p" },
    }));
  }
  const acks = await Promise.all(answers);
  acks.forEach((a, i) => {
    if (i === 9) {
      assert.equal(a.ok, false, JSON.stringify(a));
      assert.equal(a.code, "STORAGE_UNAVAILABLE");
      assert.match(a.message, /quarantined/);
    } else {
      assert.equal(a.ok, true, JSON.stringify(a));
      assert.equal(a.seq, i + 1);
    }
  });
  await fill(c, 21, 25);
  const page = await history(c, { start: 0, end: 50 });
  assert.deepEqual(page.events.map((e) => e.seq), desc(25, 1), "gapless: the tombstone holds seq 10");
  const tomb = page.events.find((e) => e.seq === 10);
  assert.equal(tomb.data, null);
  assert.deepEqual(tomb.meta, { quarantined: true });
  assert.equal(page.events.find((e) => e.seq === 11).data.text, "m11");
  c.close();
});

phase("fill-n", async () => {
  // FIRST..FIRST+COUNT-1 into the room, each acknowledged with the next seq.
  const c = await joined("writer");
  const first = Number(process.env.FIRST ?? 1);
  await fill(c, first, first + Number(process.env.COUNT) - 1);
  c.close();
});

phase("check-n", async () => {
  // The whole history is m1..mCOUNT, newest first.
  const c = await joined("reader");
  const count = Number(process.env.COUNT);
  const page = await history(c, { start: 0, end: count + 10 });
  assert.deepEqual(page.events.map((e) => e.seq), desc(count, 1));
  assert.deepEqual(page.events.map((e) => e.data.text), desc(count, 1).map((i) => `m${i}`));
  c.close();
});

phase("refused", async () => {
  // Every trigger is refused with STORAGE_UNAVAILABLE (the room stopped writing).
  const c = await joined("writer");
  for (let i = 0; i < 2; i++) {
    const r = await trigger(c, 100 + i);
    assert.equal(r.ok, false, JSON.stringify(r));
    assert.equal(r.code, "STORAGE_UNAVAILABLE");
  }
  c.close();
});

phase("gap", async () => {
  // History switched on for an event that had only a counter: its first seqs were never
  // stored. Pages over them are answered with what exists, not refused.
  const c = await connect("late-history");
  assert.equal((await c.request("dialogue:join", { roomId: "counters" })).ok, true);
  const sent = [];
  for (let i = 0; i < 2; i++) {
    const r = await c.request("dialogue:trigger", { roomId: "counters", event: "typing", data: { i } });
    assert.equal(r.ok, true, JSON.stringify(r));
    sent.push(r.seq);
  }
  const page = await c.request("dialogue:getHistory", { roomId: "counters", eventName: "typing", start: 0, end: 50 });
  assert.equal(page.ok, true, JSON.stringify(page));
  assert.deepEqual(page.events.map((e) => e.seq), [...sent].reverse());
  const older = await c.request("dialogue:getHistory", { roomId: "counters", eventName: "typing", before: sent[0], limit: 10 });
  assert.equal(older.ok, true, JSON.stringify(older));
  assert.deepEqual(older.events, []);
  result({ sent });
  c.close();
});

phase("counters", async () => {
  // 20 of each event without history sent at once (the first ones of a new counter block
  // wait for its reservation), then five one at a time; RESULT {typing: [seq…], ping: [seq…]}
  // in the order sent.
  const c = await connect("counter");
  assert.equal((await c.request("dialogue:join", { roomId: "counters" })).ok, true);
  const seqs = {};
  const send = (event, i) => c.request("dialogue:trigger", { roomId: "counters", event, data: { i } });
  for (const event of ["typing", "ping"]) {
    seqs[event] = [];
    const burst = [];
    for (let i = 0; i < 20; i++) {
      burst.push(send(event, i));
      if (i % 4 === 3) await sleep(2); // spread over several of the room's mailbox drains
    }
    for (const r of await Promise.all(burst)) {
      assert.equal(r.ok, true, JSON.stringify(r));
      seqs[event].push(r.seq);
    }
    for (let i = 20; i < 25; i++) {
      const r = await send(event, i);
      assert.equal(r.ok, true, JSON.stringify(r));
      seqs[event].push(r.seq);
    }
  }
  result(seqs);
  c.close();
});
