// The seed's "Client-Side Infinite Scroll" flow (seed-client.mjs) across a kill -9 of the
// server (driven by tests/recovery.rs): messages.push(...events) on history,
// messages.unshift(msg) on live, loadMoreMessages() with positions. A writer (stock client)
// posts PRE messages, the seed client connects and joins "general" (it gets the newest 10 as
// history), prints READY; the writer chats for SECONDS_TO_WRITE while the harness kills the
// server and starts it again in the same directory (both behind a steady proxy it retargets).
// Then the client scrolls back to the first message. Prints RESULT {…} with every problem
// found: the final list must hold each stored message exactly once (newest first), every
// acked one with its text, and the reconnection must have been recovered.
import { io } from "socket.io-client";
import { createDialogueClient } from "./seed-client.mjs";

const STEADY_URL = process.env.STEADY_URL;
const SECONDS = Number(process.env.SECONDS_TO_WRITE ?? 6);
const PRE = Number(process.env.PRE ?? 30);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (why) => {
  console.log(`FAIL ${why}`);
  process.exit(1);
};
setTimeout(() => fail("took longer than 90 s"), 90_000).unref();
const ask = (socket, event, payload) => socket.timeout(3000).emitWithAck(event, payload);

// The writer: joins "general" on every connection that did not get its session back.
const writer = io(STEADY_URL, {
  transports: ["websocket"],
  auth: { userId: "seed-writer" },
  forceNew: true,
  reconnectionDelay: 50,
  reconnectionDelayMax: 300,
});
let writerJoined = false;
writer.on("connect", async () => {
  if (!writer.recovered) writerJoined = false;
  if (writerJoined) return;
  try {
    const ack = await ask(writer, "dialogue:join", { roomId: "general" });
    writerJoined = ack.ok;
  } catch {}
});
const until = async (what, fn, ms) => {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) fail(`timed out: ${what}`);
    await sleep(20);
  }
};
await until("writer joined", () => writerJoined, 15_000);
const acked = new Map(); // seq -> text
let k = 0;
let unanswered = 0;
async function say() {
  const text = `m${k++}`;
  try {
    const r = await ask(writer, "dialogue:trigger", { roomId: "general", event: "message", data: { text, username: "writer" } });
    if (r.ok) acked.set(r.seq, text);
    else unanswered++;
  } catch {
    unanswered++;
  }
}
for (let i = 0; i < PRE; i++) await say();
if (acked.size !== PRE) fail(`pre messages: ${acked.size} of ${PRE} acked`);

// ---- The seed's client code, as written there (renderMessages omitted). ----
const client = createDialogueClient({
  url: STEADY_URL,
  auth: { userId: "user-123" },
  reconnectionDelay: 50,
  reconnectionDelayMax: 300,
});
// (The test's own count of what history brought.)
let historyAtJoin = 0;
client.onHistory((roomId, events) => {
  historyAtJoin += events.length;
});

const messages = [];
let isLoadingMore = false;

// Handle history sent on join
client.onHistory((roomId, events) => {
  messages.push(...events);
});

await client.connect();
const room = await client.join("general");

// Listen for new messages
room.on("message", (msg) => {
  messages.unshift(msg); // Add to beginning (newest)
});

// Load more when scrolling to top
async function loadMoreMessages() {
  if (isLoadingMore) return;
  isLoadingMore = true;

  try {
    const currentCount = messages.length;
    const olderMessages = await room.getHistory("message", currentCount, currentCount + 20);

    if (olderMessages.length > 0) {
      messages.push(...olderMessages);
    }
  } finally {
    isLoadingMore = false;
  }
}
// ---- end of the seed's code ----

console.log("READY");

// Chat while the harness kills the server and starts it again.
const end = Date.now() + SECONDS * 1000;
while (Date.now() < end) {
  if (writer.connected) await say();
  await sleep(20);
}

// The newest message the server holds.
await until("writer connected", () => writer.connected && writerJoined, 20_000);
let newest = 0;
for (let tries = 0; tries < 50; tries++) {
  try {
    const page = await ask(writer, "dialogue:getHistory", { roomId: "general", eventName: "message", start: 0, end: 1 });
    if (page.ok) {
      newest = page.events[0]?.seq ?? 0;
      break;
    }
  } catch {}
  await sleep(100);
}
if (newest === 0) fail("no history from the server");
const deadline = Date.now() + 30_000;
while (!messages.some((m) => m.seq === newest) && Date.now() < deadline) await sleep(50);
await sleep(500); // a late duplicate would show

// Scroll to the top, as the user would.
let scrolls = 0;
for (; scrolls < 100; scrolls++) {
  const before = messages.length;
  await loadMoreMessages();
  if (messages.length === before) break;
}

const problems = [];
const seqs = messages.map((m) => m.seq);
const expected = Array.from({ length: newest }, (_, i) => newest - i);
if (JSON.stringify(seqs) !== JSON.stringify(expected)) {
  const count = new Map();
  for (const s of seqs) count.set(s, (count.get(s) ?? 0) + 1);
  const dups = [...count].filter(([, c]) => c > 1).map(([s, c]) => `${s}×${c}`);
  const missing = expected.filter((s) => !count.has(s));
  problems.push(
    `messages hold ${seqs.length} for ${newest}: duplicates ${JSON.stringify(dups.slice(0, 30))}, missing ${JSON.stringify(missing.slice(0, 30))}, head ${JSON.stringify(seqs.slice(0, 40))}`,
  );
}
const bySeq = new Map(messages.map((m) => [m.seq, m.data?.text]));
for (const [seq, text] of acked) {
  if (!bySeq.has(seq)) problems.push(`acked message ${seq} (${text}) is missing`);
  else if (bySeq.get(seq) !== text) problems.push(`message ${seq}: ${bySeq.get(seq)}, written ${text}`);
}
console.log(
  `RESULT ${JSON.stringify({
    pre: PRE,
    acked: acked.size,
    unanswered,
    newest,
    historyAtJoin,
    held: messages.length,
    scrolls,
    connects: client.stats.connects,
    rejoins: client.stats.rejoins,
    histories: client.stats.histories,
    problems: problems.slice(0, 40),
  })}`,
);
process.exit(0);
