// Test helpers around the official socket.io-client: connect, record every event, wait for
// one, and a raw WebSocket for protocol-level abuse.
import { io } from "socket.io-client";
import WebSocket from "ws";
import assert from "node:assert/strict";

export const URL = process.env.DIALOGUE_URL;
if (!URL) throw new Error("DIALOGUE_URL is not set (run through cargo test)");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export { sleep };

/** A connected client that records every event it receives. */
export async function connect(userId, opts = {}) {
  const socket = io(URL, {
    transports: ["websocket"],
    auth: userId === undefined ? {} : { userId },
    reconnection: false,
    forceNew: true,
    ...opts,
  });
  const client = new Client(socket);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return client;
}

export class Client {
  constructor(socket) {
    this.socket = socket;
    this.log = [];
    this.consumed = new Set();
    this.listeners = [];
    socket.onAny((event, ...args) => {
      this.log.push({ event, payload: args[0] });
      for (const l of [...this.listeners]) l();
    });
  }

  /** Waits for an event (not returned before) whose payload satisfies `pred`. */
  waitFor(event, pred = () => true, timeoutMs = 5000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = 0; i < this.log.length; i++) {
          const e = this.log[i];
          if (!this.consumed.has(i) && e.event === event && pred(e.payload)) {
            this.consumed.add(i);
            cleanup();
            resolve(e.payload);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${event}; got ${JSON.stringify(this.log.map((e) => e.event))}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.listeners = this.listeners.filter((l) => l !== check);
      };
      if (!check()) this.listeners.push(check);
    });
  }

  /** Every payload of `event` received so far. */
  all(event) {
    return this.log.filter((e) => e.event === event).map((e) => e.payload);
  }

  /** Asserts that no `event` matching `pred` arrives within `ms`. */
  async expectNone(event, pred = () => true, ms = 300) {
    await sleep(ms);
    const got = this.log.filter((e) => e.event === event && pred(e.payload));
    assert.equal(got.length, 0, `unexpected ${event}: ${JSON.stringify(got)}`);
  }

  /** Emits with an ack and returns the ack payload. */
  request(event, payload) {
    return this.socket.timeout(5000).emitWithAck(event, payload);
  }

  /** Emits with an ack, asserts it failed with `code`, and that dialogue:error said so too. */
  async expectError(event, payload, code) {
    const ack = await this.request(event, payload);
    assert.equal(ack.ok, false, `expected ${code}, got ${JSON.stringify(ack)}`);
    assert.equal(ack.code, code, ack.message);
    const err = await this.waitFor("dialogue:error", (e) => e.code === code);
    assert.equal(typeof err.message, "string");
    return ack;
  }

  close() {
    this.socket.close();
  }
}

/** A raw Engine.IO WebSocket, for sending what no well-behaved client sends. */
export function rawSocket() {
  const wsUrl = URL.replace(/^http/, "ws") + "/socket.io/?EIO=4&transport=websocket";
  const ws = new WebSocket(wsUrl);
  const frames = [];
  const closed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
  ws.on("message", (data) => frames.push(data.toString()));
  ws.on("error", () => {});
  const opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return { ws, frames, closed, opened };
}

/** Waits until `fn()` is truthy (polling), or fails after `ms`. */
export async function eventually(fn, ms = 5000, what = "condition") {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * The newest seq the server holds of each (room, event) in `streams` ([[room, event], …]),
 * read through `socket` (retrying while rooms restart): {"room/event": seq}. Throws when a
 * stream cannot be read.
 */
export async function newestSeqs(socket, streams) {
  const newest = {};
  for (const [room, ev] of streams) {
    let page;
    for (let tries = 0; tries < 50; tries++) {
      try {
        page = await socket
          .timeout(3000)
          .emitWithAck("dialogue:getHistory", { roomId: room, eventName: ev, start: 0, end: 1 });
        if (page.ok) break;
      } catch {}
      await sleep(100);
    }
    if (!page?.ok) throw new Error(`no history of ${room}/${ev}: ${JSON.stringify(page)}`);
    newest[`${room}/${ev}`] = page.events[0]?.seq ?? 0;
  }
  return newest;
}
