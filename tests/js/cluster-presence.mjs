// Presence across the cluster (`cluster_presence_spans_the_nodes` in tests/cluster.rs): a
// presence room created on node 0; alice on node 0, bob on node 1, carol on node 2. Every
// member hears of the others (`dialogue:memberJoined`), `dialogue:presence` and the HTTP API
// list the three on any node; a second connection of alice on another node is no news, and
// the user counts it; bob leaving is told everywhere; node 2 killed (-9), carol is told gone.
//
// Env: DIALOGUE_NODES, DIALOGUE_API_KEY, PHASE_FILE. Prints `KILL {"index","name"}` and
// waits for the phase `stopped`.
import { io } from "socket.io-client";
import fs from "node:fs";

const NODES = process.env.DIALOGUE_NODES.split(",");
const KEY = process.env.DIALOGUE_API_KEY ?? "test-key";
const ROOM = "hall";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const note = (...a) => console.log(`# [${((Date.now() - t0) / 1000).toFixed(2)}s]`, ...a);
setTimeout(() => {
  console.log("FAIL the script took over 90 s");
  process.exit(1);
}, 90_000).unref();

const api = async (url, path, init = {}) => {
  const r = await fetch(url + path, {
    ...init,
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    signal: AbortSignal.timeout(10000),
  });
  return { status: r.status, json: await r.json().catch(() => null) };
};

async function waitPhase(name, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if (fs.readFileSync(process.env.PHASE_FILE, "utf8").trim() === name) return;
    } catch {}
    await sleep(50);
  }
  throw new Error(`no phase ${name} within ${ms} ms`);
}

/** Waits until `check()` is true (polling), or fails with `what`. */
async function until(what, check, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const last = await check();
    if (last === true) return;
    if (Date.now() > end) throw new Error(`${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

class Member {
  constructor(name, url) {
    this.name = name;
    this.joined = new Set();
    this.left = new Set();
    this.socket = io(url, { transports: ["websocket"], auth: { userId: name }, reconnection: false, forceNew: true });
    this.socket.on("dialogue:memberJoined", (m) => m.roomId === ROOM && m.userIds.forEach((u) => this.joined.add(u)));
    this.socket.on("dialogue:memberLeft", (m) => m.roomId === ROOM && m.userIds.forEach((u) => this.left.add(u)));
  }
  async join() {
    if (!this.socket.connected) await new Promise((r) => this.socket.once("connect", r));
    // The room was created on node 0: another node may hear of it a moment later.
    await until(`${this.name} joins ${ROOM}`, async () => {
      const ack = await this.socket.timeout(5000).emitWithAck("dialogue:join", { roomId: ROOM });
      return ack.ok === true || ack;
    });
  }
  async presence() {
    // The ack is the presence object (or an error).
    const p = await this.socket.timeout(5000).emitWithAck("dialogue:presence", { roomId: ROOM });
    return Object.fromEntries((p.members ?? []).map((m) => [m.userId, m.connections]));
  }
}

const same = (a, b) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

async function main() {
  const created = await api(NODES[0], "/api/rooms", {
    method: "POST",
    body: JSON.stringify({ id: ROOM, name: "Hall", presence: true }),
  });
  if (created.status !== 201 && created.status !== 200) throw new Error(`create: ${JSON.stringify(created)}`);
  const alice = new Member("alice", NODES[0]);
  const bob = new Member("bob", NODES[1]);
  const carol = new Member("carol", NODES[2]);
  for (const m of [alice, bob, carol]) await m.join();
  note("alice, bob and carol joined on nodes 0, 1, 2");

  const three = { alice: 1, bob: 1, carol: 1 };
  for (const m of [alice, bob, carol]) {
    await until(`${m.name}'s dialogue:presence lists the three`, async () => same(await m.presence(), three) || (await m.presence()));
  }
  await until("alice is told bob and carol came", () => (alice.joined.has("bob") && alice.joined.has("carol")) || [...alice.joined]);
  await until("bob is told carol came", () => bob.joined.has("carol") || [...bob.joined]);
  const viaApi = await api(NODES[2], `/api/rooms/${ROOM}/presence`);
  if (viaApi.json?.users !== 3) throw new Error(`GET presence on node 2: ${JSON.stringify(viaApi.json)}`);
  note("presence is the same on every node");

  // A second connection of alice, on node 1: no news for anyone; she counts twice. (A member
  // may have been told of alice once already: a node that heard of her after its member
  // joined tells it then.)
  for (const m of [bob, carol]) {
    m.joined.delete("alice");
    m.left.delete("alice");
  }
  const alice2 = new Member("alice", NODES[1]);
  await alice2.join();
  await until("carol counts alice's two connections", async () => (await carol.presence()).alice === 2 || (await carol.presence()));
  await sleep(300);
  if (carol.joined.has("alice") || bob.joined.has("alice")) throw new Error("alice's second connection was told as a newcomer");
  alice2.socket.emit("dialogue:leave", { roomId: ROOM });
  await until("carol counts alice once again", async () => (await carol.presence()).alice === 1 || (await carol.presence()));
  await sleep(300);
  if (carol.left.has("alice") || bob.left.has("alice")) throw new Error("alice was told gone while still connected on node 0");
  note("a second connection on another node is no news");

  await bob.socket.timeout(5000).emitWithAck("dialogue:leave", { roomId: ROOM });
  await until("alice and carol are told bob left", () => (alice.left.has("bob") && carol.left.has("bob")) || [[...alice.left], [...carol.left]]);
  await until("alice's presence lists alice and carol", async () => same(await alice.presence(), { alice: 1, carol: 1 }) || (await alice.presence()));
  note("bob's leaving is told on every node");

  const victim = (await (await fetch(`${NODES[2]}/readyz`)).json()).node;
  console.log(`KILL ${JSON.stringify({ index: 2, name: victim })}`);
  await waitPhase("stopped", 30000);
  await until("alice is told carol left when node 2 died", () => alice.left.has("carol") || [...alice.left], 15000);
  await until("alice's presence lists alice only", async () => same(await alice.presence(), { alice: 1 }) || (await alice.presence()));
  note("a dead node's users are told gone");
  console.log("RESULT " + JSON.stringify({ ok: true }));
  for (const m of [alice, bob, carol, alice2]) m.socket.close();
  process.exit(0);
}

main().catch((e) => {
  console.log("FAIL " + (e.stack ?? e));
  process.exit(1);
});
