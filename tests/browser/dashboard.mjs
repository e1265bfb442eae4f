#!/usr/bin/env node
// Real-browser test of the dashboard (GET /): headless Chromium, driven by
// playwright-core, against a running supervisor.
//
// Environment:
//   SUPERVISOR_URL       http://127.0.0.1:PORT of its HTTP server
//   SUPERVISOR_TOKEN     the token (content of its token_file)
//   SUPERVISOR_GROUP     a group with 2 workers
//   SUPERVISOR_WORK_DIR  a temp dir this test may write files in
//   SCREENSHOT_DIR       optional: dashboard-desktop.png (1280x800) and
//                        dashboard-phone.png (390x844) go there
//   DASHBOARD_TIMEOUT_MS optional: the deadline of each wait (default 20000)
//
// Exit: 0 passed, 1 failed (a screenshot goes to SUPERVISOR_WORK_DIR), 77 skipped
// (no /usr/bin/chromium or no playwright-core: `cd tests/browser && npm ci`).
//
// Every wait polls the page with a deadline; there is no fixed sleep except the
// short window in which the test checks that an idle page sends no request.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const DESKTOP = {width: 1280, height: 800};
const PHONE = {width: 390, height: 844};

function skip(why) {
  console.log(`SKIP: ${why}`);
  process.exit(77);
}

if (!fs.existsSync(CHROMIUM)) skip(`${CHROMIUM} is missing (apt-get install chromium)`);
let chromium;
try {
  ({chromium} = await import('playwright-core'));
} catch (e) {
  skip(`playwright-core is missing (cd tests/browser && npm ci): ${String(e && e.message).split('\n')[0]}`);
}

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.log(`FAIL: ${name} is not set`);
    process.exit(1);
  }
  return v;
};
const BASE = env('SUPERVISOR_URL').replace(/\/+$/, '');
const TOKEN = env('SUPERVISOR_TOKEN').trim();
const GROUP = env('SUPERVISOR_GROUP');
const WORK_DIR = env('SUPERVISOR_WORK_DIR');
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || '';
const WAIT = Number(process.env.DASHBOARD_TIMEOUT_MS) || 20000;

const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

// ------------------------------------------------------------------ API from the test

async function api(method, p, body) {
  const res = await fetch(BASE + p, {
    method,
    headers: {Authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : {'Content-Type': 'application/json'})},
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p} answered ${res.status}: ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : null;
}

async function submit(command) {
  const r = await api('POST', '/api/jobs', {command, group: GROUP});
  if (!r || !Array.isArray(r.ids) || r.ids.length !== 1) throw new Error(`POST /api/jobs answered ${JSON.stringify(r)}`);
  return r.ids[0];
}

/** Polls `fn` until it returns something truthy, or fails after WAIT ms. */
async function until(what, fn) {
  const deadline = Date.now() + WAIT;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
const css = (s) => String(s).replace(/["\\]/g, '\\$&');

// ------------------------------------------------------------------ the test

let currentStep = 'start';
function step(name) {
  currentStep = name;
  log(name);
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'supervisor-dashboard-'));
let context = null;
let page = null;
let cleanedUp = false;
const pageErrors = [];
const consoleErrors = [];
const apiRequests = [];

async function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  if (context) {
    try {
      await Promise.race([context.close(), new Promise((r) => setTimeout(r, 10000))]);
    } catch { /* already gone */ }
  }
  fs.rmSync(userDataDir, {recursive: true, force: true});
}

// A last resort if the browser hangs: the whole test has a deadline too (before the
// 3 minutes the Rust test gives it, with the default WAIT).
const TOTAL = WAIT * 7;
const watchdog = setTimeout(async () => {
  console.log(`FAIL: the test did not finish within ${TOTAL / 1000} s (step: ${currentStep})`);
  await cleanup();
  process.exit(1);
}, TOTAL);

async function wait(selector, what, opts = {}) {
  try {
    return await page.waitForSelector(selector, {timeout: WAIT, ...opts});
  } catch (e) {
    throw new Error(`the page did not show ${what} within ${WAIT} ms (selector ${selector})`);
  }
}

async function run() {
  fs.mkdirSync(WORK_DIR, {recursive: true});
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: DESKTOP,
  });
  page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const where = (m.location() && m.location().url) || '';
    if (/\/favicon\.ico$/.test(where)) return;
    consoleErrors.push(`${m.text()}${where ? ` (${where})` : ''}`);
  });
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/api/')) apiRequests.push({at: Date.now(), method: r.method(), path: u.pathname + u.search});
  });

  // A job that waits behind a paused group, queued before the page opens: neither a
  // submission nor a pause is an event, so the page learns of it from its first fetch.
  step(`1. pause ${GROUP}, submit a job that waits for a file, open the dashboard`);
  const goFile = path.join(WORK_DIR, 'go');
  fs.rmSync(goFile, {force: true});
  await api('POST', `/api/groups/${encodeURIComponent(GROUP)}/pause`);
  const id1 = await submit(['sh', '-c', `while [ ! -e ${shq(goFile)} ]; do sleep 0.05; done`]);
  log(`   job ${id1} submitted`);
  // Mark the document so that a reload would show.
  await page.goto(`${BASE}/`, {waitUntil: 'load'});
  const marker = await page.evaluate(() => { window.__loaded = Date.now(); return window.__loaded; });
  await wait('[data-testid=connection][data-state=connected]', 'the live indicator (event stream connected)');
  await wait('[data-testid=child-row-grabber]', 'the grabber row');
  await wait(`[data-testid="group-${css(GROUP)}"]`, `the group ${GROUP}`);
  const noToken = await page.evaluate(() => localStorage.getItem('supervisor.token'));
  if (noToken) throw new Error('a fresh profile already has a token in localStorage');

  // 2. The job goes queued -> running -> succeeded on the page, without a reload.
  step(`2. job ${id1} queued on the page`);
  const row1 = `[data-testid=job-row-${id1}]`;
  await wait(`${row1}[data-state=queued]`, `job ${id1} queued`);
  await wait(`[data-testid="group-${css(GROUP)}"][data-paused=true]`, `${GROUP} marked paused`);
  step(`   resume ${GROUP}`);
  await api('POST', `/api/groups/${encodeURIComponent(GROUP)}/resume`);
  await wait(`${row1}[data-state=running]`, `job ${id1} running`);
  step(`   create ${goFile}`);
  fs.writeFileSync(goFile, '');
  await wait(`${row1}[data-state=succeeded]`, `job ${id1} succeeded`);

  // 3. A killed worker: its row's restart count goes up.
  step('3. kill an idle worker');
  const victim = await until(`an idle worker of ${GROUP} in /api/status`, async () => {
    const s = await api('GET', '/api/status');
    return (s.children || []).find((c) => c.role === 'worker' && c.group === GROUP && c.state === 'idle' && c.pid);
  });
  const childRow = `[data-testid="child-row-${css(GROUP)}-${victim.slot}"]`;
  await wait(`${childRow}[data-pid="${victim.pid}"]`, `worker ${GROUP}/${victim.slot} with pid ${victim.pid}`);
  const before = Number(victim.restarts) || 0;
  log(`   SIGKILL worker ${GROUP}/${victim.slot} (pid ${victim.pid}, ${before} restarts)`);
  process.kill(victim.pid, 'SIGKILL');
  await page.waitForFunction(([sel, n]) => {
    const el = document.querySelector(sel);
    return el && Number(el.getAttribute('data-restarts')) > n;
  }, [childRow, before], {timeout: WAIT}).catch(() => {
    throw new Error(`the page did not show more than ${before} restarts for ${GROUP}/${victim.slot} within ${WAIT} ms`);
  });
  await page.waitForFunction(([sel, pid]) => {
    const el = document.querySelector(sel);
    return el && el.getAttribute('data-state') === 'idle' && el.getAttribute('data-pid') && el.getAttribute('data-pid') !== String(pid);
  }, [childRow, victim.pid], {timeout: WAIT}).catch(() => {
    throw new Error(`the page did not show ${GROUP}/${victim.slot} idle again with a new pid within ${WAIT} ms`);
  });

  // 4. Cancel from the job page; the token form comes up (none saved yet).
  step('4. cancel a running job from its page');
  const id2 = await submit(['sleep', '300']);
  log(`   job ${id2} submitted`);
  const row2 = `[data-testid=job-row-${id2}]`;
  await wait(`${row2}[data-state=running]`, `job ${id2} running`);
  await page.click(`[data-testid=job-link-${id2}]`);
  await wait(`[data-testid=job-page] [data-testid=job-state][data-state=running]`, `the page of job ${id2}, running`);
  await page.click('[data-testid=job-cancel]');
  await wait('[data-testid=token-input]', 'the token form');
  await page.fill('[data-testid=token-input]', TOKEN);
  await page.click('[data-testid=token-submit]');
  await wait('[data-testid=job-state][data-state=canceled]', `job ${id2} canceled on its page`);
  await wait(`${row2}[data-state=canceled]`, `job ${id2}'s row canceled`, {state: 'attached'});
  const saved = await page.evaluate(() => localStorage.getItem('supervisor.token'));
  if (saved !== TOKEN) throw new Error('the token entered in the form is not kept in localStorage');

  // 5. The live log tail of a job on its page.
  step('5. follow a job\'s log on its page');
  const go2 = path.join(WORK_DIR, 'go2');
  fs.rmSync(go2, {force: true});
  const id3 = await submit(['sh', '-c', `echo dashboard-log-first; while [ ! -e ${shq(go2)} ]; do sleep 0.05; done; echo dashboard-log-last`]);
  log(`   job ${id3} submitted`);
  await page.click('[data-testid=job-back]');
  const row3 = `[data-testid=job-row-${id3}]`;
  await wait(`${row3}[data-state=running]`, `job ${id3} running`);
  await page.click(`[data-testid=job-link-${id3}]`);
  await page.waitForFunction(() => (document.querySelector('[data-testid=job-log]')?.textContent || '').includes('dashboard-log-first'),
    null, {timeout: WAIT}).catch(() => { throw new Error(`job ${id3}'s log on its page did not show its first line within ${WAIT} ms`); });
  fs.writeFileSync(go2, '');
  await page.waitForFunction(() => (document.querySelector('[data-testid=job-log]')?.textContent || '').includes('dashboard-log-last'),
    null, {timeout: WAIT}).catch(() => { throw new Error(`job ${id3}'s log on its page did not show its last line (following) within ${WAIT} ms`); });
  await wait('[data-testid=job-state][data-state=succeeded]', `job ${id3} succeeded on its page`);

  // 6. Screenshots of the overview, with children, groups and finished jobs.
  step('6. overview' + (SCREENSHOT_DIR ? ', screenshots' : ''));
  await page.click('[data-testid=job-back]');
  await wait('[data-testid=overview] [data-testid^=child-row-]', 'the children');
  await wait(`[data-testid="group-${css(GROUP)}"]`, 'the groups');
  await wait(`[data-testid=job-row-${id1}][data-state=succeeded]`, 'finished jobs');
  await wait(`[data-testid=job-row-${id3}][data-state=succeeded]`, `job ${id3} succeeded in the list`);
  if (SCREENSHOT_DIR) {
    fs.mkdirSync(SCREENSHOT_DIR, {recursive: true});
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({path: path.join(SCREENSHOT_DIR, 'dashboard-desktop.png')});
    await page.setViewportSize(PHONE);
    await wait('[data-testid=child-row-grabber]', 'the children at phone size');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error(`at ${PHONE.width} px the page is ${overflow} px wider than the screen`);
    await page.screenshot({path: path.join(SCREENSHOT_DIR, 'dashboard-phone.png')});
    await page.setViewportSize(DESKTOP);
    log(`   saved in ${SCREENSHOT_DIR}`);
  }

  // 7. An idle page sends no request (no polling), and it never reloaded.
  step('7. an idle page is quiet; no reload happened');
  const lastSeq = () => page.evaluate(() => document.querySelector('[data-testid=events] [data-seq]')?.getAttribute('data-seq') || '');
  const seqBefore = await lastSeq();
  const since = Date.now() + 2500;   // a refresh already due (at most 2 s after the last event) may still come
  await new Promise((r) => setTimeout(r, 5000));
  const quiet = apiRequests.filter((r) => r.at > since && !r.path.startsWith('/api/events'));
  if ((await lastSeq()) === seqBefore && quiet.length) {
    throw new Error(`the page sent requests while no event came: ${quiet.map((r) => `${r.method} ${r.path}`).join(', ')}`);
  }
  const markerNow = await page.evaluate(() => window.__loaded);
  if (markerNow !== marker) throw new Error('the page was reloaded (window.__loaded changed)');

  if (pageErrors.length) throw new Error(`the page threw:\n  ${pageErrors.join('\n  ')}`);
  const csp = consoleErrors.filter((e) => /Content Security Policy|Refused to/i.test(e));
  if (csp.length) throw new Error(`Content-Security-Policy violations:\n  ${csp.join('\n  ')}`);
}

let ok = false;
try {
  await run();
  ok = true;
} catch (e) {
  console.log(`FAIL (${currentStep}): ${e && e.message ? e.message : e}`);
  if (pageErrors.length) console.log(`page errors:\n  ${pageErrors.join('\n  ')}`);
  if (consoleErrors.length) console.log(`console errors:\n  ${consoleErrors.slice(-20).join('\n  ')}`);
  if (page) {
    try {
      const notes = await page.evaluate(() => [...document.querySelectorAll('[data-testid=error]')].map((n) => n.textContent).join(' | '));
      if (notes) console.log(`errors shown on the page: ${notes}`);
      const shot = path.join(WORK_DIR, 'dashboard-failure.png');
      await page.screenshot({path: shot, fullPage: true, timeout: 10000});
      console.log(`screenshot: ${shot}`);
    } catch (e2) {
      console.log(`(no failure screenshot: ${e2.message.split('\n')[0]})`);
    }
  }
} finally {
  clearTimeout(watchdog);
  await cleanup();
}
if (ok) {
  if (consoleErrors.length) console.log(`note: console errors:\n  ${consoleErrors.join('\n  ')}`);
  log('PASS');
}
process.exit(ok ? 0 : 1);
