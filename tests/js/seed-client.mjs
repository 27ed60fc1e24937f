// A model of the dialogue-ts browser client the seed document uses ("Client-Side Infinite
// Scroll": createDialogueClient, onHistory, connect, join, room.on, room.getHistory), on top of
// the stock socket.io-client. Like any client library that survives reconnects, it joins the
// rooms it holds again after every reconnection (plain `dialogue:join {roomId}`, no since): with
// connection-state recovery the server keeps those rooms and must not send their join history
// again, so an application that pushes what onHistory gives gets no duplicate.
import { io } from "socket.io-client";

export function createDialogueClient({ url, auth, ...options }) {
  const socket = io(url, {
    auth,
    autoConnect: false,
    transports: ["websocket"],
    ...options,
  });
  const historyHandlers = [];
  const rooms = new Map(); // roomId -> Room
  const stats = { connects: [], rejoins: [], histories: 0 };
  let connectedOnce = false;

  socket.on("dialogue:history", ({ roomId, events }) => {
    stats.histories++;
    for (const handler of historyHandlers) handler(roomId, events);
  });
  socket.on("dialogue:event", (msg) => rooms.get(msg.roomId)?.dispatch(msg));
  socket.on("connect", () => {
    stats.connects.push({ recovered: socket.recovered === true, pid: socket._pid });
    if (!connectedOnce) {
      connectedOnce = true;
      return;
    }
    for (const roomId of rooms.keys()) {
      socket
        .timeout(10_000)
        .emitWithAck("dialogue:join", { roomId })
        .then((ack) => stats.rejoins.push({ roomId, ok: ack.ok, code: ack.code }))
        .catch((e) => stats.rejoins.push({ roomId, ok: false, error: String(e) }));
    }
  });

  class Room {
    constructor(id) {
      this.id = id;
      this.handlers = new Map(); // event name -> [callback]
    }
    on(eventName, callback) {
      if (!this.handlers.has(eventName)) this.handlers.set(eventName, []);
      this.handlers.get(eventName).push(callback);
      return () => this.handlers.set(eventName, this.handlers.get(eventName).filter((c) => c !== callback));
    }
    dispatch(msg) {
      for (const callback of this.handlers.get(msg.event) ?? []) callback(msg);
    }
    /** Events `start`..`end` (positions from the newest, end exclusive), newest first. */
    async getHistory(eventName, start = 0, end = 50) {
      const ack = await socket.timeout(10_000).emitWithAck("dialogue:getHistory", { roomId: this.id, eventName, start, end });
      if (!ack.ok) throw new Error(`getHistory: ${ack.code}: ${ack.message}`);
      return ack.events;
    }
    async leave() {
      rooms.delete(this.id);
      await socket.timeout(10_000).emitWithAck("dialogue:leave", { roomId: this.id });
    }
  }

  return {
    socket,
    stats,
    onHistory(handler) {
      historyHandlers.push(handler);
    },
    connect() {
      return new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
        socket.connect();
      });
    },
    async join(roomId) {
      const ack = await socket.timeout(10_000).emitWithAck("dialogue:join", { roomId });
      if (!ack.ok) throw new Error(`join ${roomId}: ${ack.code}: ${ack.message}`);
      const room = rooms.get(roomId) ?? new Room(roomId);
      rooms.set(roomId, room);
      return room;
    },
    disconnect() {
      socket.disconnect();
    },
  };
}
