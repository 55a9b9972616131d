// Drives the dashboard (/ui) in a real browser for the Rust tests: headless Debian chromium
// (/usr/bin/chromium, through playwright-core; nothing is downloaded), a 1366x768 window,
// and only what a person would use: labels, roles, the keyboard and the mouse.
//
//   node interop/browser/dashboard.mjs --url <base>/ui/ --key KEY --wrong-key KEY
//        --open USER/PROVIDER/ACCOUNT --return-url URL --artifacts DIR [--timeout-ms 60000]
//
// The walk: sign in with the wrong key (refused), then with the right one (pressing Enter);
// read the connections; filter them to needs_reconnect; open --open (its last error and
// events); create a reconnect link for it; list failed webhook deliveries and retry the
// first with the keyboard; read the providers; reload (still signed in); sign out. PNG
// screenshots of the pages go to --artifacts (dashboard.png is the filtered list).
//
// Prints ONE JSON line on stdout:
//   {"steps": {...}, "requests": [...], "problems": [...], "screenshots": [...]}   exit 0
//   {"error": "...", "steps": {...}, "requests": [...], "problems": [...], ...}      exit 1
// `requests`: every request the page made ({url, method, auth}: auth is "key", "wrong-key",
// "other" or null, never the header itself); `problems`: console errors (CSP violations
// among them) and uncaught page errors. The keys given are never printed.

import { parseArgs } from 'node:util';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const steps = {};
const requests = [];
const problems = [];
const screenshots = [];

function finish(result, code) {
  process.stdout.write(`${JSON.stringify({ ...result, steps, requests, problems, screenshots })}\n`);
  process.exitCode = code;
}

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      key: { type: 'string' },
      'wrong-key': { type: 'string' },
      open: { type: 'string' },
      'return-url': { type: 'string' },
      artifacts: { type: 'string' },
      'timeout-ms': { type: 'string', default: '60000' },
    },
  }));
  for (const name of ['url', 'key', 'wrong-key', 'open', 'return-url', 'artifacts']) {
    if (!opts[name]) throw new Error(`--${name} is required`);
  }
  opts.timeoutMs = Number(opts['timeout-ms']);
  if (!Number.isInteger(opts.timeoutMs) || opts.timeoutMs <= 0) {
    throw new Error('--timeout-ms must be a positive integer');
  }
  opts.target = opts.open.split('/');
  if (opts.target.length !== 3) throw new Error('--open is USER/PROVIDER/ACCOUNT');
} catch (err) {
  finish({ error: `usage: ${err.message}` }, 1);
  process.exit();
}

let browser;
let page;

/** Waits until the page shows a finished view whose hash satisfies `wanted`. */
async function shown(wanted) {
  await page.waitForFunction((source) => {
    const main = document.getElementById('main');
    const hash = main?.dataset.shown;
    return main?.getAttribute('aria-busy') === 'false' && hash === window.location.hash
      && new RegExp(source).test(hash);
  }, wanted.source);
}

async function mainText() {
  return page.locator('main').innerText();
}

async function rows(name) {
  return page.getByRole('table', { name })
    .locator('tbody tr')
    .evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.innerText.trim())));
}

async function screenshot(name) {
  const file = path.join(opts.artifacts, name);
  await page.screenshot({ path: file, fullPage: true });
  screenshots.push(file);
}

const walk = async () => {
  await page.goto(opts.url, { waitUntil: 'load' });
  const keyInput = page.getByLabel('API key', { exact: true });
  await keyInput.waitFor();

  // A wrong key is refused, and the dashboard stays closed.
  await keyInput.fill(opts['wrong-key']);
  await page.getByRole('button', { name: 'Sign in' }).click();
  const status = page.getByRole('status');
  await status.filter({ hasText: /refused/i }).waitFor();
  steps.wrong_key = {
    status: await status.innerText(),
    nav_visible: await page.getByRole('navigation', { name: 'Dashboard' }).isVisible(),
    stored_keys: await page.evaluate(() => sessionStorage.length),
  };

  // The right key, submitted from the keyboard.
  await keyInput.fill(opts.key);
  await keyInput.press('Enter');
  await shown(/^#?\/?(connections)?$|^$/);
  await page.getByRole('table', { name: /^Connections/ }).waitFor();
  steps.connections = {
    rows: await rows(/^Connections/),
    nav_visible: await page.getByRole('navigation', { name: 'Dashboard' }).isVisible(),
  };

  // Filter to the connections that need their users.
  await page.getByLabel('Status', { exact: true }).selectOption('needs_reconnect');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await shown(/status=needs_reconnect/);
  steps.needs_reconnect = { rows: await rows(/^Connections/), hash: await page.evaluate(() => location.hash) };
  await screenshot('dashboard.png');

  // Open one: its last error and its events.
  const [user, provider, account] = opts.target;
  const row = page.getByRole('row').filter({ hasText: user }).filter({ hasText: provider });
  await row.getByRole('link', { name: account, exact: true }).click();
  await shown(/^#\/connection\//);
  steps.connection = {
    heading: await page.getByRole('heading', { level: 1 }).innerText(),
    text: await mainText(),
    events: await rows(/most recent events/),
  };
  await screenshot('dashboard-connection.png');

  // A reconnect link for it, from its page.
  await page.getByRole('link', { name: 'Create reconnect link', exact: true }).click();
  await shown(/^#\/connect\?/);
  steps.connect_form = {
    user_id: await page.getByLabel('User id', { exact: true }).inputValue(),
    provider: await page.getByLabel('Provider', { exact: true }).inputValue(),
    account_id: await page.getByLabel('Account id (optional)', { exact: true }).inputValue(),
  };
  await page.getByLabel('Return URL', { exact: true }).fill(opts['return-url']);
  await page.getByRole('button', { name: 'Create connect link' }).click();
  const link = page.getByLabel('Connect link', { exact: true });
  await link.waitFor();
  steps.connect = {
    link: await link.inputValue(),
    session: await page.locator('#connect-session').innerText(),
    status: await status.innerText(),
  };

  // Failed webhook deliveries; the first is retried from the keyboard.
  await page.getByRole('link', { name: 'Webhook deliveries', exact: true }).click();
  await shown(/^#\/deliveries/);
  await page.getByLabel('Status', { exact: true }).selectOption('failed');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await shown(/status=failed/);
  const failed = await rows(/^Deliveries/);
  const retry = page.getByRole('button', { name: /^Retry delivery / }).first();
  const label = await retry.getAttribute('aria-label');
  await screenshot('dashboard-deliveries.png');
  await retry.focus();
  await page.keyboard.press('Enter');
  await status.filter({ hasText: /queued again/ }).waitFor();
  steps.deliveries = {
    failed,
    retried: label.replace(/^Retry delivery /, ''),
    status: await status.innerText(),
  };

  // Providers and their breakers.
  await page.getByRole('link', { name: 'Providers', exact: true }).click();
  await shown(/^#\/providers/);
  steps.providers = { rows: await rows(/configured providers/) };
  await screenshot('dashboard-providers.png');

  // Still signed in after a reload (same tab); signed out, the key is gone.
  await page.reload({ waitUntil: 'load' });
  await shown(/^#\/providers/);
  steps.reload = {
    nav_visible: await page.getByRole('navigation', { name: 'Dashboard' }).isVisible(),
    // Signed in: the key may be in sessionStorage only, never in localStorage or a cookie.
    local_storage: await page.evaluate(() => localStorage.length),
    cookies: await page.evaluate(() => document.cookie),
  };
  await page.getByRole('button', { name: 'Sign out' }).click();
  await keyInput.waitFor();
  steps.sign_out = {
    status: await status.innerText(),
    // Whether a key is still stored, never the key itself (this JSON is printed).
    stored_keys: await page.evaluate(() =>
      sessionStorage.getItem('tokenwarden.apiKey') === null ? null : '[present]'),
    nav_visible: await page.getByRole('navigation', { name: 'Dashboard' }).isVisible(),
  };
};

try {
  // Running as root (CI containers) chromium refuses to start with its sandbox.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    timeout: opts.timeoutMs,
  });
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  context.on('request', (request) => {
    const authorization = request.headers().authorization;
    const auth = authorization === undefined ? null
      : authorization === `Bearer ${opts.key}` ? 'key'
        : authorization === `Bearer ${opts['wrong-key']}` ? 'wrong-key' : 'other';
    requests.push({ url: request.url(), method: request.method(), auth });
  });
  page = await context.newPage();
  page.setDefaultTimeout(opts.timeoutMs);
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));

  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${opts.timeoutMs} ms`)), opts.timeoutMs);
  });
  const running = walk();
  running.catch(() => {}); // after a timeout it fails on its own; the timeout is the error
  try {
    await Promise.race([running, timeout]);
  } finally {
    clearTimeout(timer);
  }
  finish({}, 0);
} catch (err) {
  // Best effort: a picture of where the walk got stuck helps more than the error alone.
  if (page) await screenshot('dashboard-failure.png').catch(() => {});
  const where = page ? ` (at ${page.url()})` : '';
  finish({ error: `${err.message.split('\n')[0]}${where}` }, 1);
} finally {
  await browser?.close().catch(() => {});
}
