// `accepted` events lost in a crash and their seqs given out again (driven by
// tests/recovery.rs `accepted_seqs_lost_in_a_crash_are_not_skipped`): a reader holds seqs
// 1..5 that the store never kept (the database was locked); after kill -9 and a start, the
// room is at epoch 1 and numbers new events 1..6. The recovered session must join that room
// afresh (its offset says 5, which names a lost event), and a native join with
// `since: {message: 5}, epoch: 0` must say UNKNOWN_POSITION — not replay from 6 and skip the
// new 1..5. The same for the autoJoin room `auto`, resumed from the CONNECT's `auth.since`
// with `auth.epochs`.
import { readFileSync, existsSync } from "node:fs";
import { rconnect, post, sleep } from "./recovery-helpers.mjs";

const STEADY_URL = process.env.STEADY_URL;
const PHASE_FILE = process.env.PHASE_FILE;
const fail = (why) => {
  console.log(`FAIL ${why}`);
  process.exit(1);
};
setTimeout(() => fail("took longer than 60 s"), 60_000).unref();
const phase = async (name) => {
  for (let i = 0; i < 400; i++) {
    if (existsSync(PHASE_FILE) && readFileSync(PHASE_FILE, "utf8").trim() === name) return;
    await sleep(50);
  }
  fail(`no phase ${name}`);
};

const writer = await rconnect("epoch-writer", { url: STEADY_URL });
const reader = await rconnect("epoch-reader", { url: STEADY_URL });
for (const c of [writer, reader]) if (!(await c.request("dialogue:join", { roomId: "r2" })).ok) fail("join");
console.log("READY");
await phase("locked");
for (let n = 1; n <= 5; n++) await post(writer, "r2", "message", { n, lost: true });
for (let n = 1; n <= 5; n++) await post(writer, "auto", "message", { n, lost: true });
await reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === 5);
reader.socket.io.reconnection(false); // it stays away until the room has moved on
console.log("SENT");

await phase("restarted");
for (let i = 0; i < 200 && !writer.socket.connected; i++) await sleep(100);
if (!writer.connects.at(-1).recovered) {
  if (!(await writer.request("dialogue:join", { roomId: "r2" })).ok) fail("writer rejoin");
}
const fresh = [];
for (let n = 1; n <= 6; n++) fresh.push(await post(writer, "r2", "message", { n, lost: false }));
const autoFresh = [];
for (let n = 1; n <= 6; n++) autoFresh.push(await post(writer, "auto", "message", { n, lost: false }));

// The autoJoin room resumed from the CONNECT, with the old epoch and with the current one.
async function autoResume(userId, epoch) {
  const c = await rconnect(userId, {
    url: STEADY_URL,
    auth: { userId, recovery: false, since: { auto: { message: 5 } }, epochs: { auto: epoch } },
  });
  for (let i = 0; i < 100 && !c.raw.some((r) => r.event === "dialogue:joined"); i++) await sleep(50);
  const joined = c.raw.find((r) => r.event === "dialogue:joined" && r.args[0].roomId === "auto");
  c.close();
  return joined?.args[0].resume ?? null;
}
const autoOld = await autoResume("epoch-auto-old", 0);
const autoNow = await autoResume("epoch-auto-now", 1);

// Native resume from a lost seq of the old epoch, and from the current epoch.
const native = await rconnect("epoch-native", { url: STEADY_URL, recovery: false });
const old = await native.request("dialogue:join", { roomId: "r2", since: { message: 5 }, epoch: 0 });
native.close();
const current = await rconnect("epoch-native-2", { url: STEADY_URL, recovery: false });
const now = await current.request("dialogue:join", { roomId: "r2", since: { message: 5 }, epoch: 1 });
current.close();

// The recovered reader.
const before = reader.raw.length;
const back = await reader.comeBack();
// What came after the comeback (the room's join answer is the one after `before`).
const after = (event) => reader.raw.slice(before).filter((r) => r.event === event).map((r) => r.args[0]);
for (let i = 0; i < 100 && after("dialogue:history").length === 0; i++) await sleep(50);
await sleep(200);
const joined = after("dialogue:joined").find((e) => e.roomId === "r2") ?? {};
const history = after("dialogue:history").find((e) => e.roomId === "r2") ?? { events: [] };
const replayed = after("dialogue:event").filter((e) => e.roomId === "r2").map((e) => e.seq);
console.log(
  `RESULT ${JSON.stringify({
    fresh,
    recovered: back.recovered,
    joinedResume: joined.resume ?? null,
    historySeqs: history.events.map((e) => [e.seq, e.epoch ?? 0, e.data.lost]),
    replayed,
    nativeOld: old.resume ?? null,
    nativeNow: now.resume ?? null,
    autoFresh,
    autoOld,
    autoNow,
  })}`,
);
writer.close();
reader.close();
process.exit(0);
