// The chat page across a `kill -9` of the server (driven by tests/web.rs):
// 1. the page (through a steady proxy, DIALOGUE_URL) signs in, chats, and prints READY;
// 2. the test kills the server, points the proxy nowhere, starts the server again and writes
//    its direct URL into STAGE_FILE;
// 3. this script triggers MISSED messages into each of the page's rooms straight to the new
//    server (the page cannot reach it) and prints POSTED; the test points the proxy at the
//    new server;
// 4. the page reconnects by itself: in both rooms every message — before, missed, after — is
//    shown exactly once, in order. MISSED is more than the join history (50), so a rejoin
//    without `since` would leave a gap: `general` (autoJoin) resumes from the CONNECT's
//    `auth.since`, `archive` from the page's `dialogue:join {since}` — or both by
//    connection-state recovery. Prints RESULT {…} and exits 0, or the problem and exits 1.
import fs from "node:fs";
import { URL, sleep } from "./helpers.mjs";
import { launch, signIn, send, shown, waitForText, openRoom, screenshot } from "./browser.mjs";

const MISSED = Number(process.env.MISSED ?? 60);
const ROOMS = ["general", "archive"];
const KEY = process.env.API_KEY;

async function stage() {
  for (let i = 0; i < 600; i++) {
    const text = fs.existsSync(process.env.STAGE_FILE) ? fs.readFileSync(process.env.STAGE_FILE, "utf8").trim() : "";
    if (text.startsWith("http")) return text;
    await sleep(100);
  }
  throw new Error("the server did not come back");
}

const browser = await launch();
try {
  const page = await signIn(browser, URL, "grace");
  await page.waitForSelector('#rooms [data-room-id="general"][data-joined="true"]');
  for (const room of ROOMS) {
    await openRoom(page, room);
    for (const text of [`${room} before 1`, `${room} before 2`]) {
      await send(page, text);
      await waitForText(page, text);
    }
  }
  console.log("READY");
  // The server is killed: the page notices and keeps trying.
  await page.waitForSelector('#status:not([data-state="connected"])', { timeout: 20000 });
  const direct = await stage();
  for (const room of ROOMS) {
    for (let i = 1; i <= MISSED; i++) {
      const r = await fetch(`${direct}/api/rooms/${room}/events/message`, {
        method: "POST",
        headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
        body: JSON.stringify({ data: { text: `${room} missed ${i}`, username: "backend" } }),
      });
      if (r.status !== 201) throw new Error(`trigger ${room} ${i}: ${r.status} ${await r.text()}`);
    }
  }
  console.log("POSTED");
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 30000 });
  const problems = [];
  let shownCount = 0;
  for (const room of ROOMS) {
    await openRoom(page, room);
    await waitForText(page, `${room} missed ${MISSED}`, 30000);
    await send(page, `${room} after`);
    await waitForText(page, `${room} after`);
    await sleep(500); // a duplicate would arrive by now
    const messages = (await shown(page)).filter((m) => m.event === "message");
    const texts = messages.map((m) => m.text);
    const want = [`${room} before 1`, `${room} before 2`,
      ...Array.from({ length: MISSED }, (_, i) => `${room} missed ${i + 1}`), `${room} after`];
    const tail = texts.slice(texts.indexOf(`${room} before 1`));
    shownCount += tail.length;
    if (JSON.stringify(tail) !== JSON.stringify(want)) problems.push(`${room} shown: ${JSON.stringify(tail)}`);
    if (new Set(messages.map((m) => m.key)).size !== messages.length) problems.push(`${room}: a message is shown twice`);
    const seqs = messages.map((m) => m.seq);
    if (seqs.some((s, i) => i > 0 && s <= seqs[i - 1])) problems.push(`${room}: seqs out of order: ${seqs}`);
  }
  const recovered = await page.evaluate(() => window.dialogueSocket?.recovered ?? null);
  await screenshot(page, "chat-after-restart.png");
  if (page.problems.length) problems.push(...page.problems);
  console.log(`RESULT ${JSON.stringify({ problems, shown: shownCount, recovered })}`);
  process.exitCode = problems.length ? 1 : 0;
} catch (e) {
  console.log(`FAILED ${e.stack}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
