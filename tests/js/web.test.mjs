// The chat page (/) and the operator dashboard (/admin) in a real headless Chromium (Debian's,
// driven by playwright-core). Run by tests/web.rs against a server with rooms `general`
// (autoJoin, presence) and `archive`, and the API key in API_KEY.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { URL, eventually } from "./helpers.mjs";
import { launch, openPage, signIn, send, shown, waitForText, openRoom, screenshot } from "./browser.mjs";

const KEY = process.env.API_KEY;
let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

const api = (path, { method = "GET", body, key = KEY } = {}) => fetch(`${URL}${path}`, {
  method,
  headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), "Content-Type": "application/json" },
  body: body === undefined ? undefined : JSON.stringify(body),
});

/** GET without decoding: status, headers and the raw (possibly gzipped) body. */
function raw(path, headers = {}) {
  return new Promise((resolve, reject) => {
    http.get(`${URL}${path}`, { headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    }).on("error", reject);
  });
}

/** No script error, and no failed load but the `expected` ones (by message). */
function assertNoProblems(page, expected = /^$/) {
  const failed = page.consoleErrors.filter((e) => !expected.test(e));
  assert.deepEqual([...page.problems, ...failed], [], "no script errors or failed loads in the page");
}

test("assets: hashed names cached for good, pages revalidated, gzip, first load ≤ 100 KB gzipped", async () => {
  const page = await raw("/", { "Accept-Encoding": "gzip" });
  assert.equal(page.status, 200);
  assert.match(page.headers["content-type"], /^text\/html/);
  assert.equal(page.headers["cache-control"], "no-cache");
  assert.ok(page.headers.etag);
  assert.match(page.headers["content-security-policy"], /default-src 'self'/);
  const html = page.body.toString();
  assert.match(html, /<meta name="dialogue-auth" content="open">/);
  const assets = [...html.matchAll(/"\/assets\/([^"]+)"/g)].map((m) => m[1]);
  assert.ok(assets.some((a) => /^chat\.[0-9a-f]{10}\.js$/.test(a)), `the page links hashed assets: ${assets}`);
  let firstLoad = Buffer.byteLength(html); // the page itself is small; counted uncompressed
  for (const name of assets) {
    const gz = await raw(`/assets/${name}`, { "Accept-Encoding": "gzip, deflate, br" });
    assert.equal(gz.status, 200, name);
    assert.equal(gz.headers["content-encoding"], "gzip", name);
    assert.equal(gz.headers["cache-control"], "public, max-age=31536000, immutable", name);
    assert.match(gz.headers.vary, /Accept-Encoding/);
    const plain = await raw(`/assets/${name}`);
    assert.equal(plain.headers["content-encoding"], undefined, `${name} plain for a client without gzip`);
    const { gunzipSync } = await import("node:zlib");
    assert.deepEqual(gunzipSync(gz.body), plain.body, `${name}: the gzip is the same file`);
    firstLoad += gz.body.length;
    const again = await raw(`/assets/${name}`, { "If-None-Match": gz.headers.etag });
    assert.equal(again.status, 304, `${name} revalidates by ETag`);
  }
  assert.ok(firstLoad <= 100 * 1024, `first load ${firstLoad} bytes gzipped`);
  console.log(`RESULT ${JSON.stringify({ firstLoadGzipBytes: firstLoad, assets })}`);
  assert.equal((await raw("/", { "If-None-Match": page.headers.etag })).status, 304);
  assert.equal((await raw("/", { "If-None-Match": `W/${page.headers.etag}` })).status, 304, "weak comparison");
  const head = await fetch(`${URL}/`, { method: "HEAD" });
  assert.equal(head.status, 200, "HEAD / (uptime monitors)");
  for (const [method, path] of [["POST", "/"], ["GET", "/nowhere"], ["GET", "/assets/..%2f..%2fetc%2fpasswd"]]) {
    const r = await fetch(`${URL}${path}`, { method });
    assert.equal(r.status, 404, `${method} ${path}`);
    assert.equal((await r.json()).code, "NOT_FOUND", `${method} ${path}: a JSON error`);
  }
  const stale = await raw("/assets/chat.0000000000.js");
  assert.equal(stale.status, 404);
  assert.equal(JSON.parse(stale.body).code, "NOT_FOUND");
  const admin = await raw("/admin");
  assert.equal(admin.status, 200);
  assert.match(admin.body.toString(), /\/assets\/admin\.[0-9a-f]{10}\.js/);
});

test("chat: two pages chat both ways, and see each other in the member list", async () => {
  const alice = await signIn(browser, URL, "alice");
  const bob = await signIn(browser, URL, "bob");
  for (const p of [alice, bob]) {
    await p.waitForSelector('#rooms [data-room-id="general"][data-joined="true"]');
    await p.waitForSelector('#status[data-state="connected"]');
  }
  await send(alice, "hello from alice");
  await waitForText(bob, "hello from alice");
  await waitForText(alice, "hello from alice");
  assert.equal(await alice.inputValue("#composer-text"), "", "the composer is cleared once sent");
  await send(bob, "hi alice, bob here");
  await waitForText(alice, "hi alice, bob here");
  const line = (await shown(alice)).find((m) => m.text === "hi alice, bob here");
  assert.equal(line.user, "bob");
  assert.equal(line.event, "message");
  // Presence: each page lists both users once.
  for (const p of [alice, bob]) {
    await p.waitForSelector('#members [data-user-id="alice"]');
    await p.waitForSelector('#members [data-user-id="bob"]');
  }
  const seen = await shown(bob);
  assert.equal(new Set(seen.map((m) => m.key)).size, seen.length, "each message once");
  await screenshot(alice, "chat.png");
  assertNoProblems(alice);
  assertNoProblems(bob);
  await alice.context().close();
  await bob.context().close();
});

test("chat: a validation error is shown next to the input, and the next send works", async () => {
  const page = await signIn(browser, URL, "carol");
  await page.waitForSelector('#rooms [data-room-id="general"][data-active="true"]');
  const long = "x".repeat(2001); // the schema allows 2000 characters
  await send(page, long);
  await page.waitForFunction(() => document.querySelector("#composer-error")?.textContent.includes("VALIDATION_FAILED"));
  assert.equal(await page.getAttribute("#composer-error", "role"), "alert");
  assert.equal(await page.inputValue("#composer-text"), long, "the text is kept to be fixed");
  await send(page, "short enough");
  await waitForText(page, "short enough");
  await page.waitForFunction(() => document.querySelector("#composer-error").textContent.trim() === "");
  assert.equal((await api("/healthz", { key: null })).status, 200, "the server runs on");
  assertNoProblems(page);
  await page.context().close();
});

test("chat: scrolls back through 250 messages to the very first, each once, in order, without a jump", async () => {
  for (let i = 1; i <= 250; i++) {
    const r = await api("/api/rooms/archive/events/message", { method: "POST", body: { data: { text: `archived ${i}`, username: "archivist" } } });
    assert.equal(r.status, 201);
  }
  const page = await signIn(browser, URL, "dave");
  await openRoom(page, "archive");
  await waitForText(page, "archived 250");
  let pages = 0;
  for (let round = 0; round < 40; round++) {
    const state = await page.getAttribute("#history-status", "data-state");
    if (state === "start") break;
    if (state === "loading") { await page.waitForTimeout(100); continue; }
    // The message at the top before scrolling there, and where it is on the screen.
    const before = await page.evaluate(() => {
      const list = document.querySelector("#messages");
      list.scrollTop = 0;
      list.dispatchEvent(new Event("scroll"));
      const first = list.querySelector(".msg");
      return { key: first.dataset.key, top: first.getBoundingClientRect().top, count: list.querySelectorAll(".msg").length };
    });
    await page.waitForFunction((n) => document.querySelectorAll("#messages .msg").length > n
      || document.querySelector("#history-status").dataset.state === "start", before.count, { timeout: 10000 });
    const after = await page.evaluate((key) => {
      const el = document.querySelector(`#messages .msg[data-key="${key}"]`);
      return { top: el.getBoundingClientRect().top, count: document.querySelectorAll("#messages .msg").length };
    }, before.key);
    if (after.count > before.count) {
      pages++;
      assert.ok(Math.abs(after.top - before.top) <= 2,
        `older messages went in above without moving what was on screen (${before.top} → ${after.top})`);
    }
  }
  assert.equal(await page.getAttribute("#history-status", "data-state"), "start", "the beginning of the room was reached");
  assert.ok(pages >= 3, `older pages were loaded by scrolling (${pages})`);
  const messages = (await shown(page)).filter((m) => m.event === "message");
  assert.deepEqual(messages.map((m) => m.seq), Array.from({ length: 250 }, (_, i) => i + 1), "every message once, in order");
  assert.deepEqual(messages.map((m) => m.text), Array.from({ length: 250 }, (_, i) => `archived ${i + 1}`));
  assertNoProblems(page);
  await page.context().close();
});

test("chat: every control is labelled, and the page fits a phone", async () => {
  const page = await signIn(browser, URL, "erin", { width: 375, height: 740 });
  const unlabelled = await page.$$eval("input, textarea, select, button", (els) => els
    .filter((e) => e.offsetParent !== null || e.getClientRects().length > 0)
    .filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || e.getAttribute("aria-labelledby")
      || (e.tagName === "BUTTON" && e.textContent.trim())))
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unlabelled, []);
  assert.equal(await page.getAttribute("#messages", "role"), "log");
  const overflow = await page.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling at 375 px (${overflow} px too wide)`);
  assert.ok(await page.isVisible("#composer-text"), "the composer is on screen");
  // Keyboard only: focus the composer with Tab presses, type, Enter.
  let focused = "";
  for (let i = 0; i < 40 && focused !== "composer-text"; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement?.id ?? "");
  }
  assert.equal(focused, "composer-text", "the composer is reachable with Tab");
  await page.keyboard.type("typed with the keyboard");
  await page.keyboard.press("Enter");
  await waitForText(page, "typed with the keyboard");
  await screenshot(page, "chat-phone.png");
  assertNoProblems(page);
  await page.context().close();
});

test("admin: refused without a key; with one it lists the room and its member count", async () => {
  assert.equal((await api("/api/stats", { key: null })).status, 401);
  const member = await signIn(browser, URL, "frank");
  await member.waitForSelector('#rooms [data-room-id="general"][data-joined="true"]');
  const admin = await openPage(browser, `${URL}/admin`);
  await admin.waitForSelector("#key-form");
  await admin.fill("#api-key", "not-the-key");
  await admin.press("#api-key", "Enter");
  await admin.waitForFunction(() => document.querySelector("#admin-error")?.textContent.includes("Refused"));
  assert.equal(await admin.$('#rooms-table tr[data-room-id="general"]'), null, "nothing is shown without the key");
  await admin.fill("#api-key", KEY);
  await admin.press("#api-key", "Enter");
  const row = '#rooms-table tr[data-room-id="general"]';
  await admin.waitForSelector(row);
  // The pages of the earlier tests are closed: frank's is the one member left.
  const members = async () => (await (await api("/api/stats")).json()).rooms.find((r) => r.id === "general").members;
  await eventually(async () => (await members()) === 1, 10000, "general to have one member");
  await admin.waitForFunction((sel) => document.querySelector(`${sel} .room-members`)?.textContent.trim() === "1", row);
  // The archive got 250 messages: its 100-event window is full, all 250 are in the database.
  const archive = '#rooms-table tr[data-room-id="archive"]';
  assert.match(await admin.textContent(`${archive} .room-memory`), /message:\s*100\b/);
  assert.match(await admin.textContent(`${archive} .room-stored`), /message:\s*250\b/);
  assert.match(await admin.textContent("#stat-connections"), /\d/);
  // The send form triggers through the HTTP API: the member's page shows it.
  await admin.selectOption("#send-room", "general").catch(() => admin.fill("#send-room", "general"));
  await admin.fill("#send-event", "message");
  await admin.fill("#send-data", JSON.stringify({ text: "announcement from the dashboard", username: "ops" }));
  await admin.click('#send-form button[type="submit"]');
  await waitForText(member, "announcement from the dashboard");
  await admin.waitForFunction(() => /\d/.test(document.querySelector("#send-result")?.textContent ?? ""));
  await admin.waitForSelector("#charts svg");
  await admin.waitForTimeout(300);
  await screenshot(admin, "admin.png");
  assertNoProblems(admin, /401 \(Unauthorized\)/); // the wrong key's refusals
  await admin.context().close();
  await member.context().close();
});
