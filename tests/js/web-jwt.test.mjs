// The chat page with `auth.mode: jwt` (tests/web.rs): it asks for a token instead of a name,
// a bad or expired token is refused with the server's reason and the page stays on the
// sign-in form, and a good token signs in as its `sub`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { URL } from "./helpers.mjs";
import { launch, openPage, send, shown, waitForText } from "./browser.mjs";

const SECRET = process.env.JWT_SECRET;
/** An HS256 token for `sub`, valid for `seconds` (negative: expired). */
function token(sub, seconds = 3600) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + seconds })}`;
  return `${body}.${crypto.createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

async function paste(page, value) {
  await page.fill("#login-token", value);
  await page.click("#login-submit");
}

test("jwt mode: the page asks for a token; bad and expired ones are refused with the reason", async () => {
  const page = await openPage(browser, URL);
  assert.equal(await page.isVisible("#login-token"), true);
  assert.equal(await page.isVisible("#login-name"), false, "no user name to choose in jwt mode");
  await paste(page, "not-a-token");
  await page.waitForFunction(() => /invalid token/i.test(document.querySelector("#login-error").textContent));
  assert.equal(await page.isVisible("#login"), true, "still on the sign-in form");
  await paste(page, token("late", -3600));
  await page.waitForFunction(() => /expired/i.test(document.querySelector("#login-error").textContent));
  assert.equal(await page.evaluate(() => window.dialogueReady ?? false), false);
  await page.context().close();
});

test("jwt mode: a good token signs in as its sub, and messages carry it", async () => {
  const page = await openPage(browser, URL);
  await paste(page, token("tokyo"));
  await page.waitForFunction(() => window.dialogueReady === true);
  await page.waitForSelector('#rooms [data-room-id="general"][data-joined="true"]');
  await send(page, "signed in with a token");
  await waitForText(page, "signed in with a token");
  const line = (await shown(page)).find((m) => m.text === "signed in with a token");
  assert.equal(line.user, "tokyo");
  assert.deepEqual(page.problems, []);
  await page.context().close();
});
