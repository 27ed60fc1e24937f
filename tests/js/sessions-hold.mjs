// Holds COUNT stock socket.io-client connections, each with a recoverable session that joined
// a room (the join's ack comes once the session is saved), and prints HELD <n>; then stays
// until the harness (tests/recovery.rs) stops it. No event is triggered.
import { io } from "socket.io-client";

const URL = process.env.DIALOGUE_URL;
const COUNT = Number(process.env.COUNT ?? 200);
const AT_ONCE = 25;
setTimeout(() => {
  console.log("FAIL took longer than 120 s");
  process.exit(1);
}, 120_000);

async function hold(i) {
  const socket = io(URL, { transports: ["websocket"], auth: { userId: `held-${i}` }, forceNew: true });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  const ack = await socket.timeout(10_000).emitWithAck("dialogue:join", { roomId: "r1" });
  if (!ack.ok) throw new Error(`join: ${JSON.stringify(ack)}`);
}

let next = 0;
let held = 0;
try {
  await Promise.all(
    Array.from({ length: AT_ONCE }, async () => {
      while (next < COUNT) {
        await hold(next++);
        held++;
      }
    }),
  );
} catch (e) {
  console.log(`FAIL ${e}`);
  process.exit(1);
}
console.log(`HELD ${held}`);
