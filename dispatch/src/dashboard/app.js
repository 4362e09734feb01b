// Dispatch dashboard: plain JavaScript, no build step. Every read and action goes through the
// REST API (/api/...), with the API key the user typed when dispatch asks for one. Text from
// the server is only ever inserted as text (h() below), never as HTML.
'use strict';

const STATES = ['QUEUED', 'SCHEDULED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const COUNT_FIELD = { QUEUED: 'depth', SCHEDULED: 'scheduled', RUNNING: 'running', SUCCEEDED: 'succeeded', FAILED: 'failed', CANCELLED: 'cancelled' };
const PAGE = 20;
const REFRESH_MS = 2000;
const TOKEN_KEY = 'dispatch.token';

let config = { jaegerUrl: '' };
// Work of the page on screen: timers and streams, stopped when the page changes.
let pageTimers = [];
let pageAborts = [];

// ---------- DOM ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const $ = (sel) => document.querySelector(sel);

// Replaces el's children, leaving out the absent ones (replaceChildren would print "null").
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
}

function flash(message, isError) {
  const el = $('#flash');
  el.textContent = message;
  el.className = isError ? 'flash error' : 'flash';
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, isError ? 8000 : 3500);
}

function confirmAction(title, text) {
  return new Promise((resolve) => {
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    $('#confirm').hidden = false;
    const done = (answer) => {
      $('#confirm').hidden = true;
      $('#confirm-yes').onclick = null;
      $('#confirm-no').onclick = null;
      resolve(answer);
    };
    $('#confirm-yes').onclick = () => done(true);
    $('#confirm-no').onclick = () => done(false);
  });
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = 'Bearer ' + token;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const message = (json && json.error && json.error.message) || text || resp.statusText;
    if (resp.status === 401) askForKey(message);
    throw new ApiError(resp.status, message);
  }
  return json;
}

const get = (path) => api('GET', path);
const post = (path, body) => api('POST', path, body || {});

// An action: runs it, says what happened, refreshes the page.
async function act(what, fn) {
  try {
    const msg = await fn();
    flash(msg || what + ': done');
    render();
  } catch (e) {
    const hint = e.status === 403 ? ' (your key\'s role may not do this)' : '';
    flash(what + ' failed: ' + e.message + hint, true);
  }
}

function askForKey(why) {
  $('#login-why').textContent = sessionStorage.getItem(TOKEN_KEY)
    ? 'That key was refused (' + why + '). Enter another.'
    : 'This dispatch needs an API key. A viewer key shows everything; actions need a producer or admin key.';
  $('#login').hidden = false;
  $('#login-token').focus();
}

// ---------- formatting ----------

const n = (v) => Number(v || 0);
const fmtNum = (v) => n(v).toLocaleString('en-US');

function ago(iso) {
  if (!iso) return '';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 0) return 'in ' + span(-s);
  return span(s) + ' ago';
}

function span(s) {
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
}

function when(iso) {
  return iso ? h('span', { title: iso }, ago(iso)) : h('span', { class: 'muted' }, '—');
}

const stateName = (s) => String(s || '').replace('JOB_STATE_', '');
const badge = (s) => h('span', { class: 'badge ' + stateName(s) }, stateName(s));
const pretty = (v) => h('pre', { class: 'json' }, v === undefined ? 'null' : JSON.stringify(v, null, 2));

// ---------- routing ----------

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params };
}

function link(parts, params) {
  const q = params && [...params].length ? '?' + params.toString() : '';
  return '#/' + parts.map(encodeURIComponent).join('/') + q;
}

function stopPage() {
  pageTimers.forEach(clearInterval);
  pageAborts.forEach((a) => a.abort());
  pageTimers = [];
  pageAborts = [];
}

function every(ms, fn) {
  pageTimers.push(setInterval(fn, ms));
}

async function render() {
  stopPage();
  const { parts, params } = route();
  document.querySelectorAll('[data-nav]').forEach((a) => {
    a.classList.toggle('active', (parts[0] || 'queues') === a.dataset.nav || (parts[0] === 'queue' && a.dataset.nav === 'queues'));
  });
  $('#signout').hidden = !sessionStorage.getItem(TOKEN_KEY);
  const main = $('#main');
  try {
    if (parts[0] === 'queue' && parts[1]) await queuePage(main, parts[1], params);
    else if (parts[0] === 'job' && parts[1]) await jobPage(main, parts[1]);
    else if (parts[0] === 'workers') await workersPage(main);
    else await overview(main);
  } catch (e) {
    fill(main, h('div', { class: 'card err' }, 'Could not load this page: ' + e.message));
  }
}

// Keeps a region up to date: fn() builds its content, every REFRESH_MS.
function liveRegion(el, fn) {
  const refresh = async () => {
    try {
      fill(el, ...[await fn()].flat());
      $('#live').classList.remove('stale');
    } catch (e) {
      $('#live').classList.add('stale');
      if (e.status !== 401) fill(el, h('p', { class: 'err' }, e.message));
    }
  };
  every(REFRESH_MS, refresh);
  return refresh();
}

// ---------- overview ----------

async function overview(main) {
  const table = h('div', { class: 'card' });
  const chart = h('div', { class: 'card chart' });
  fill(main, h('h1', {}, 'Queues'), table, chart);
  await Promise.all([
    liveRegion(table, async () => queuesTable((await get('/api/queues')).queues || [])),
    liveChart(chart, ''),
  ]);
}

function queuesTable(queues) {
  if (!queues.length) {
    return h('p', { class: 'empty' }, 'No queue has a job yet. Create one: ',
      h('code', {}, 'curl -X POST localhost:8080/api/job -d \'{"queue":"default","type":"noop"}\''));
  }
  return h('table', {},
    h('thead', {}, h('tr', {},
      h('th', {}, 'Queue'), ...STATES.map((s) => h('th', { class: 'num' }, s.toLowerCase())),
      h('th', {}, 'Oldest queued'), h('th', {}, ''))),
    h('tbody', {}, queues.map((q) => h('tr', { 'data-queue': q.name },
      h('td', {}, h('a', { href: link(['queue', q.name]) }, q.name), ' ', q.paused ? h('span', { class: 'badge paused' }, 'paused') : null),
      ...STATES.map((s) => h('td', { class: 'num', 'data-state': s },
        n(q[COUNT_FIELD[s]]) ? h('a', { href: link(['queue', q.name], new URLSearchParams({ state: s })) }, fmtNum(q[COUNT_FIELD[s]])) : '0')),
      h('td', {}, q.oldestQueuedCreatedAt ? when(q.oldestQueuedCreatedAt) : h('span', { class: 'muted' }, '—')),
      h('td', {}, pauseButton(q))))));
}

function pauseButton(q) {
  return q.paused
    ? h('button', { onclick: () => act('Resume ' + q.name, async () => { await post('/api/queue/' + encodeURIComponent(q.name) + ':resume'); return 'Queue ' + q.name + ' resumed'; }) }, 'Resume')
    : h('button', { onclick: () => act('Pause ' + q.name, async () => { await post('/api/queue/' + encodeURIComponent(q.name) + ':pause'); return 'Queue ' + q.name + ' paused'; }) }, 'Pause');
}

// The last hour per minute: finished jobs as bars (succeeded over failed), the failure rate.
async function liveChart(el, queue) {
  const draw = async () => {
    const q = new URLSearchParams({ minutes: '60' });
    if (queue) q.set('queue', queue);
    const minutes = (await get('/api/stats?' + q)).minutes || [];
    fill(el, ...chartOf(minutes, queue));
  };
  pageTimers.push(setInterval(() => draw().catch(() => {}), 10000));
  return draw().catch((e) => fill(el, h('p', { class: 'err' }, e.message)));
}

function chartOf(minutes, queue) {
  const W = 720, H = 120, gap = 2;
  const ok = minutes.map((m) => n(m.succeeded));
  const bad = minutes.map((m) => n(m.failed));
  const retried = minutes.map((m) => n(m.retried));
  const max = Math.max(1, ...minutes.map((_, i) => ok[i] + bad[i]));
  const bw = W / Math.max(1, minutes.length);
  const bars = [];
  minutes.forEach((m, i) => {
    const x = i * bw;
    const hOk = (ok[i] / max) * H, hBad = (bad[i] / max) * H;
    const title = new Date(m.start).toLocaleTimeString() + ': ' + ok[i] + ' succeeded, ' + bad[i] + ' failed, ' + retried[i] + ' retried';
    bars.push(svg('rect', { x, y: H - hOk, width: Math.max(1, bw - gap), height: hOk, fill: '#1f9d55' }, svg('title', {}, title)));
    bars.push(svg('rect', { x, y: H - hOk - hBad, width: Math.max(1, bw - gap), height: hBad, fill: '#d64545' }, svg('title', {}, title)));
  });
  const total = ok.reduce((a, b) => a + b, 0) + bad.reduce((a, b) => a + b, 0);
  const failed = bad.reduce((a, b) => a + b, 0);
  const rate = total ? ((failed / total) * 100).toFixed(1) + '%' : '—';
  const perMin = minutes.length ? (total / minutes.length).toFixed(1) : '0';
  return [
    h('h2', {}, 'Last hour' + (queue ? ' on ' + queue : ', all queues')),
    svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'jobs finished per minute' },
      svg('line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, stroke: '#e3e6ec' }), ...bars),
    h('div', { class: 'legend' },
      h('span', {}, h('span', { class: 'swatch ok' }), 'succeeded'),
      h('span', {}, h('span', { class: 'swatch bad' }), 'failed'),
      h('span', { 'data-stat': 'per-minute' }, perMin + ' jobs/min'),
      h('span', { 'data-stat': 'failure-rate' }, 'failure rate ' + rate),
      h('span', {}, 'peak ' + max + '/min')),
  ];
}

// ---------- queue ----------

async function queuePage(main, name, params) {
  const state = params.get('state') || '';
  const type = params.get('type') || '';
  const labels = params.getAll('label');
  const tokens = (params.get('page') || '').split(',').filter(Boolean); // tokens of the pages before
  const head = h('h1', {});
  const tabs = h('div', { class: 'tabs' });
  const list = h('div', { class: 'card' });
  const setParam = (changes) => {
    const p = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) {
      p.delete(k);
      [].concat(v).filter((x) => x !== '' && x !== undefined).forEach((x) => p.append(k, x));
    }
    location.hash = link(['queue', name], p);
  };
  const typeInput = h('input', { name: 'type', placeholder: 'type', value: type, size: 14 });
  const labelInput = h('input', { name: 'label', placeholder: 'label key=value, …', value: labels.join(', '), size: 24 });
  const idInput = h('input', { name: 'id', placeholder: 'job id', size: 38 });
  const filters = h('form', { class: 'toolbar', onsubmit: (e) => {
    e.preventDefault();
    setParam({ type: typeInput.value.trim(), label: labelInput.value.split(',').map((s) => s.trim()).filter(Boolean), page: '' });
  } }, typeInput, labelInput, h('button', { type: 'submit' }, 'Filter'),
  (type || labels.length) ? h('button', { type: 'button', onclick: () => setParam({ type: '', label: [], page: '' }) }, 'Clear') : null,
  h('span', { class: 'spacer' }));
  const search = h('form', { class: 'toolbar', onsubmit: (e) => {
    e.preventDefault();
    if (idInput.value.trim()) location.hash = link(['job', idInput.value.trim()]);
  } }, idInput, h('button', { type: 'submit' }, 'Open job'));
  const bulk = h('span', {});
  const chart = h('div', { class: 'card chart' });
  fill(main, head, tabs, h('div', { class: 'card' }, filters, search, bulk), list, chart);

  const query = (token, size) => {
    const q = new URLSearchParams({ queue: name, pageSize: String(size) });
    if (state) q.set('state', 'JOB_STATE_' + state);
    if (type) q.set('type', type);
    labels.forEach((l) => q.append('labels', l));
    if (token) q.set('pageToken', token);
    return '/api/jobs?' + q;
  };

  const refreshHead = async () => {
    const queues = (await get('/api/queues')).queues || [];
    const q = queues.find((x) => x.name === name) || { name };
    fill(head, h('a', { href: '#/' }, 'Queues'), ' / ', name,
      q.paused ? h('span', { class: 'badge paused' }, 'paused') : null, pauseButton(q));
    const total = STATES.reduce((a, s) => a + n(q[COUNT_FIELD[s]]), 0);
    fill(tabs, 
      h('a', { href: link(['queue', name], withState(params, '')), class: state ? '' : 'active' }, 'All', h('span', { class: 'count' }, fmtNum(total))),
      ...STATES.map((s) => h('a', { href: link(['queue', name], withState(params, s)), class: state === s ? 'active' : '', 'data-tab': s },
        s.toLowerCase(), h('span', { class: 'count' }, fmtNum(q[COUNT_FIELD[s]])))));
  };

  const filterText = [type && 'type ' + type, ...labels.map((l) => 'label ' + l)].filter(Boolean).join(', ');
  if (state === 'FAILED' || state === 'CANCELLED') {
    fill(bulk, h('button', { class: 'danger', onclick: () => bulkAction('retry', state, name, filterText, query) },
      'Retry every ' + state.toLowerCase() + ' job' + (filterText ? ' matching' : '')));
  } else if (state === 'QUEUED' || state === 'SCHEDULED') {
    fill(bulk, h('button', { class: 'danger', onclick: () => bulkAction('cancel', state, name, filterText, query) },
      'Cancel every ' + state.toLowerCase() + ' job' + (filterText ? ' matching' : '')));
  }

  const refreshList = async () => {
    const page = await get(query(tokens[tokens.length - 1] || '', PAGE));
    const jobs = page.jobs || [];
    const pager = h('div', { class: 'pager' },
      h('span', { class: 'muted' }, 'page ' + (tokens.length + 1)),
      h('button', { disabled: !tokens.length, onclick: () => setParam({ page: tokens.slice(0, -1).join(',') }) }, '‹ Previous'),
      h('button', { disabled: !page.nextPageToken, onclick: () => setParam({ page: [...tokens, page.nextPageToken].join(',') }) }, 'Next ›'));
    if (!jobs.length) return [h('p', { class: 'empty' }, 'No job here' + (filterText ? ' matching ' + filterText : '') + '.'), pager];
    return [h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', {}, 'Type'), h('th', {}, 'State'), h('th', { class: 'num' }, 'Attempt'),
        h('th', {}, 'Created'), h('th', {}, 'Updated'), h('th', {}, 'Error'))),
      h('tbody', {}, jobs.map((j) => h('tr', { 'data-job': j.id },
        h('td', {}, h('a', { class: 'mono', href: link(['job', j.id]) }, j.id)),
        h('td', {}, j.type),
        h('td', {}, badge(j.state)),
        h('td', { class: 'num' }, (j.attempt || 0) + ' / ' + (j.maxAttempts || 0)),
        h('td', {}, when(j.createdAt)),
        h('td', {}, when(j.updatedAt)),
        h('td', { class: 'muted' }, j.error ? String(j.error.message).slice(0, 80) : ''))))), pager];
  };
  await Promise.all([liveRegion(head, async () => { await refreshHead(); return [...head.childNodes]; }), liveRegion(list, refreshList), liveChart(chart, name)]);
}

function withState(params, s) {
  const p = new URLSearchParams(params);
  p.delete('page');
  if (s) p.set('state', s); else p.delete('state');
  return p;
}

// Retries (or cancels) every job of the tab that matches the filter, after a confirmation.
async function bulkAction(kind, state, queue, filterText, query) {
  const verb = kind === 'retry' ? 'Retry' : 'Cancel';
  const ok = await confirmAction(verb + ' ' + state.toLowerCase() + ' jobs?',
    verb + ' every ' + state + ' job of queue ' + queue + (filterText ? ' matching ' + filterText : '') + '. This cannot be undone.');
  if (!ok) return;
  await act(verb + ' ' + state.toLowerCase() + ' jobs', async () => {
    let done = 0, refused = 0, token = '';
    do {
      const page = await get(query(token, 500));
      for (const j of page.jobs || []) {
        try {
          await post('/api/job/' + encodeURIComponent(j.id) + ':' + kind, kind === 'cancel' ? { reason: 'cancelled from the dashboard' } : {});
          done++;
        } catch (e) {
          if (e.status === 403 || e.status === 401) throw e;
          refused++; // it moved on meanwhile
        }
      }
      token = page.nextPageToken || '';
    } while (token);
    return verb + ': ' + done + ' job' + (done === 1 ? '' : 's') + (refused ? ', ' + refused + ' had moved on' : '');
  });
}

// ---------- job ----------

async function jobPage(main, id) {
  const head = h('h1', {});
  const fields = h('div', { class: 'card' });
  const data = h('div', { class: 'cols' });
  const timeline = h('ol', { class: 'timeline' });
  fill(main, head, fields, data, h('div', { class: 'card' }, h('h2', {}, 'History'), timeline));
  let job;
  const load = async () => {
    job = (await get('/api/job/' + encodeURIComponent(id))).job;
    const state = stateName(job.state);
    fill(head, h('a', { href: link(['queue', job.queue]) }, job.queue), ' / ', h('span', { class: 'mono' }, job.id), badge(job.state),
      ['SCHEDULED', 'QUEUED', 'RUNNING'].includes(state) && !job.cancelRequested
        ? h('button', { class: 'danger', onclick: () => act('Cancel', async () => { await post('/api/job/' + encodeURIComponent(id) + ':cancel', { reason: 'cancelled from the dashboard' }); return 'Cancel requested'; }) }, 'Cancel') : null,
      ['FAILED', 'CANCELLED'].includes(state)
        ? h('button', { class: 'primary', onclick: () => act('Retry', async () => { const r = await post('/api/job/' + encodeURIComponent(id) + ':retry'); return 'Retried: attempt ' + r.job.attempt + ' queued'; }) }, 'Retry') : null);
    const trace = job.traceId
      ? (config.jaegerUrl ? h('a', { class: 'mono', href: config.jaegerUrl + '/trace/' + job.traceId, target: '_blank', rel: 'noopener' }, job.traceId) : h('span', { class: 'mono' }, job.traceId))
      : h('span', { class: 'muted' }, '—');
    const b = job.backoff || {};
    const row = (k, v) => [h('dt', {}, k), h('dd', {}, v === undefined || v === '' ? h('span', { class: 'muted' }, '—') : v)];
    fill(fields, h('dl', { class: 'grid' },
      row('Type', job.type), row('State', badge(job.state)),
      row('Attempt', (job.attempt || 0) + ' of ' + (job.maxAttempts || 0)),
      row('Created', when(job.createdAt)), row('Updated', when(job.updatedAt)),
      row('Run at', when(job.runAt)), row('Started', when(job.startedAt)), row('Finished', when(job.finishedAt)),
      row('Timeout', job.timeout), row('Backoff', `${b.initial || ''} × ${b.multiplier || ''} up to ${b.max || ''}, jitter ${b.jitter || 0}`),
      row('Idempotency key', job.idempotencyKey),
      row('Labels', Object.keys(job.labels || {}).length ? Object.entries(job.labels).map(([k, v]) => h('span', { class: 'badge' }, k + '=' + v)) : ''),
      row('Worker', job.lease ? job.lease.workerId + ' (lease until ' + new Date(job.lease.deadline).toLocaleTimeString() + ')' : ''),
      row('Cancel requested', job.cancelRequested ? 'yes' : ''),
      row('Trace', trace)));
    fill(data, 
      h('div', { class: 'card' }, h('h2', {}, 'Payload'), pretty(job.payload)),
      job.progress !== undefined ? h('div', { class: 'card' }, h('h2', {}, 'Progress'), pretty(job.progress)) : null,
      job.result !== undefined ? h('div', { class: 'card' }, h('h2', {}, 'Result'), pretty(job.result)) : null,
      job.error ? h('div', { class: 'card', 'data-error': '' }, h('h2', {}, 'Error (attempt ' + job.error.attempt + ')'),
        h('pre', { class: 'json err' }, job.error.message), h('p', { class: 'muted' }, job.error.retryable ? 'retryable' : 'not retryable')) : null);
  };
  await load();
  every(REFRESH_MS, () => load().catch(() => {}));
  followEvents(id, timeline, () => load().catch(() => {}));
}

// Reads the job's event stream (fetch, so the API key goes along) into the timeline; each
// new event reloads the job.
async function followEvents(id, list, onEvent) {
  const abort = new AbortController();
  pageAborts.push(abort);
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = 'Bearer ' + token;
  try {
    const resp = await fetch('/api/job/' + encodeURIComponent(id) + '/events', { headers, signal: abort.signal });
    if (!resp.ok || !resp.body) return;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (!data || block.includes('event: error')) continue;
        const ev = JSON.parse(data).event || {};
        list.append(h('li', { 'data-seq': ev.sequence },
          h('span', { class: 'muted' }, '#' + (ev.sequence || '')),
          h('span', {}, badge(ev.state)),
          h('span', {}, 'attempt ' + (ev.attempt || 0), ev.workerId ? ' · ' + ev.workerId : '', ' · ',
            h('span', { title: ev.timestamp }, ev.timestamp ? new Date(ev.timestamp).toLocaleString() : ''),
            ev.error ? h('div', { class: 'err' }, ev.error) : null)));
        onEvent();
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') list.append(h('li', { class: 'err' }, 'history stream ended: ' + e.message));
  }
}

// ---------- workers ----------

async function workersPage(main) {
  const table = h('div', { class: 'card' });
  fill(main, h('h1', {}, 'Workers'), table);
  await liveRegion(table, async () => {
    const workers = (await get('/api/workers')).workers || [];
    if (!workers.length) return h('p', { class: 'empty' }, 'No worker has announced itself in the last few seconds.');
    return h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Worker'), h('th', {}, 'Queues (concurrency)'), h('th', { class: 'num' }, 'In flight'),
        h('th', {}, 'Host'), h('th', {}, 'Version'), h('th', {}, 'Started'), h('th', {}, 'Last seen'))),
      h('tbody', {}, workers.map((w) => h('tr', { 'data-worker': w.workerId },
        h('td', { class: 'mono' }, w.workerId),
        h('td', {}, Object.entries(w.queues || {}).map(([q, c]) => h('span', { class: 'badge' }, q + ' × ' + c))),
        h('td', { class: 'num' }, String(w.inFlight || 0)),
        h('td', {}, w.hostname), h('td', {}, w.version),
        h('td', {}, when(w.startedAt)), h('td', {}, when(w.lastSeen))))));
  });
}

// ---------- start ----------

document.addEventListener('DOMContentLoaded', async () => {
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#login-token').value.trim());
    $('#login-token').value = '';
    $('#login').hidden = true;
    render();
  });
  $('#signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    render();
  });
  window.addEventListener('hashchange', render);
  try { config = await (await fetch('/ui/config.json')).json(); } catch (_) { /* defaults */ }
  render();
});
