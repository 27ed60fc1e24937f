// Background clients for tests/durability.rs, run with plain `node` (not `node --test`): the
// Rust test starts and kills servers around them. MODE picks what the script does:
//
// - `load`: CLIENTS senders (default 4) join ROOM and trigger EVENT back-to-back (INFLIGHT
//   triggers in flight per sender, default 1) with distinct texts `k{CYCLE}-c{client}-{n}`,
//   until their connection drops (the server was killed) or MAX_MS passed. Every ack is
//   appended at once (synchronously) to ACK_FILE as a JSON line
//   `{kind: "ack", cycle, client, seq, text, epoch|null, t}` (`epoch` is the ack's own field
//   when it has one, `t` the receive time in Unix ms); each of a sender's own events coming
//   back as `dialogue:event` adds `{kind: "ev", cycle, seq, text, epoch, t}` (a missing
//   `epoch` counts as 0). Prints `STARTED` once every sender is connected and joined, and
//   `DONE {json}` at the end.
// - `probe`: one client joins ROOM and triggers one event with text PROBE_TEXT, waiting up to
//   PROBE_TIMEOUT_MS for the ack; prints `CONNECTED`, then `RESULT {ack|error, t}`.
// - `dump`: reads the whole history of (ROOM, EVENT) newest first, by cursor and by offsets,
//   and writes `{cursor: [[seq, text, epoch]...], offsets: [...]}` to DUMP_FILE; prints
//   `RESULT {count}`.
import { io } from "socket.io-client";
import { appendFileSync, writeFileSync } from "node:fs";

const URL = process.env.DIALOGUE_URL;
if (!URL) throw new Error("DIALOGUE_URL is not set (run through cargo test)");
const MODE = process.env.MODE ?? "load";
const ROOM = process.env.ROOM ?? "dur";
const EVENT = process.env.EVENT ?? "message";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = (line) => process.stdout.write(line + "\n");

function connect(userId, timeoutMs = 10000) {
  const socket = io(URL, {
    transports: ["websocket"],
    auth: { userId },
    reconnection: false,
    forceNew: true,
    timeout: timeoutMs,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connect timed out")), timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("connect_error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** Joins ROOM; "already joined" (autoJoin rooms) is fine. */
async function join(socket) {
  const r = await socket.timeout(30000).emitWithAck("dialogue:join", { roomId: ROOM });
  if (!r.ok && !/already/i.test(String(r.message))) {
    throw new Error(`join ${ROOM} failed: ${JSON.stringify(r)}`);
  }
  return r;
}

async function load() {
  const clients = Number(process.env.CLIENTS ?? 4);
  const inflight = Number(process.env.INFLIGHT ?? 1);
  const cycle = Number(process.env.CYCLE ?? 0);
  const ackFile = process.env.ACK_FILE;
  const maxMs = Number(process.env.MAX_MS ?? 20000);
  if (!ackFile) throw new Error("ACK_FILE is not set");
  const write = (obj) => appendFileSync(ackFile, JSON.stringify(obj) + "\n");
  const stats = { acks: 0, errors: {}, timeouts: 0, events: 0 };

  const sockets = await Promise.all(
    Array.from({ length: clients }, (_, c) => connect(`k${cycle}-c${c}`)),
  );
  await Promise.all(sockets.map(join));
  const deadline = Date.now() + maxMs;
  let alive = sockets.length;
  const senders = sockets.map((socket, c) => {
    const prefix = `k${cycle}-c${c}-`;
    let connected = true;
    let n = 0;
    socket.on("dialogue:event", (e) => {
      const text = e?.data?.text;
      if (e?.roomId === ROOM && typeof text === "string" && text.startsWith(prefix)) {
        stats.events++;
        write({ kind: "ev", cycle, seq: e.seq, text, epoch: e.epoch ?? 0, t: Date.now() });
      }
    });
    const gone = new Promise((resolve) =>
      socket.once("disconnect", (reason) => {
        connected = false;
        alive--;
        resolve(reason);
      }),
    );
    const lane = async () => {
      while (connected && Date.now() < deadline) {
        const text = `${prefix}${++n}`;
        let r;
        try {
          r = await socket.timeout(10000).emitWithAck("dialogue:trigger", {
            roomId: ROOM,
            event: EVENT,
            data: { text, username: `c${c}` },
          });
        } catch {
          stats.timeouts++; // no ack: the connection dropped (or the server hung)
          break;
        }
        if (r?.ok) {
          stats.acks++;
          write({
            kind: "ack",
            cycle,
            client: c,
            seq: r.seq,
            text,
            epoch: typeof r.epoch === "number" ? r.epoch : null,
            t: Date.now(),
          });
        } else {
          const code = r?.code ?? "NO_CODE";
          stats.errors[code] = (stats.errors[code] ?? 0) + 1;
          await sleep(20);
        }
      }
    };
    return Promise.race([Promise.all(Array.from({ length: inflight }, lane)), gone]);
  });
  out("STARTED");
  await Promise.all(senders);
  for (const s of sockets) s.close();
  out(`DONE ${JSON.stringify({ ...stats, stillConnected: alive })}`);
}

async function probe() {
  const text = process.env.PROBE_TEXT ?? "probe";
  const timeoutMs = Number(process.env.PROBE_TIMEOUT_MS ?? 30000);
  let socket;
  try {
    socket = await connect("probe", timeoutMs);
  } catch (e) {
    out(`RESULT ${JSON.stringify({ error: `connect: ${e.message}`, t: Date.now() })}`);
    return;
  }
  out("CONNECTED");
  let epoch = null;
  socket.on("dialogue:event", (e) => {
    if (e?.data?.text === text) epoch = e.epoch ?? 0;
  });
  try {
    const j = await socket.timeout(timeoutMs).emitWithAck("dialogue:join", { roomId: ROOM });
    if (!j.ok && !/already/i.test(String(j.message))) {
      out(`RESULT ${JSON.stringify({ ack: j, stage: "join", t: Date.now() })}`);
      socket.close();
      return;
    }
    const ack = await socket.timeout(timeoutMs).emitWithAck("dialogue:trigger", {
      roomId: ROOM,
      event: EVENT,
      data: { text, username: "probe" },
    });
    const t = Date.now();
    if (ack.ok) {
      // The event's own epoch, from the fan-out (it may come just after the ack).
      for (let i = 0; i < 50 && epoch === null; i++) await sleep(20);
    }
    out(`RESULT ${JSON.stringify({ ack, epoch, t })}`);
  } catch (e) {
    out(`RESULT ${JSON.stringify({ error: String(e.message ?? e), t: Date.now() })}`);
  }
  socket.close();
}

async function dump() {
  const file = process.env.DUMP_FILE;
  if (!file) throw new Error("DUMP_FILE is not set");
  const socket = await connect("dump");
  await join(socket);
  const history = (range) =>
    socket.timeout(30000).emitWithAck("dialogue:getHistory", { roomId: ROOM, eventName: EVENT, ...range });
  const row = (e) => [e.seq, e.data?.text ?? null, e.epoch ?? 0];
  const cursor = [];
  let before = Number.MAX_SAFE_INTEGER;
  for (let guard = 0; guard < 100000; guard++) {
    const page = await history({ before, limit: 1000 });
    if (!page.ok) throw new Error(`getHistory before ${before}: ${JSON.stringify(page)}`);
    cursor.push(...page.events.map(row));
    if (!page.hasMore || page.events.length === 0) break;
    before = page.events.at(-1).seq;
  }
  const offsets = [];
  for (let start = 0; start < 10_000_000; start += 1000) {
    const page = await history({ start, end: start + 1000 });
    if (!page.ok) throw new Error(`getHistory start ${start}: ${JSON.stringify(page)}`);
    offsets.push(...page.events.map(row));
    if (!page.hasMore || page.events.length === 0) break;
  }
  writeFileSync(file, JSON.stringify({ cursor, offsets }));
  out(`RESULT ${JSON.stringify({ count: cursor.length })}`);
  socket.close();
}

const modes = { load, probe, dump };
if (!modes[MODE]) throw new Error(`unknown MODE ${MODE}`);
modes[MODE]().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
