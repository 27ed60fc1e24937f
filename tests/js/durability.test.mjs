// Durability scenarios, one per PHASE (set by tests/durability.rs, which kills and restarts
// the server and reads the database between phases). Results go back as `RESULT {json}`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, sleep } from "./helpers.mjs";

const phase = (name, fn) => test(name, { skip: process.env.PHASE !== name }, fn);
const result = (value) => console.log(`RESULT ${JSON.stringify(value)}`);
const desc = (hi, lo) => Array.from({ length: hi - lo + 1 }, (_, i) => hi - i);
const request = (c, event, payload, ms = 30000) => c.socket.timeout(ms).emitWithAck(event, payload);

/** Triggers one event, retrying (bounded) while the server says RATE_LIMITED. */
async function trigger(c, roomId, text, { retryRateLimit = true } = {}) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const r = await request(c, "dialogue:trigger", { roomId, event: "message", data: { text, username: "u" } });
    if (r.ok || !retryRateLimit || r.code !== "RATE_LIMITED") return r;
    await sleep(50);
  }
  throw new Error(`still RATE_LIMITED after 200 attempts (${text})`);
}

/** Every page by cursor from the newest back to the first: [seq, text] pairs. */
async function byCursor(c, roomId, limit) {
  const seen = [];
  let before = Number.MAX_SAFE_INTEGER;
  for (let guard = 0; guard < 10_000; guard++) {
    const page = await request(c, "dialogue:getHistory", { roomId, eventName: "message", before, limit });
    assert.equal(page.ok, true, JSON.stringify(page));
    seen.push(...page.events.map((e) => [e.seq, e.data.text]));
    if (!page.hasMore || page.events.length === 0) break;
    before = page.events.at(-1).seq;
  }
  return seen;
}

/** Every page by offsets from the newest back to the first: [seq, text] pairs. */
async function byOffsets(c, roomId, size) {
  const seen = [];
  for (let start = 0; start < 1_000_000; start += size) {
    const page = await request(c, "dialogue:getHistory", { roomId, eventName: "message", start, end: start + size });
    assert.equal(page.ok, true, JSON.stringify(page));
    seen.push(...page.events.map((e) => [e.seq, e.data.text]));
    if (!page.hasMore || page.events.length === 0) break;
  }
  return seen;
}

const story = (hi) => desc(hi, 1).map((s) => [s, `m${s}`]);

// ---------------------------------------------------------------- the user story (repo config)

phase("story-fill", async () => {
  // `general` is an autoJoin room; triggersPerSecond: 50 applies (RATE_LIMITED is retried).
  const c = await connect("alice");
  for (let i = 1; i <= 250; i++) {
    const r = await trigger(c, "general", `m${i}`);
    assert.equal(r.ok, true, `m${i}: ${JSON.stringify(r)}`);
    assert.equal(r.seq, i, `m${i} got seq ${r.seq}`);
  }
  c.close();
});

phase("story-after", async () => {
  const c = await connect("bob");
  // autoJoin + syncHistoryOnJoin: 50: the newest 50 come on connect.
  const h = await c.waitFor("dialogue:history", (h) => h.roomId === "general", 10000);
  assert.deepEqual(
    h.events.map((e) => [e.seq, e.data.text]),
    story(250).slice(0, 50),
    "dialogue:history on join after kill -9: the newest 50 of the 250 acknowledged",
  );
  assert.deepEqual(await byOffsets(c, "general", 50), story(250), "offset paging: all 250 acked, newest first");
  assert.deepEqual(await byCursor(c, "general", 50), story(250), "cursor paging: all 250 acked, newest first");
  for (let i = 251; i <= 255; i++) {
    const r = await trigger(c, "general", `m${i}`);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.seq, i, `numbering continues after the restart: m${i} got seq ${r.seq}`);
  }
  assert.deepEqual(await byCursor(c, "general", 50), story(255), "cursor paging after 5 more");
  c.close();
});

// ---------------------------------------------------------------- delete → create race

const triggerAll = (c, roomId, texts) =>
  texts.map((text) =>
    request(c, "dialogue:trigger", { roomId, event: "message", data: { text, username: "r" } }).then(
      (r) => ({ text, ...r }),
      (e) => ({ text, ok: false, code: `no ack: ${e.message}` }),
    ),
  );
const texts = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}-${i + 1}`);

phase("race", async () => {
  // VARIANT same: one connection sends OLD triggers (not awaited), deleteRoom, createRoom,
  // join and NEW triggers, all pipelined. VARIANT other: a second connection re-creates the
  // room as soon as the delete let it (createRoom retried while ROOM_EXISTS), then triggers.
  const ROOM = process.env.ROOM ?? "race";
  const OLD = Number(process.env.OLD ?? 200);
  const NEW = Number(process.env.NEW ?? 50);
  const variant = process.env.VARIANT ?? "same";
  const c = await connect("racer");
  const created = await request(c, "dialogue:createRoom", { id: ROOM, name: "Race" });
  assert.equal(created.ok, true, JSON.stringify(created));
  assert.equal((await request(c, "dialogue:join", { roomId: ROOM })).ok, true);
  let old, deleted, recreated, rejoined, fresh, attempts = 0;
  if (variant === "same") {
    old = triggerAll(c, ROOM, texts("old", OLD));
    deleted = request(c, "dialogue:deleteRoom", { roomId: ROOM });
    recreated = request(c, "dialogue:createRoom", { id: ROOM, name: "Race again" });
    rejoined = request(c, "dialogue:join", { roomId: ROOM });
    fresh = triggerAll(c, ROOM, texts("new", NEW));
  } else {
    const d = await connect("recreator");
    old = triggerAll(c, ROOM, texts("old", OLD));
    deleted = request(c, "dialogue:deleteRoom", { roomId: ROOM });
    let cre;
    const end = Date.now() + 15000;
    do {
      attempts++;
      cre = await request(d, "dialogue:createRoom", { id: ROOM, name: "Race again" });
    } while (!cre.ok && cre.code === "ROOM_EXISTS" && Date.now() < end);
    recreated = cre;
    rejoined = await request(d, "dialogue:join", { roomId: ROOM });
    fresh = triggerAll(d, ROOM, texts("new", NEW));
  }
  const oldAcks = await Promise.all(old);
  const del = await deleted;
  const cre = await recreated;
  const joi = await rejoined;
  const freshAcks = await Promise.all(fresh);
  result({ old: oldAcks, fresh: freshAcks, deleted: del, recreated: cre, rejoined: joi, attempts });
  assert.equal(del.ok, true, `deleteRoom: ${JSON.stringify(del)}`);
  assert.equal(cre.ok, true, `createRoom again: ${JSON.stringify(cre)}`);
  assert.equal(joi.ok, true, `join again: ${JSON.stringify(joi)}`);
  const oldOk = oldAcks.filter((a) => a.ok);
  assert.deepEqual(
    oldOk.map((a) => a.seq),
    Array.from({ length: oldOk.length }, (_, i) => i + 1),
    "the old room numbered its acked triggers 1..n in the order sent",
  );
  const last = oldOk.length;
  const failedFresh = freshAcks.filter((a) => !a.ok);
  assert.equal(failedFresh.length, 0, `triggers into the re-created room failed: ${JSON.stringify(failedFresh.slice(0, 5))}`);
  assert.deepEqual(
    freshAcks.map((a) => a.seq),
    Array.from({ length: NEW }, (_, i) => last + i + 1),
    `the re-created room (${variant} connection, createRoom attempts: ${attempts}) continues after the old room's last seq ${last}`,
  );
  c.close();
});

// ---------------------------------------------------------------- plain fill (no assertions)

phase("fill", async () => {
  // COUNT triggers into ROOM awaiting each ack; the Rust side checks the acks.
  const room = process.env.ROOM ?? "dur";
  const prefix = process.env.PREFIX ?? "f";
  const count = Number(process.env.COUNT ?? 100);
  const c = await connect(`fill-${prefix}`);
  const j = await request(c, "dialogue:join", { roomId: room });
  const acks = [];
  if (j.ok || /already/i.test(String(j.message))) {
    for (let i = 1; i <= count; i++) {
      const text = `${prefix}-${i}`;
      let r;
      try {
        r = await trigger(c, room, text);
      } catch (e) {
        r = { ok: false, code: `no ack: ${e.message}` };
      }
      acks.push({ text, ...r });
    }
  }
  result({ join: j, acks });
  c.close();
});
