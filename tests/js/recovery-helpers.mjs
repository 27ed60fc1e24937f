// Helpers for the connection-state recovery tests (tests/recovery.rs): a stock socket.io-client
// that records every event with all its arguments (the offset of a recovered stream is the
// last one), can present a pid of our choosing, and can lose its transport without a
// Socket.IO disconnect (which is what makes a session recoverable).
import { io } from "socket.io-client";
import { Client, URL } from "./helpers.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A Client (helpers.mjs) that also keeps every event's full argument list in `raw`. */
export class RecoveryClient extends Client {
  constructor(socket) {
    super(socket);
    this.raw = []; // {event, args}
    this.connects = []; // {recovered, pid, id} per "connect"
    socket.onAny((event, ...args) => this.raw.push({ event, args }));
    socket.on("connect", () =>
      this.connects.push({ recovered: socket.recovered, pid: socket._pid, id: socket.id }),
    );
  }

  /** The pid the server gave (socket.io-client keeps it in `_pid`). */
  get pid() {
    return this.socket._pid;
  }

  /** The offset the client would present on its next reconnect. */
  get offset() {
    return this.socket._lastOffset;
  }

  /** Every `dialogue:event` of (room, event) received so far, in arrival order. */
  events(roomId, event) {
    return this.all("dialogue:event").filter((e) => e.roomId === roomId && (event === undefined || e.event === event));
  }

  seqs(roomId, event) {
    return this.events(roomId, event).map((e) => e.seq);
  }

  /**
   * Cuts the transport (no Socket.IO DISCONNECT): the server sees a lost connection. With
   * `reconnect: false` the client stays away until `comeBack()`.
   */
  async cut({ reconnect = true } = {}) {
    this.socket.io.reconnection(reconnect);
    const gone = new Promise((r) => this.socket.once("disconnect", r));
    this.socket.io.engine.close();
    await gone;
  }

  /** Reconnects (after `cut({reconnect: false})`) and waits for the CONNECT answer. */
  async comeBack(timeoutMs = 10_000) {
    this.socket.io.reconnection(true);
    const connected = waitConnect(this.socket, timeoutMs);
    this.socket.connect();
    await connected;
    return this.connects.at(-1);
  }

  /** Waits for the next "connect" (an automatic reconnection). */
  nextConnect(timeoutMs = 10_000) {
    return waitConnect(this.socket, timeoutMs).then(() => this.connects.at(-1));
  }
}

function waitConnect(socket, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off("connect", ok);
      reject(new Error(`no connect within ${timeoutMs} ms`));
    }, timeoutMs);
    const ok = () => {
      clearTimeout(timer);
      resolve();
    };
    socket.once("connect", ok);
  });
}

/**
 * Connects a stock client (automatic reconnection with short delays, WebSocket only) to `url`.
 * `pid`/`offset`: presented in the first CONNECT as if this client had been given them (what a
 * client that stole or made them up would send).
 */
export async function rconnect(userId, { url = URL, pid, offset, ...opts } = {}) {
  const socket = io(url, {
    transports: ["websocket"],
    auth: userId === undefined ? {} : { userId },
    forceNew: true,
    autoConnect: false,
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
    ...opts,
  });
  if (pid !== undefined) {
    socket._pid = pid;
    socket._lastOffset = offset;
  }
  const client = new RecoveryClient(socket);
  const connected = new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  socket.connect();
  await connected;
  return client;
}

/** Triggers and asserts the ack is ok; returns the seq. */
export async function post(client, roomId, event, data = {}) {
  const r = await client.request("dialogue:trigger", { roomId, event, data });
  if (!r.ok) throw new Error(`trigger ${roomId}/${event} refused: ${JSON.stringify(r)}`);
  return r.seq;
}

export { sleep };
