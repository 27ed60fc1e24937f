// Connection-state recovery (tests/recovery.rs): a pid is bound to the identity it was given
// to, a made-up pid is ignored, and a session expires maxDisconnectionDuration after its
// connection ended. DIALOGUE_URL: recovery on (RECOVERY config: lobby autoJoin, r1, r2, r3);
// EXPIRY_URL: the same rooms with maxDisconnectionDuration: 1000.
import { test } from "node:test";
import assert from "node:assert/strict";
import { eventually } from "./helpers.mjs";
import { rconnect, post, sleep } from "./recovery-helpers.mjs";

const EXPIRY_URL = process.env.EXPIRY_URL;

test("a stolen pid does not recover the victim's session for another user", async () => {
  const writer = await rconnect("id-writer");
  assert.equal((await writer.request("dialogue:join", { roomId: "r2" })).ok, true);
  const victim = await rconnect("id-victim");
  assert.equal((await victim.request("dialogue:join", { roomId: "r2" })).ok, true);
  const first = await post(writer, "r2", "message", { text: "for the victim" });
  await victim.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === first);
  const stolen = { pid: victim.pid, offset: victim.offset };
  assert.equal(typeof stolen.pid, "string");
  assert.equal(typeof stolen.offset, "string");

  // The victim's transport is lost: its session is recoverable now.
  await victim.cut({ reconnect: false });
  const missed = [];
  for (let i = 0; i < 3; i++) missed.push(await post(writer, "r2", "message", { text: `missed ${i}` }));

  const thief = await rconnect("id-thief", stolen);
  const c = thief.connects[0];
  assert.equal(c.recovered, false, `a stolen pid must not recover: ${JSON.stringify(c)}`);
  assert.equal(typeof c.pid, "string", "a pid of its own");
  assert.notEqual(c.pid, stolen.pid, "not the victim's pid");
  // The thief is in none of the victim's rooms: a trigger is refused, nothing of r2 arrives.
  const denied = await thief.request("dialogue:trigger", { roomId: "r2", event: "message", data: { text: "x" } });
  assert.deepEqual([denied.ok, denied.code], [false, "NOT_IN_ROOM"], JSON.stringify(denied));
  const later = await post(writer, "r2", "message", { text: "after the theft" });
  await writer.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === later);
  await sleep(500);
  assert.deepEqual(thief.events("r2"), [], "no event of the victim's room, replayed or live");
  const hello = thief.all("dialogue:connected");
  assert.ok(hello.every((h) => h.userId === "id-thief"), JSON.stringify(hello));
  // Its own connection works: autoJoin rooms as usual.
  await thief.waitFor("dialogue:joined", (j) => j.roomId === "lobby");

  // What the theft did to the victim's session is reported (the contract does not say).
  const back = await victim.comeBack();
  let victimGotMissed = false;
  if (back.recovered) {
    await victim.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === later, 5000);
    victimGotMissed = missed.every((s) => victim.seqs("r2", "message").includes(s));
  }
  console.log(`RESULT ${JSON.stringify({ test: "theft", victimRecoveredAfterTheft: back.recovered, victimGotMissed })}`);
  for (const c of [writer, victim, thief]) c.close();
});

test("a made-up pid is ignored: a new session that works normally", async () => {
  const c = await rconnect("made-up", { pid: "AAAAAAAAAAAAAAAAAAAAAA", offset: "AAAAAAAAAAAAAAAA" });
  assert.equal(c.connects[0].recovered, false, JSON.stringify(c.connects));
  assert.equal(typeof c.pid, "string");
  assert.notEqual(c.pid, "AAAAAAAAAAAAAAAAAAAAAA");
  await c.waitFor("dialogue:joined", (j) => j.roomId === "lobby");
  const seq = await post(c, "lobby", "message", { text: "hello" });
  await c.waitFor("dialogue:event", (e) => e.roomId === "lobby" && e.seq === seq);
  assert.equal((await c.request("dialogue:join", { roomId: "r1" })).ok, true);
  // An offset that is not even well-formed, with a pid that is: still just a new session.
  const d = await rconnect("made-up-2", { pid: c.pid, offset: "!!not an offset!!" });
  assert.equal(d.connects[0].recovered, false, JSON.stringify(d.connects));
  await d.waitFor("dialogue:joined", (j) => j.roomId === "lobby");
  c.close();
  d.close();
});

test("a session expires maxDisconnectionDuration (1 s) after its connection ended", { skip: !EXPIRY_URL }, async () => {
  const writer = await rconnect("exp-writer", { url: EXPIRY_URL });
  assert.equal((await writer.request("dialogue:join", { roomId: "r1" })).ok, true);
  const reader = await rconnect("exp-reader", { url: EXPIRY_URL });
  assert.equal((await reader.request("dialogue:join", { roomId: "r1" })).ok, true);
  const s1 = await post(writer, "r1", "message", { text: "one" });
  await reader.waitFor("dialogue:event", (e) => e.seq === s1);

  // Control: back at once, the session is recovered on this server too.
  await reader.cut({ reconnect: false });
  const quick = await reader.comeBack();
  assert.equal(quick.recovered, true, `back at once: ${JSON.stringify(reader.connects)}`);
  const s2 = await post(writer, "r1", "message", { text: "two" });
  await reader.waitFor("dialogue:event", (e) => e.seq === s2);

  // Away 3 s, three times the limit: a new session, without r1.
  const pid = reader.pid;
  await reader.cut({ reconnect: false });
  await post(writer, "r1", "message", { text: "three" });
  await sleep(3000);
  const mark = reader.log.length;
  const late = await reader.comeBack();
  assert.equal(late.recovered, false, `back after 3 s: ${JSON.stringify(reader.connects)}`);
  assert.notEqual(late.pid, pid, "a new pid");
  const t = await reader.request("dialogue:trigger", { roomId: "r1", event: "message", data: { text: "x" } });
  assert.deepEqual([t.ok, t.code], [false, "NOT_IN_ROOM"], "the expired session's rooms are gone");
  // autoJoin as for any new session.
  await eventually(() => reader.log.slice(mark).some((e) => e.event === "dialogue:joined" && e.payload.roomId === "lobby"), 5000, "lobby joined again");
  writer.close();
  reader.close();
});
