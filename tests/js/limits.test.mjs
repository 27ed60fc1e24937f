// Per-connection rate limits (triggersPerSecond: 5, historyRequestsPerMinute: 3).
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "./helpers.mjs";

test("trigger and history rates are limited per connection with RATE_LIMITED", async () => {
  const a = await connect("hasty");
  await a.waitFor("dialogue:joined");
  const results = [];
  for (let i = 0; i < 12; i++) {
    results.push(await a.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `r${i}`, username: "h" } }));
  }
  const ok = results.filter((r) => r.ok).length;
  const limited = results.filter((r) => !r.ok && r.code === "RATE_LIMITED").length;
  assert.ok(ok >= 5 && ok <= 7, `ok=${ok}`);
  assert.equal(ok + limited, 12);
  await a.waitFor("dialogue:error", (e) => e.code === "RATE_LIMITED");

  // Another connection has its own budget.
  const b = await connect("patient");
  await b.waitFor("dialogue:joined");
  const r = await b.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: "mine", username: "p" } });
  assert.equal(r.ok, true);

  const reads = [];
  for (let i = 0; i < 5; i++) reads.push(await a.request("dialogue:getHistory", { roomId: "general", eventName: "message" }));
  assert.deepEqual(reads.map((r) => r.ok), [true, true, true, false, false]);
  assert.equal(reads[3].code, "RATE_LIMITED");
  a.close();
  b.close();
});
