// A session recovered and then connected for longer than maxDisconnectionDuration (1.5 s
// here) must stay recoverable (driven by tests/recovery.rs, which kills the server with -9
// after RECOVERED and starts it again behind the same proxy). Prints RESULT {recovered, seqs}.
import { rconnect, post, sleep } from "./recovery-helpers.mjs";

const STEADY_URL = process.env.STEADY_URL;
const fail = (why) => {
  console.log(`FAIL ${why}`);
  process.exit(1);
};
setTimeout(() => fail("took longer than 40 s"), 40_000).unref();

const writer = await rconnect("idle-writer", { url: STEADY_URL });
const reader = await rconnect("idle-reader", { url: STEADY_URL });
for (const c of [writer, reader]) {
  if (!(await c.request("dialogue:join", { roomId: "r2" })).ok) fail("join");
}
const seen = (seq) => reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === seq, 15_000);
await seen(await post(writer, "r2", "message", { n: 1 }));
const first = reader.nextConnect();
reader.socket.io.engine.close();
if (!(await first).recovered) fail(`first cut not recovered: ${JSON.stringify(reader.connects)}`);
await seen(await post(writer, "r2", "message", { n: 2 }));
console.log("RECOVERED");

// The server is killed and started again: both come back on their own.
const writerConnects = writer.connects.length;
const back = await reader.nextConnect(20_000);
for (let i = 0; i < 200 && writer.connects.length === writerConnects; i++) await sleep(100);
const writerBack = writer.connects.at(-1);
if (!writerBack.recovered) {
  if (!(await writer.request("dialogue:join", { roomId: "r2" })).ok) fail("writer rejoin");
}
await seen(await post(writer, "r2", "message", { n: 3 }));
console.log(`RESULT ${JSON.stringify({ recovered: back.recovered, seqs: reader.seqs("r2", "message") })}`);
writer.close();
reader.close();
process.exit(0);
