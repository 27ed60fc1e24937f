// `durability: stored` while the database is down (run by tests/persistence.rs, which ends the
// outage when this prints REFUSED): triggers are sent without waiting until one is refused
// with STORAGE_UNAVAILABLE; every answer is then awaited. Prints `RESULT {acked, refused}`.
import { connect, sleep } from "./helpers.mjs";

const c = await connect("writer");
const joined = await c.request("dialogue:join", { roomId: "hist" });
if (!joined.ok) throw new Error(JSON.stringify(joined));

const acked = [];
const refused = [];
const answers = [];
let refusal = null;
for (let i = 1; i <= 2000 && !refusal; i++) {
  const text = `s${i}`;
  answers.push(
    c.socket
      .timeout(90_000)
      .emitWithAck("dialogue:trigger", { roomId: "hist", event: "message", data: { text, username: "p" } })
      .then((r) => {
        if (r.ok) acked.push({ seq: r.seq, text });
        else {
          refused.push({ text, code: r.code });
          refusal ??= r;
        }
      }),
  );
  await sleep(20);
}
if (!refusal) throw new Error("no trigger was refused while the database was down");
console.log(`REFUSED ${JSON.stringify(refusal)}`);
await Promise.all(answers);
console.log(`RESULT ${JSON.stringify({ acked, refused })}`);
c.close();
process.exit(0);
