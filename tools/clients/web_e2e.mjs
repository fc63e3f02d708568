// The web page of a live `iris serve` in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): upload a fixture image, ask, and watch the answer stream in; follow-ups with a
// dropped and a pasted image; boxes from a finish chunk drawn over the image.
// usage: node web_e2e.mjs BASE_URL IMAGE EXPECTED_TEXT API_KEY
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [base, image, expected, key] = process.argv.slice(2);
const fail = (msg) => { console.error("FAIL:", msg); process.exit(1); };

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("request", (r) => { if (!r.url().startsWith(base)) errors.push("external request: " + r.url()); });
  // The page asks for the model list on load, before the key is typed, and again when the key
  // changes. Hold the keyless answer back until after the keyed one: a stale "missing API key"
  // must not overwrite the model line (CI once saw exactly that race).
  const deferred = () => { let resolve; const p = new Promise((r) => { resolve = r; }); return [p, resolve]; };
  const [keyedAnswered, keyedDone] = deferred();
  const [staleAnswered, staleDone] = deferred();
  const hasKey = (request) => !!request.headers()["authorization"];
  page.on("requestfinished", (r) => { if (r.url().endsWith("/v1/models") && hasKey(r)) keyedDone(); });
  await page.route("**/v1/models", async (route) => {
    if (hasKey(route.request())) { await route.continue(); return; }
    await keyedAnswered;
    await route.continue();
    setTimeout(staleDone, 300);
  });
  await page.goto(base + "/");
  await page.fill("#api_key", key);
  await page.dispatchEvent("#api_key", "change");
  await staleAnswered;
  await page.unroute("**/v1/models");
  await page.waitForFunction(() => !document.getElementById("model").textContent.includes("connecting"));
  const model = await page.textContent("#model");
  if (!model.includes("qwen2_vl") && !model.includes("qwen2-vl")) fail("model line: " + model);

  // the fixture's answer is 16 greedy tokens
  await page.fill("#max_tokens", "16");
  await page.fill("#temperature", "0");
  await page.setInputFiles("#file", image);
  await page.waitForFunction(() => document.getElementById("image-preview").naturalWidth > 0);

  // count how many times the answer's text changes while it streams
  await page.evaluate(() => {
    window.__updates = 0;
    new MutationObserver((muts) => {
      for (const m of muts) {
        const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
        if (el && el.closest(".msg.assistant .text")) window.__updates++;
      }
    }).observe(document.getElementById("log"), { subtree: true, childList: true, characterData: true });
  });
  await page.fill("#prompt", "What is in this image?");
  await page.click("#send");
  await page.waitForSelector(".msg.assistant .timing", { timeout: 60000 });
  const answer = await page.textContent(".msg.assistant .text");
  const timing = await page.textContent(".msg.assistant .timing");
  const updates = await page.evaluate(() => window.__updates);
  const userImage = await page.$(".msg.user img");
  if (answer !== expected) fail(`answer ${JSON.stringify(answer)} != ${JSON.stringify(expected)}`);
  if (updates < 2) fail(`the answer did not stream (${updates} updates)`);
  if (!/first token [0-9.]+ s .* tok\/s/.test(timing)) fail("timing line: " + timing);
  if (!userImage) fail("the sent image is not shown in the chat");
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(`web page: streamed answer in ${updates} updates; ${timing}`);

  // follow-up turns with the image dropped onto the page, then pasted: each is attached
  const b64 = readFileSync(image).toString("base64");
  const imageTransfer = () => page.evaluateHandle((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], "again.png", { type: "image/png" }));
    return dt;
  }, b64);
  const ask = async (n) => {
    await page.waitForFunction(() => document.getElementById("preview-wrap").style.display === "block");
    await page.fill("#prompt", `Turn ${n}?`);
    await page.click("#send");
    await page.waitForFunction((n) => document.querySelectorAll(".msg.assistant .timing").length === n, n, { timeout: 60000 });
    const withImage = await page.$$eval(".msg.user", (els) => els.map((e) => !!e.querySelector("img")));
    if (withImage.length !== n || !withImage[n - 1]) fail(`turn ${n}: the user message lacks its image (${withImage})`);
  };
  await page.dispatchEvent("main", "drop", { dataTransfer: await imageTransfer() });
  await ask(2);
  await page.evaluate((dt) => document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt })), await imageTransfer());
  await ask(3);
  const errorsShown = await page.$$(".msg.error");
  if (errorsShown.length) fail("an answer failed: " + (await errorsShown[0].textContent()));
  console.log("web page: dropped and pasted images were sent with their turns");

  // grounding: the tiny random model never emits boxes, so this turn's stream is the server's
  // documented format played back by the browser (text keeps the box tokens; the finish chunk
  // carries `boxes` in pixels of the 150x100 image). The page must draw them over the image.
  const chunk = (choice, extra = {}) => "data: " + JSON.stringify({ object: "chat.completion.chunk", choices: [{ index: 0, ...choice }], ...extra }) + "\n\n";
  const boxText = "<|object_ref_start|>the left half<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>";
  const box = { label: "the left half", x1: 15, y1: 20, x2: 75, y2: 60 };
  await page.route("**/v1/chat/completions", (route) => route.fulfill({
    status: 200,
    contentType: "text/event-stream",
    body: chunk({ delta: { role: "assistant" } }) + chunk({ delta: { content: boxText } }) +
      chunk({ delta: {}, finish_reason: "stop" }, { boxes: [box] }) + "data: [DONE]\n\n",
  }));
  await page.fill("#prompt", "Where is the left half?");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant .timing").length === 4, null, { timeout: 30000 });
  await page.unroute("**/v1/chat/completions");
  const drawn = await page.$$eval("#boxes rect", (rs) => rs.map((r) => ["x", "y", "width", "height"].map((k) => Number(r.getAttribute(k)))));
  const labels = await page.$$eval("#boxes text", (ts) => ts.map((t) => t.textContent));
  const viewBox = await page.getAttribute("#boxes", "viewBox");
  if (JSON.stringify(drawn) !== JSON.stringify([[15, 20, 60, 40]])) fail("boxes drawn: " + JSON.stringify(drawn));
  if (JSON.stringify(labels) !== JSON.stringify(["the left half"])) fail("box labels: " + JSON.stringify(labels));
  if (viewBox !== "0 0 150 100") fail("box overlay viewBox (should be the image's pixels): " + viewBox);
  const shown = await page.textContent(".msg.assistant:last-of-type .text");
  if (shown !== boxText) fail("the box tokens were not kept in the answer: " + shown);
  console.log("web page: a streamed box was drawn over the image at its pixel coordinates");
} finally {
  await browser.close();
}
