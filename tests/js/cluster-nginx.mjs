// Chat through nginx in front of a three-node cluster (docs/nginx.conf, run by
// `nginx_in_front_of_the_cluster` in tests/cluster.rs). Two clients go through nginx — one
// long-polling only (its requests must stick to one node), one WebSocket — and one connects
// straight to another node. They chat; then the node nginx sends them to is killed (-9): both
// reconnect through nginx to another node and recover (or resume with `since`), while the
// direct client keeps sending. At the end every client has every acknowledged message once,
// in order, as the history has them.
//
// Env: NGINX_URL, DIALOGUE_NODES (the nodes, comma-separated), DIALOGUE_API_KEY, PHASE_FILE.
// Prints `KILL {"index","name"}` and waits for the phase `killed`.
import { io } from "socket.io-client";
import fs from "node:fs";

const NGINX = process.env.NGINX_URL;
const NODES = process.env.DIALOGUE_NODES.split(",");
const KEY = process.env.DIALOGUE_API_KEY;
const PHASE_FILE = process.env.PHASE_FILE;
const ROOM = "lobby";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const note = (...a) => console.log(`# [${((Date.now() - t0) / 1000).toFixed(2)}s]`, ...a);
setTimeout(() => {
  console.log("FAIL the script took over 120 s");
  process.exit(1);
}, 120_000).unref();

async function readyzName(url) {
  const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5000) });
  return (await r.json()).node;
}

async function waitPhase(name, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if (fs.readFileSync(PHASE_FILE, "utf8").trim() === name) return;
    } catch {}
    await sleep(50);
  }
  throw new Error(`no phase ${name} within ${ms} ms`);
}

/** A chat member recording the messages of ROOM it receives. */
class Member {
  constructor(name, url, transports) {
    this.name = name;
    this.seen = new Map(); // seq → text
    this.order = [];
    this.dupes = [];
    this.last = { seq: 0, epoch: 0 };
    this.reconnects = [];
    this.socket = io(url, {
      transports,
      auth: { userId: name },
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
      forceNew: true,
    });
    this.socket.on("dialogue:event", (e) => {
      if (e.roomId !== ROOM || e.event !== "message") return;
      if (this.seen.has(e.seq)) {
        if (this.seen.get(e.seq) !== e.data.text) this.dupes.push(`seq ${e.seq} names two messages`);
        else this.dupes.push(`seq ${e.seq} twice`);
        return;
      }
      this.seen.set(e.seq, e.data.text);
      this.order.push(e.seq);
      this.last = { seq: e.seq, epoch: e.epoch ?? 0 };
    });
    this.socket.on("connect", () => {
      if (this.connectedOnce) {
        this.reconnects.push({ recovered: this.socket.recovered, transport: this.socket.io.engine.transport.name });
        // Not recovered: join again from what it has.
        if (!this.socket.recovered) this.rejoin();
      }
      this.connectedOnce = true;
    });
  }

  async rejoin() {
    for (let i = 0; i < 50; i++) {
      try {
        const ack = await this.socket.timeout(5000).emitWithAck("dialogue:join", {
          roomId: ROOM,
          since: { message: this.last.seq },
          epoch: this.last.epoch,
        });
        note(this.name, "joined again with since", this.last.seq, JSON.stringify(ack.resume ?? ack));
        if (ack.ok) return;
      } catch {}
      await sleep(200);
    }
  }

  async ready() {
    if (!this.socket.connected) await new Promise((r) => this.socket.once("connect", r));
    const ack = await this.socket.timeout(10000).emitWithAck("dialogue:join", { roomId: ROOM });
    if (!ack.ok) throw new Error(`${this.name} join: ${JSON.stringify(ack)}`);
  }

  /** Sends until acknowledged (retrying what the cluster answers as retryable, and lost acks). */
  async send(text) {
    for (let attempt = 0; attempt < 100; attempt++) {
      if (!this.socket.connected) {
        await sleep(100);
        continue;
      }
      try {
        const ack = await this.socket.timeout(15000).emitWithAck("dialogue:trigger", {
          roomId: ROOM,
          event: "message",
          data: { text },
        });
        if (ack.ok) return ack.seq;
        if (ack.error?.code !== "STORAGE_UNAVAILABLE" && ack.error?.code !== "NOT_IN_ROOM") {
          throw new Error(`${this.name} trigger: ${JSON.stringify(ack)}`);
        }
      } catch (e) {
        if (!String(e.message).includes("timed out")) throw e;
      }
      await sleep(200);
    }
    throw new Error(`${this.name}: '${text}' was never acknowledged`);
  }
}

async function history(url) {
  const r = await fetch(`${url}/api/rooms/${ROOM}/history/message?before=${Number.MAX_SAFE_INTEGER}&limit=1000`, {
    headers: { authorization: `Bearer ${KEY}` },
    signal: AbortSignal.timeout(10000),
  });
  const page = await r.json();
  return page.events.reverse().map((e) => ({ seq: e.seq, text: e.data.text }));
}

async function main() {
  const names = await Promise.all(NODES.map(readyzName));
  const behind = await readyzName(NGINX);
  const victim = names.indexOf(behind);
  if (victim < 0) throw new Error(`nginx sent us to ${behind}, not one of ${names}`);
  const direct = NODES[(victim + 1) % NODES.length];
  note("nginx sends this client to node", victim, "; the direct client is on", direct);

  const polling = new Member("polling", NGINX, ["polling"]);
  const ws = new Member("websocket", NGINX, ["websocket"]);
  const straight = new Member("direct", direct, ["websocket"]);
  const members = [polling, ws, straight];
  for (const m of members) await m.ready();
  if (polling.socket.io.engine.transport.name !== "polling") throw new Error("the polling client upgraded");

  const acked = [];
  for (let k = 0; k < 10; k++) for (const m of members) acked.push({ text: `${m.name}-before-${k}`, seq: await m.send(`${m.name}-before-${k}`) });
  note("10 messages each acked before the kill");

  console.log(`KILL ${JSON.stringify({ index: victim, name: behind })}`);
  await waitPhase("killed", 30000);
  note("node", victim, "killed");
  // The direct client goes on while the others are away.
  for (let k = 0; k < 10; k++) acked.push({ text: `direct-during-${k}`, seq: await straight.send(`direct-during-${k}`) });
  note("the direct client sent 10 during the failover");
  for (const m of [polling, ws]) {
    const end = Date.now() + 30000;
    while (m.reconnects.length === 0 && Date.now() < end) await sleep(50);
    if (m.reconnects.length === 0) throw new Error(`${m.name} did not reconnect through nginx`);
    note(m.name, "reconnected", JSON.stringify(m.reconnects));
  }
  const now = await readyzName(NGINX);
  if (now === behind) throw new Error("nginx still sends clients to the killed node");
  for (let k = 0; k < 10; k++) for (const m of members) acked.push({ text: `${m.name}-after-${k}`, seq: await m.send(`${m.name}-after-${k}`) });
  note("10 messages each acked after the failover");

  const stored = await history(direct);
  const problems = [];
  // The history: seq 1..N without a gap, each acked message at its seq.
  stored.forEach((e, i) => {
    if (e.seq !== i + 1) problems.push(`history position ${i} holds seq ${e.seq}`);
  });
  const bySeq = new Map(stored.map((e) => [e.seq, e.text]));
  for (const a of acked) {
    if (bySeq.get(a.seq) !== a.text) problems.push(`acked '${a.text}' (seq ${a.seq}) is not in the history (there: ${bySeq.get(a.seq)})`);
  }
  const end = Date.now() + 15000;
  while (Date.now() < end && members.some((m) => m.seen.size < stored.length)) await sleep(100);
  for (const m of members) {
    problems.push(...m.dupes.map((d) => `${m.name}: ${d}`));
    const missing = stored.filter((e) => m.seen.get(e.seq) !== e.text).map((e) => e.seq);
    if (missing.length) problems.push(`${m.name} misses seqs ${missing.join(",")}`);
    const sorted = m.order.every((s, i) => i === 0 || s > m.order[i - 1]);
    if (!sorted) problems.push(`${m.name} received out of order: ${m.order.join(",")}`);
  }
  if (polling.socket.io.engine.transport.name !== "polling") problems.push("the polling client upgraded");
  console.log(
    "RESULT " +
      JSON.stringify({
        events: stored.length,
        acked: acked.length,
        reconnects: { polling: polling.reconnects, websocket: ws.reconnects },
      }),
  );
  for (const p of problems) console.log("FAIL " + p);
  for (const m of members) m.socket.close();
  process.exit(problems.length ? 1 : 0);
}

main().catch((e) => {
  console.log("FAIL " + (e.stack ?? e));
  process.exit(1);
});
