// Drives the dashboard in headless Chromium against a running stack (tools/with-stack.sh: two
// workers with the built-in handlers on queue "default"):
//   - the overview shows each queue with its counts, live;
//   - a FAILED job is retried from its page until it succeeds, its history on the page;
//   - a queue is paused and resumed from its page (a job created meanwhile waits, then runs);
//   - every QUEUED job of a queue with no worker is cancelled by the bulk action, confirmed;
//   - the workers page lists the two workers;
//   - with STACK_SECURE_HTTP (a dispatch with API keys on, as tools/test-clients.sh starts):
//     the page asks for a key, refuses a wrong one, lets a viewer (STACK_VIEWER_TOKEN) see the
//     queues and refuses its pause with the reason.
// Any page error or console error (a Content-Security-Policy violation included) fails it.
// Screenshots go to $ARTIFACTS (default target/dashboard).
//
//   STACK_HTTP=http://127.0.0.1:8080 node tools/dashboard-test/test.mjs
//   (tools/with-stack.sh tools/test-clients.sh dashboard runs it both ways)
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.STACK_HTTP || 'http://127.0.0.1:8080';
const artifacts = process.env.ARTIFACTS || 'target/dashboard';
const T = 30_000;
mkdirSync(artifacts, { recursive: true });

async function api(method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

async function until(what, fn, timeout = T) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const state = async (id) => (await api('GET', '/api/job/' + id)).job.state;
const step = (s) => console.log('dashboard-test: ' + s);

const profile = mkdtempSync(join(tmpdir(), 'dispatch-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 860 },
  ignoreHTTPSErrors: true, // the keys-on dispatch's certificate is the test CA's
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const problems = [];
let failed = false;
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => { if (m.type() === 'error') problems.push('console error: ' + m.text()); });

  step('overview shows the queues with their counts');
  const done = [];
  for (let i = 0; i < 3; i++) done.push((await api('POST', '/api/job', { queue: 'default', type: 'noop', payload: { i } })).job.id);
  const waiting = (await api('POST', '/api/job', { queue: 'reports', type: 'noop', options: { labels: { team: 'finance' } } })).job.id;
  for (const id of done) await until('job ' + id + ' to succeed', async () => (await state(id)) === 'JOB_STATE_SUCCEEDED');
  await page.goto(base + '/');
  await page.locator('tr[data-queue="reports"] td[data-state="QUEUED"]', { hasText: '1' }).waitFor();
  await until('the succeeded count on the overview', async () =>
    Number((await page.locator('tr[data-queue="default"] td[data-state="SUCCEEDED"]').innerText()).replace(/,/g, '')) >= 3);
  await page.locator('[data-stat="failure-rate"]').waitFor();
  await page.screenshot({ path: join(artifacts, 'overview.png'), fullPage: true });

  step('a failed job is retried from its page until it succeeds');
  let failedId;
  for (let i = 0; i < 40 && !failedId; i++) {
    const id = (await api('POST', '/api/job', { queue: 'default', type: 'fail', payload: { probability: 0.5 }, options: { maxAttempts: 1 } })).job.id;
    const end = await until('job ' + id + ' to finish', async () => {
      const s = await state(id);
      return ['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED'].includes(s) && s;
    });
    if (end === 'JOB_STATE_FAILED') failedId = id;
  }
  if (!failedId) throw new Error('no job failed in 40 tries at probability 0.5');
  await page.goto(base + '/#/job/' + failedId);
  await page.locator('h1 .badge.FAILED').waitFor();
  await page.locator('[data-error]').waitFor();
  await page.screenshot({ path: join(artifacts, 'job-failed.png'), fullPage: true });
  let retries = 0;
  for (;;) {
    await page.locator('h1 button', { hasText: 'Retry' }).click();
    retries++;
    const badge = page.locator('h1 .badge.SUCCEEDED, h1 .badge.FAILED');
    await until('the retried attempt to finish', async () => {
      const s = await state(failedId);
      return ['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED'].includes(s) && (await badge.count()) > 0 &&
        (await badge.first().innerText()) === s.replace('JOB_STATE_', '');
    });
    if ((await state(failedId)) === 'JOB_STATE_SUCCEEDED') break;
    if (retries >= 30) throw new Error('the job failed 30 retries in a row');
  }
  await page.locator('h1 .badge.SUCCEEDED').waitFor();
  await until('the history to show every attempt', async () => (await page.locator(".timeline li").count()) >= 3 * (retries + 1));
  await page.screenshot({ path: join(artifacts, 'job-succeeded.png'), fullPage: true });
  step(`succeeded after ${retries} retr${retries === 1 ? 'y' : 'ies'}`);

  step('pause and resume a queue from its page');
  await page.goto(base + '/#/queue/default');
  await page.locator('h1 button', { hasText: 'Pause' }).click();
  await page.locator('h1 .badge.paused').waitFor();
  const held = (await api('POST', '/api/job', { queue: 'default', type: 'noop' })).job.id;
  await page.locator('.tabs a[data-tab="QUEUED"] .count', { hasText: /^1$/ }).waitFor();
  // Workers learn the pause from their announcements (every 2 s): let two pass, the job waits.
  const seen = async () => (await api('GET', '/api/workers')).workers.map((w) => w.lastSeen).join();
  for (let i = 0; i < 2; i++) {
    const before = await seen();
    await until('another round of announcements', async () => (await seen()) !== before, 10_000);
  }
  if ((await state(held)) !== 'JOB_STATE_QUEUED') throw new Error('a job of the paused queue ran');
  await page.screenshot({ path: join(artifacts, 'queue-paused.png'), fullPage: true });
  await page.locator('h1 button', { hasText: 'Resume' }).click();
  await until('the held job to run after resume', async () => (await state(held)) === 'JOB_STATE_SUCCEEDED');
  await page.locator('h1 .badge.paused').waitFor({ state: 'detached' });

  step('bulk-cancel the queued jobs of a queue, confirmed');
  await page.goto(base + '/#/queue/reports?state=QUEUED&label=team%3Dfinance');
  await page.locator(`tr[data-job="${waiting}"]`).waitFor();
  await page.locator('button', { hasText: 'Cancel every queued job matching' }).click();
  await page.locator('#confirm:not([hidden])').waitFor();
  await page.screenshot({ path: join(artifacts, 'bulk-confirm.png') });
  await page.locator('#confirm-yes').click();
  await until('the queued job cancelled', async () => (await state(waiting)) === 'JOB_STATE_CANCELLED');
  await page.locator('.tabs a[data-tab="QUEUED"] .count', { hasText: /^0$/ }).waitFor();

  step('the workers page lists the workers');
  await page.goto(base + '/#/workers');
  await until('two workers listed', async () => (await page.locator('tr[data-worker]').count()) >= 2);
  await page.screenshot({ path: join(artifacts, 'workers.png'), fullPage: true });

  // With keys on (the TLS dispatch of tools/test-clients.sh, sharing this stack's Redis): the
  // page asks for a key, refuses a wrong one, shows everything to a viewer, and a viewer's
  // pause is refused with the reason.
  const secure = process.env.STACK_SECURE_HTTP;
  if (secure) {
    step('with keys on: the page asks for a key; a viewer sees and may not pause');
    const p = await context.newPage();
    p.setDefaultTimeout(T);
    p.on('pageerror', (e) => problems.push('page error (keys on): ' + e.message));
    await p.goto(secure + '/');
    await p.locator('#login:not([hidden])').waitFor();
    await p.screenshot({ path: join(artifacts, 'login.png') });
    await p.locator('#login-token').fill('dsp_not-a-key');
    await p.locator('#login-form button[type=submit]').click();
    await p.locator('#login-why', { hasText: 'was refused' }).waitFor();
    await p.locator('#login-token').fill(process.env.STACK_VIEWER_TOKEN);
    await p.locator('#login-form button[type=submit]').click();
    await p.locator('#login').waitFor({ state: 'hidden' });
    await p.locator('tr[data-queue="default"]').waitFor();
    await p.locator('tr[data-queue="default"] button', { hasText: 'Pause' }).click();
    await p.locator('#flash.error', { hasText: 'may not' }).waitFor();
    await p.locator('#signout').click();
    await p.locator('#login:not([hidden])').waitFor();
    await p.close();
  }

  if (problems.length) throw new Error(problems.join('\n'));
  step('ok (screenshots in ' + artifacts + ')');
} catch (e) {
  failed = true;
  console.error('dashboard-test: FAILED: ' + (e.stack || e));
  if (problems.length) console.error(problems.join('\n'));
  try { await context.pages()[0].screenshot({ path: join(artifacts, 'failure.png'), fullPage: true }); } catch (_) { /* none */ }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
