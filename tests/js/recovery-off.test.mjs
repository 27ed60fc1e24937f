// `recovery: {enabled: false}` (tests/recovery.rs): the CONNECT answer carries no pid, events
// no offset, and a reconnect is a new session. DIALOGUE_URL: recovery off; DEFAULT_URL: the
// same rooms without a `recovery` section (on by default).
import { test } from "node:test";
import assert from "node:assert/strict";
import { eventually } from "./helpers.mjs";
import { rconnect, post, sleep } from "./recovery-helpers.mjs";

const DEFAULT_URL = process.env.DEFAULT_URL;

test("recovery off: no pid, no offset, a reconnect is a new session", async () => {
  const writer = await rconnect("off-writer");
  assert.equal((await writer.request("dialogue:join", { roomId: "r1" })).ok, true);
  const reader = await rconnect("off-reader");
  assert.equal(reader.pid, undefined, `no pid in the CONNECT answer: ${JSON.stringify(reader.connects)}`);
  assert.equal((await reader.request("dialogue:join", { roomId: "r1" })).ok, true);
  const seq = await post(writer, "r1", "message", { text: "plain" });
  const note = await post(writer, "r1", "note", { text: "plain" });
  await reader.waitFor("dialogue:event", (e) => e.event === "note" && e.seq === note);
  const events = reader.raw.filter((r) => r.event === "dialogue:event");
  assert.deepEqual(events.map((r) => r.args.length), [1, 1], `no offset argument: ${JSON.stringify(events)}`);
  assert.equal(events[0].args[0].seq, seq);
  assert.equal(reader.offset, undefined);

  // An automatic reconnection is a new session: no recovery, r1 is not joined any more.
  const mark = reader.log.length;
  const next = reader.nextConnect();
  reader.socket.io.engine.close();
  const c = await next;
  assert.ok(!c.recovered, JSON.stringify(reader.connects));
  assert.equal(c.pid, undefined);
  const t = await reader.request("dialogue:trigger", { roomId: "r1", event: "message", data: { text: "x" } });
  assert.deepEqual([t.ok, t.code], [false, "NOT_IN_ROOM"], JSON.stringify(t));
  await eventually(() => reader.log.slice(mark).some((e) => e.event === "dialogue:joined" && e.payload.roomId === "lobby"), 5000, "lobby joined again");

  // A client that presents a pid anyway gets an ordinary new session.
  const other = await rconnect("off-other", { pid: "AAAAAAAAAAAAAAAAAAAAAA", offset: "AAAA" });
  assert.ok(!other.connects[0].recovered, JSON.stringify(other.connects));
  assert.equal(other.connects[0].pid, undefined, "no pid given back");
  await other.waitFor("dialogue:joined", (j) => j.roomId === "lobby");
  const lobby = await post(other, "lobby", "message", { text: "works" });
  await other.waitFor("dialogue:event", (e) => e.roomId === "lobby" && e.seq === lobby);
  for (const x of [writer, reader, other]) x.close();
});

test("recovery is on by default", { skip: !DEFAULT_URL }, async () => {
  const writer = await rconnect("dflt-writer", { url: DEFAULT_URL });
  const reader = await rconnect("dflt-reader", { url: DEFAULT_URL });
  assert.equal(typeof reader.pid, "string", "a pid without a recovery section");
  assert.equal((await writer.request("dialogue:join", { roomId: "r1" })).ok, true);
  assert.equal((await reader.request("dialogue:join", { roomId: "r1" })).ok, true);
  const s1 = await post(writer, "r1", "message", { text: "one" });
  await reader.waitFor("dialogue:event", (e) => e.seq === s1);
  await reader.cut({ reconnect: false });
  const s2 = await post(writer, "r1", "message", { text: "two" });
  const back = await reader.comeBack();
  assert.equal(back.recovered, true, JSON.stringify(reader.connects));
  await reader.waitFor("dialogue:event", (e) => e.seq === s2);
  await sleep(200);
  assert.deepEqual(reader.seqs("r1", "message"), [s1, s2]);
  writer.close();
  reader.close();
});
