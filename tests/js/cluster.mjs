// The cluster tests' library (tests/cluster.rs): several nodes of one cluster, named by
// `DIALOGUE_NODES` (comma-separated http URLs), the HTTP API key in `DIALOGUE_API_KEY`
// (default "test-key"). Clients are the stock socket.io-client over WebSocket.
//
// - `api`, `readyz`, `nodeNames`, `roomView`, `waitOwner`: what the nodes say, and which node
//   owns a room (`GET /api/stats`: each room's `role` and `owner`; `GET /readyz`: `node`).
// - `Member`: a client that records every `message` event of its rooms, and that can move to
//   another node when its own goes away and resume there with `since` and `epoch`.
// - `Load`: senders triggering distinct payloads back-to-back, retrying STORAGE_UNAVAILABLE
//   (after 200 ms) with the same payload; every attempt is recorded.
// - `readHistory`: the whole history of a room through the API (paged with `before`);
//   `checkHistory`, `checkAcked`, `checkStream`, `compareHistories`: the checks every test
//   makes: seqs 1..N without gap, every acked payload at its seq, a payload twice only if it
//   was retried, each client's stream equal to the history (exactly once, in order, same
//   epoch), the same history on every node.
import { io } from "socket.io-client";
import { existsSync, readFileSync } from "node:fs";

export const NODES = (process.env.DIALOGUE_NODES ?? "")
  .split(",")
  .map((s) => s.trim().replace(/\/$/, ""))
  .filter(Boolean);
if (NODES.length === 0) throw new Error("DIALOGUE_NODES is not set (run through cargo test)");
export const KEY = process.env.DIALOGUE_API_KEY ?? "test-key";
export const EVENT = "message";
export const RETRY_MS = 200;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const out = (line) => process.stdout.write(line + "\n");
/** A diagnostic line, with the time since the script started. */
const T0 = Date.now();
export const note = (what, obj) =>
  out(`# [${((Date.now() - T0) / 1000).toFixed(2)}s] ${what}${obj === undefined ? "" : " " + JSON.stringify(obj)}`);

// ---------------------------------------------------------------------------------------
// HTTP

/** `fetch` with the API key and a timeout; never throws: `{status: 0, error}` when nothing answered. */
export async function api(url, path, { method = "GET", body, timeoutMs = 5000, key = KEY } = {}) {
  try {
    const res = await fetch(url + path, {
      method,
      headers: {
        ...(key ? { Authorization: `Bearer ${key}` } : {}),
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.status, json, text };
  } catch (e) {
    return { status: 0, json: null, text: "", error: String(e?.cause?.code ?? e?.message ?? e) };
  }
}

export const readyz = (url) => api(url, "/readyz", { key: null, timeoutMs: 3000 });

/** `{url: nodeName}` from each node's `/readyz` (retried for up to `timeoutMs`). */
export async function nodeNames(urls = NODES, timeoutMs = 15000) {
  const names = {};
  const end = Date.now() + timeoutMs;
  for (const url of urls) {
    for (;;) {
      const r = await readyz(url);
      if (typeof r.json?.node === "string") {
        names[url] = r.json.node;
        break;
      }
      if (Date.now() > end) throw new Error(`no node name in ${url}/readyz: ${r.status} ${r.text}`);
      await sleep(100);
    }
  }
  return names;
}

let NAMES = null;
/** The node name of every URL of `NODES`, read once. */
export async function names() {
  NAMES ??= await nodeNames();
  return NAMES;
}

/** What each node in `urls` says of `room` in `/api/stats`: [{url, index, name, role, owner, entry, status}]. */
export async function roomView(room, urls = NODES) {
  const byUrl = await names();
  return Promise.all(
    urls.map(async (url) => {
      const r = await api(url, "/api/stats", { timeoutMs: 3000 });
      const entry = Array.isArray(r.json?.rooms) ? r.json.rooms.find((x) => x?.id === room) : undefined;
      return {
        url,
        index: NODES.indexOf(url),
        name: byUrl[url],
        status: r.status,
        role: entry?.role,
        owner: entry?.owner,
        answering: entry?.answering,
      };
    }),
  );
}

/**
 * The owner when exactly one node says `role: owner` and every other node that lists the
 * room (with a `role`) names it as `owner`.
 */
export function settledOwner(view) {
  const owners = view.filter((v) => v.role === "owner");
  if (owners.length !== 1) return null;
  const [owner] = owners;
  if (view.some((v) => v !== owner && v.role !== undefined && v.owner !== owner.name)) return null;
  return owner;
}

/**
 * Waits until the nodes in `urls` agree on one owner of `room` (other than `not`, a node
 * name, when given): `{url, index, name}`. Throws with every node's view after `timeoutMs`.
 */
export async function waitOwner(room, { urls = NODES, not = null, timeoutMs = 20000 } = {}) {
  const end = Date.now() + timeoutMs;
  let view = [];
  for (;;) {
    view = await roomView(room, urls);
    const owner = settledOwner(view);
    if (owner && owner.name !== not) return { url: owner.url, index: owner.index, name: owner.name };
    if (Date.now() > end) {
      throw new Error(
        `no settled owner of ${room}${not ? ` other than ${not}` : ""} after ${timeoutMs} ms; ` +
          `the nodes say: ${JSON.stringify(view)}`,
      );
    }
    await sleep(100);
  }
}

/** Every node's view of every room in `rooms`, for diagnostics: {room: [{name, role, owner}]}. */
export async function ownershipReport(rooms, urls = NODES) {
  const report = {};
  for (const room of rooms) {
    report[room] = (await roomView(room, urls)).map((v) => ({
      node: v.name,
      url: v.url,
      status: v.status,
      role: v.role ?? null,
      owner: v.owner ?? null,
    }));
  }
  return report;
}

/**
 * The whole history of (room, EVENT) read from node `url` through the API, oldest first,
 * paged by cursor (`before`, 1,000 a page). Retries for up to `timeoutMs` while the node
 * answers an error (a room being taken over).
 */
export async function readHistory(url, room, { timeoutMs = 20000 } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const rows = [];
    let before = Number.MAX_SAFE_INTEGER;
    let error = null;
    for (let guard = 0; guard < 10000; guard++) {
      const r = await api(url, `/api/rooms/${encodeURIComponent(room)}/history/${EVENT}?before=${before}&limit=1000`, {
        timeoutMs: 10000,
      });
      if (r.status !== 200 || !Array.isArray(r.json?.events)) {
        error = `${r.status} ${r.error ?? r.text}`;
        break;
      }
      rows.push(...r.json.events);
      if (!r.json.hasMore || r.json.events.length === 0) break;
      const next = r.json.events.at(-1).seq;
      if (!(next < before)) {
        error = `page before ${before} went back to ${next}`;
        break;
      }
      before = next;
    }
    if (error === null) {
      return rows.reverse().map((e) => ({ seq: e.seq, epoch: e.epoch ?? 0, text: e.data?.text, from: e.from }));
    }
    if (Date.now() > end) throw new Error(`history of ${room} on ${url}: ${error}`);
    await sleep(250);
  }
}

/** The history of `room` from the first node of `urls` that gives it: `{url, history}`. */
export async function readHistoryAny(urls, room, { timeoutMs = 20000 } = {}) {
  const errors = [];
  for (const url of urls) {
    try {
      return { url, history: await readHistory(url, room, { timeoutMs: timeoutMs / urls.length }) };
    } catch (e) {
      errors.push(e.message);
    }
  }
  throw new Error(`no node gave the history of ${room}: ${errors.join("; ")}`);
}

/**
 * The history of `room` on each of `urls` must equal `history` (read from `from`); the
 * differences (or read failures) as sentences.
 */
export async function compareHistories(room, history, from, urls, { timeoutMs = 10000 } = {}) {
  const problems = [];
  for (const url of urls) {
    if (url === from) continue;
    let h;
    try {
      h = await readHistory(url, room, { timeoutMs });
    } catch (e) {
      problems.push(`${room}: ${e.message}`);
      continue;
    }
    if (JSON.stringify(h) !== JSON.stringify(history)) {
      const i = history.findIndex((r, k) => JSON.stringify(r) !== JSON.stringify(h[k]));
      const at = i < 0 ? history.length : i;
      problems.push(
        `${room}: the history on ${url} (${h.length} rows) differs from ${from}'s (${history.length}) at position ${at}: ` +
          `${JSON.stringify(h[at] ?? null)} vs ${JSON.stringify(history[at] ?? null)}`,
      );
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------
// Phases written by the Rust side (`PHASE_FILE`).

/** Waits until `PHASE_FILE` holds `name`; throws after `timeoutMs`. */
export async function phase(name, timeoutMs = 60000) {
  const file = process.env.PHASE_FILE;
  if (!file) throw new Error("PHASE_FILE is not set");
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (existsSync(file) && readFileSync(file, "utf8").trim() === name) return;
    await sleep(25);
  }
  throw new Error(`the test never reached phase ${name} (${timeoutMs} ms)`);
}

// ---------------------------------------------------------------------------------------
// Clients

/**
 * A client on one node, a member of `rooms`, recording each `message` event it receives:
 * `streams[room] = [{seq, epoch, text, from, t, gen}]` in arrival order (`gen` counts its
 * connections). `failover(urls)` makes it go to the first of `urls` that takes it when its
 * connection drops, and resume each room there with `since` and `epoch`.
 */
export class Member {
  constructor(label, url, rooms) {
    this.label = label;
    this.url = url;
    this.rooms = rooms;
    this.streams = Object.fromEntries(rooms.map((r) => [r, []]));
    this.socket = null;
    this.gen = 0;
    this.joins = []; // {room, url, since, epoch, ack, t}
    this.drops = []; // {url, reason, t}
    this.problems = []; // what went wrong, as sentences
    this.others = []; // events of other names / rooms (should be none)
    this.heard = {}; // other server events by name (the first 100 of each)
    this.moveTo = null;
    this.moving = null;
  }

  static async open(label, url, rooms) {
    const m = new Member(label, url, rooms);
    await m.connect(url);
    for (const room of rooms) await m.join(room);
    return m;
  }

  get connected() {
    return !!this.socket?.connected && !this.moving;
  }

  last(room) {
    return this.streams[room].at(-1);
  }

  /** Connects to `url` (the old socket, if any, is closed first). */
  async connect(url, timeoutMs = 10000) {
    this.socket?.removeAllListeners();
    this.socket?.close();
    const gen = ++this.gen;
    const socket = io(url, {
      transports: ["websocket"],
      auth: { userId: this.label, recovery: false },
      reconnection: false,
      forceNew: true,
      timeout: timeoutMs,
    });
    socket.on("dialogue:event", (e) => {
      if (gen !== this.gen) return;
      if (e?.event === EVENT && this.streams[e.roomId]) {
        this.streams[e.roomId].push({
          seq: e.seq,
          epoch: e.epoch ?? 0,
          text: e.data?.text,
          from: e.from,
          t: Date.now(),
          gen,
        });
      } else {
        this.others.push(e);
      }
    });
    socket.onAny((name, payload) => {
      if (gen !== this.gen || name === "dialogue:event") return;
      const list = (this.heard[name] ??= []);
      if (list.length < 100) list.push(payload);
    });
    socket.on("disconnect", (reason) => {
      if (gen !== this.gen) return;
      this.drops.push({ url, reason, t: Date.now() });
      note(`${this.label} lost its connection to ${url}: ${reason}`);
      if (this.moveTo) this.moving ??= this.#move().finally(() => (this.moving = null));
    });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.label}: connect to ${url} timed out`)), timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once("connect_error", (e) => {
        clearTimeout(timer);
        reject(new Error(`${this.label}: connect to ${url}: ${e.message}`));
      });
    }).catch((e) => {
      socket.close();
      throw e;
    });
    this.socket = socket;
    this.url = url;
  }

  /** Emits with an ack: the ack, or `{ok: false, code: "TIMEOUT" | "DISCONNECTED"}`. */
  async request(event, payload, timeoutMs = 20000) {
    const socket = this.socket;
    if (!socket?.connected) return { ok: false, code: "DISCONNECTED", message: "not connected" };
    try {
      return await socket.timeout(timeoutMs).emitWithAck(event, payload);
    } catch (e) {
      return {
        ok: false,
        code: socket.connected ? "TIMEOUT" : "DISCONNECTED",
        message: String(e?.message ?? e),
      };
    }
  }

  /**
   * Joins `room`, with `since`/`epoch` of the last event it has when it has one (then the
   * ack must say `resumed: true`). Retries STORAGE_UNAVAILABLE and timeouts for up to
   * `timeoutMs`; throws on anything else.
   */
  async join(room, timeoutMs = 20000) {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const last = this.last(room);
      const payload = last ? { roomId: room, since: { [EVENT]: last.seq }, epoch: last.epoch } : { roomId: room };
      const ack = await this.request("dialogue:join", payload, 15000);
      this.joins.push({ room, url: this.url, since: last?.seq ?? null, epoch: last?.epoch ?? null, ack, t: Date.now() });
      if (ack.ok) {
        if (last) {
          note(`${this.label} resumed ${room} on ${this.url} from seq ${last.seq} epoch ${last.epoch}`, ack.resume);
          if (ack.resume?.resumed !== true) {
            this.problems.push(
              `${this.label}: the join of ${room} on ${this.url} with since ${last.seq}, epoch ${last.epoch} ` +
                `did not resume: ${JSON.stringify(ack)}`,
            );
          }
        }
        return ack;
      }
      const retryable = ["STORAGE_UNAVAILABLE", "TIMEOUT"].includes(ack.code);
      if (!retryable || Date.now() > end) {
        throw new Error(`${this.label}: join ${room} on ${this.url}: ${JSON.stringify(ack)}`);
      }
      await sleep(RETRY_MS);
    }
  }

  /**
   * From now on, a dropped connection moves this client to the first of `urls` that takes
   * it; `before()`, when given, is awaited first (at most 30 s), so that it stays away a while.
   */
  failover(urls, before = null) {
    this.moveTo = urls;
    this.moveBefore = before;
  }

  async #move() {
    if (this.moveBefore) await Promise.race([this.moveBefore(), sleep(30000)]);
    const end = Date.now() + 30000;
    while (this.moveTo && Date.now() < end) {
      for (const url of [...this.moveTo]) {
        if (!this.moveTo) return; // closed meanwhile
        try {
          await this.connect(url, 5000);
          for (const room of this.rooms) await this.join(room, Math.max(1000, end - Date.now()));
          note(`${this.label} moved to ${url}`);
          this.moved = { url, t: Date.now() };
          return;
        } catch (e) {
          note(`${this.label} could not move to ${url}: ${e.message}`);
        }
      }
      await sleep(RETRY_MS);
    }
    if (this.moveTo) this.problems.push(`${this.label}: could not reconnect to any of ${this.moveTo.join(", ")} within 30 s`);
  }

  /** Waits until connected (and not moving), up to `timeoutMs`; false when it did not happen. */
  async ready(timeoutMs) {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (this.moving) await Promise.race([this.moving, sleep(Math.max(0, end - Date.now()))]);
      if (this.connected) return true;
      if (!this.moveTo) return false;
      await sleep(25);
    }
    return this.connected;
  }

  async trigger(room, data, timeoutMs = 20000) {
    return this.request("dialogue:trigger", { roomId: room, event: EVENT, data }, timeoutMs);
  }

  /** Waits until it holds `seq` (the newest) of `room`; false after `timeoutMs`. */
  async waitSeq(room, seq, timeoutMs) {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (!this.moving && (this.last(room)?.seq ?? 0) >= seq) return true;
      await sleep(25);
    }
    return (this.last(room)?.seq ?? 0) >= seq;
  }

  close() {
    this.moveTo = null;
    this.socket?.removeAllListeners();
    this.socket?.close();
  }
}

// ---------------------------------------------------------------------------------------
// Load

/** Codes a lane retries with the same payload (only STORAGE_UNAVAILABLE is the server's word for it). */
const RETRIED = new Set(["STORAGE_UNAVAILABLE", "TIMEOUT", "DISCONNECTED"]);

/**
 * Senders: each lane is one member triggering into one room, a payload at a time (awaiting
 * its ack, then `gapMs`), text `<label>-<room>-<n>`. A payload refused with a retryable
 * code is sent again after 200 ms, for up to `payloadMs`. Records:
 * `{text, room, member, url, seq, epoch?, sentAt, okSentAt, ackAt, attempts: [{t, ms, url, code, message}], failed}`.
 */
export class Load {
  constructor({ gapMs = 20, payloadMs = 30000, ackTimeoutMs = 20000 } = {}) {
    this.gapMs = gapMs;
    this.payloadMs = payloadMs;
    this.ackTimeoutMs = ackTimeoutMs;
    this.records = [];
    this.lanes = [];
    this.stopped = false;
  }

  start(lanes) {
    for (const { member, room } of lanes) this.lanes.push(this.#lane(member, room));
  }

  /** Sends one payload to the end (acked, or given up): its record. */
  async send(member, room, text, { retry = true } = {}) {
    const rec = { text, room, member: member.label, url: member.url, seq: null, sentAt: Date.now(), attempts: [] };
    this.records.push(rec);
    const end = Date.now() + this.payloadMs;
    for (;;) {
      if (!member.connected) await member.ready(Math.max(0, end - Date.now()));
      const t = Date.now();
      const url = member.url;
      const r = await member.trigger(room, { text, username: member.label }, this.ackTimeoutMs);
      if (r.ok) {
        rec.seq = r.seq;
        rec.okSentAt = t;
        rec.ackAt = Date.now();
        rec.url = url;
        return rec;
      }
      rec.attempts.push({ t, ms: Date.now() - t, url, code: r.code ?? "NO_CODE", message: r.message });
      if (!retry || !RETRIED.has(r.code) || Date.now() > end) {
        rec.failed = true;
        return rec;
      }
      await sleep(RETRY_MS);
    }
  }

  async #lane(member, room) {
    let n = 0;
    while (!this.stopped) {
      await this.send(member, room, `${member.label}-${room}-${++n}`);
      await sleep(this.gapMs);
    }
  }

  /** Stops the lanes; each finishes the payload it is sending. */
  async stop() {
    this.stopped = true;
    await Promise.all(this.lanes);
  }

  acked() {
    return this.records.filter((r) => r.seq !== null);
  }

  summary() {
    const codes = {};
    for (const r of this.records) for (const a of r.attempts) codes[a.code] = (codes[a.code] ?? 0) + 1;
    return {
      payloads: this.records.length,
      acked: this.acked().length,
      retried: this.records.filter((r) => r.attempts.length > 0).length,
      failed: this.records.filter((r) => r.failed).length,
      attemptErrors: codes,
    };
  }
}

// ---------------------------------------------------------------------------------------
// Checks

const short = (rows) => JSON.stringify(rows.slice(0, 5)) + (rows.length > 5 ? ` … (${rows.length})` : "");

/** History rows must be seq 1..N in order (no gap, no seq twice). */
export function checkHistory(room, history) {
  const problems = [];
  history.forEach((row, i) => {
    if (row.seq !== i + 1) {
      problems.push(`${room}: history position ${i} holds seq ${row.seq}, expected ${i + 1} (around: ${JSON.stringify(history.slice(Math.max(0, i - 2), i + 3))})`);
    }
  });
  for (let i = 1; i < history.length; i++) {
    if (history[i].epoch < history[i - 1].epoch) {
      problems.push(`${room}: the epoch goes down at seq ${history[i].seq}: ${history[i - 1].epoch} → ${history[i].epoch}`);
    }
  }
  return problems.slice(0, 20);
}

/**
 * Every acked payload of `records` in `room` is in the history at its acked seq; a payload
 * in the history twice was retried by its client (`anyDuplicate`: or by a node, unseen by
 * the client: a trigger forwarded to an owner that died); no payload is unknown (`extra`:
 * texts sent otherwise).
 */
export function checkAcked(room, history, records, extra = new Set(), { anyDuplicate = false } = {}) {
  const problems = [];
  const bySeq = new Map(history.map((r) => [r.seq, r]));
  const mine = records.filter((r) => r.room === room);
  for (const rec of mine) {
    if (rec.seq === null) continue;
    const row = bySeq.get(rec.seq);
    if (!row) problems.push(`${room}: acked ${rec.text} (seq ${rec.seq}, via ${rec.url}) is missing from the history (${history.length} rows)`);
    else if (row.text !== rec.text) {
      problems.push(`${room}: acked ${rec.text} got seq ${rec.seq}, but the history holds ${row.text} (epoch ${row.epoch}) there`);
    }
  }
  const sent = new Map(mine.map((r) => [r.text, r]));
  const count = new Map();
  for (const row of history) count.set(row.text, (count.get(row.text) ?? 0) + 1);
  for (const [text, n] of count) {
    const rec = sent.get(text);
    if (!rec && !extra.has(text)) problems.push(`${room}: the history holds ${text}, which nobody sent (${n}×)`);
    if (n > 1 && !anyDuplicate && !(rec && rec.attempts.length > 0)) {
      const seqs = history.filter((r) => r.text === text).map((r) => `${r.seq}@${r.epoch}`);
      problems.push(`${room}: ${text} is in the history ${n}× (seqs ${seqs.join(", ")}) but was sent once`);
    }
  }
  return problems.slice(0, 30);
}

/** The payloads the history holds more than once: [{text, seqs: ["seq@epoch", …]}]. */
export function duplicates(history) {
  const at = new Map();
  for (const r of history) at.set(r.text, [...(at.get(r.text) ?? []), `${r.seq}@${r.epoch}`]);
  return [...at].filter(([, seqs]) => seqs.length > 1).map(([text, seqs]) => ({ text, seqs }));
}

/**
 * A client's stream of `room` must be the history from seq `from` to the end: each event
 * once, in seq order, with the history's payload and epoch at that seq.
 */
export function checkStream(member, room, history, from) {
  const problems = [];
  const stream = member.streams[room];
  const who = `${member.label} (${room})`;
  const bySeq = new Map(history.map((r) => [r.seq, r]));
  const seen = new Map();
  for (let i = 0; i < stream.length; i++) {
    const e = stream[i];
    const row = bySeq.get(e.seq);
    if (seen.has(e.seq)) {
      const first = seen.get(e.seq);
      problems.push(
        first.text === e.text && first.epoch === e.epoch
          ? `${who}: seq ${e.seq} (${e.text}) received twice (connections ${first.gen} and ${e.gen})`
          : `${who}: seq ${e.seq} names two events: ${first.text}@${first.epoch} and ${e.text}@${e.epoch}`,
      );
    }
    seen.set(e.seq, e);
    if (!row) problems.push(`${who}: received seq ${e.seq} (${e.text}) that the history does not hold`);
    else if (row.text !== e.text || row.epoch !== e.epoch) {
      problems.push(`${who}: seq ${e.seq} is ${e.text}@${e.epoch} here but ${row.text}@${row.epoch} in the history`);
    }
    if (i > 0 && e.seq !== stream[i - 1].seq + 1) {
      const gap = e.seq > stream[i - 1].seq + 1;
      problems.push(
        `${who}: after seq ${stream[i - 1].seq} came ${e.seq} (${gap ? `missing ${stream[i - 1].seq + 1}..${e.seq - 1}` : "out of order"}; ` +
          `connection ${stream[i - 1].gen} → ${e.gen})`,
      );
    }
  }
  const want = history.filter((r) => r.seq >= from);
  if (want.length > 0) {
    if (stream.length === 0) problems.push(`${who}: received nothing; expected seqs ${from}..${history.length}`);
    else {
      if (stream[0].seq !== from) problems.push(`${who}: the first event received is seq ${stream[0].seq}, expected ${from}`);
      const missing = want.filter((r) => !seen.has(r.seq)).map((r) => r.seq);
      if (missing.length > 0) problems.push(`${who}: missing seqs ${short(missing)} (of ${from}..${history.length})`);
    }
  }
  return problems.slice(0, 20);
}

/** Prints the problems as `FAIL` lines; true when there were none. */
export function report(problems) {
  for (const p of problems) out(`FAIL ${p}`);
  return problems.length === 0;
}

/**
 * Ends a plain script after `ms` whatever happens (every test is bounded); `state()`, when
 * given, says what is known at that point (printed as a diagnostic).
 */
export function watchdog(ms, what, state = null) {
  setTimeout(() => {
    out(`FAIL ${what} took longer than ${ms / 1000} s`);
    try {
      if (state) note("state", state());
    } catch (e) {
      note(`no state: ${e.message}`);
    }
    process.exit(1);
  }, ms).unref();
}

/**
 * Waits until every member holds the newest seq of each room (`newest = {room: seq}`), all
 * within one `timeoutMs`; the ones that did not, as sentences.
 */
export async function catchUp(members, newest, timeoutMs) {
  const end = Date.now() + timeoutMs;
  const behind = [];
  for (const m of members) {
    for (const [room, seq] of Object.entries(newest)) {
      if (!(await m.waitSeq(room, seq, Math.max(0, end - Date.now())))) {
        behind.push(
          `${m.label} (on ${m.url}) did not catch up to seq ${seq} of ${room} within ${timeoutMs} ms: ` +
            `it has ${m.streams[room].length} events, the last ${JSON.stringify(m.last(room) ?? null)}`,
        );
      }
    }
  }
  return behind;
}

/** A member's state, short, for diagnostics. */
export function describe(m) {
  return {
    label: m.label,
    url: m.url,
    connected: m.connected,
    drops: m.drops.length,
    last: Object.fromEntries(Object.entries(m.streams).map(([room, s]) => [room, s.at(-1)?.seq ?? 0])),
    problems: m.problems.slice(0, 3),
  };
}
