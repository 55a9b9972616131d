// Drives the connect flow in a real browser for the Rust tests: headless Debian chromium
// (/usr/bin/chromium, through playwright-core; nothing is downloaded) opens a connect URL,
// signs in and answers consent on interop/oidc-provider's INTERACTIVE=1 pages, and stops
// once the browser is back at the caller's return URL.
//
//   node interop/browser/connect.mjs --url <connect_url> --return <return_url_prefix>
//        [--user NAME] [--deny] [--screenshot FILE] [--timeout-ms 20000]
//
// Prints ONE JSON line on stdout and nothing else:
//   {"final_url": "...", "urls": [...], "texts": [...], "status": 200}   exit 0
//   {"error": "...", "urls": [...], "texts": [...]}                     exit 1
// `urls`: every document the main frame committed, in order (redirects that were followed
// without rendering a document are not in it); `texts`: document.body.innerText of each page
// looked at; `status`: HTTP status of the last main-frame document response, or null.
// Nothing is logged beyond these URLs and page texts (the tests check what they contain).

import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const urls = [];
const texts = [];

function finish(result, code) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = code;
}

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      return: { type: 'string' },
      user: { type: 'string', default: 'interop-user-1' },
      deny: { type: 'boolean', default: false },
      screenshot: { type: 'string' },
      'timeout-ms': { type: 'string', default: '20000' },
    },
  }));
  if (!opts.url || !opts.return) throw new Error('--url and --return are required');
  opts.timeoutMs = Number(opts['timeout-ms']);
  if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs <= 0) {
    throw new Error('--timeout-ms must be a positive integer');
  }
} catch (err) {
  finish({ error: `usage: ${err.message}`, urls, texts }, 1);
  process.exit();
}

const deadline = Date.now() + opts.timeoutMs;
const remaining = () => Math.max(1, deadline - Date.now());

let browser;
let page;
try {
  // Running as root (CI containers) chromium refuses to start with its sandbox.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    timeout: remaining(),
  });
  // A fresh context per run: no cookies, so every run signs in again.
  page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(opts.timeoutMs);
  let status = null;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) urls.push(frame.url());
  });
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      status = response.status();
    }
  });
  // Resolves on the next document committed in the main frame (start waiting before acting).
  const nextDocument = () => {
    const navigated = page.waitForEvent('framenavigated', {
      predicate: (frame) => frame === page.mainFrame(), timeout: remaining(),
    });
    navigated.catch(() => {}); // awaited below; this only keeps an abandoned wait quiet
    return navigated;
  };

  const flow = async () => {
    await page.goto(opts.url, { waitUntil: 'load', timeout: remaining() });
    for (;;) {
      await page.waitForLoadState('load', { timeout: remaining() });
      let text;
      try {
        text = await page.evaluate(() => document.body?.innerText ?? '');
      } catch {
        continue; // navigated away while reading: look at the new page
      }
      texts.push(text);
      if (page.url().startsWith(opts.return)) return;

      const username = page.locator('#username');
      const allow = page.getByRole('button', { name: 'Allow', exact: true });
      let click;
      if (await username.count()) {
        await username.fill(opts.user);
        click = page.getByRole('button', { name: 'Sign in', exact: true });
      } else if (await allow.count()) {
        click = opts.deny ? page.getByRole('button', { name: 'Deny', exact: true }) : allow;
      }
      const navigated = nextDocument();
      if (click) await click.click({ timeout: remaining() });
      await navigated; // a page we cannot act on: wait for it to move on by itself
    }
  };
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${opts.timeoutMs} ms`)), remaining());
  });
  const running = flow();
  running.catch(() => {}); // after a timeout it fails on its own; the timeout is the error
  try {
    await Promise.race([running, timeout]);
  } finally {
    clearTimeout(timer);
  }
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
  finish({ final_url: page.url(), urls, texts, status }, 0);
} catch (err) {
  // Best effort: a picture of wherever the browser got stuck helps more than the error.
  if (opts.screenshot && page) await page.screenshot({ path: opts.screenshot }).catch(() => {});
  const where = page ? ` (at ${page.url()})` : '';
  finish({ error: `${err.message.split('\n')[0]}${where}`, urls, texts }, 1);
} finally {
  await browser?.close().catch(() => {});
}
