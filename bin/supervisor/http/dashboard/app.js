// The supervisor dashboard: plain ES2020, no dependencies, no build step.
//
// It loads /api/status and /api/jobs once, then follows /api/events (Server-Sent
// Events) and applies each event to what it shows. While events arrive it also
// fetches status and the jobs list again, at most once every 2 s, to pick up what
// events do not say (new submissions, queue depths, exact counts); when nothing
// happens it sends no request at all. DOM updates are batched per animation frame,
// and every list is capped, so thousands of events a second stay cheap.

const TOKEN_KEY = 'supervisor.token';
const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'dead', 'canceled'];
const FINAL_STATES = new Set(['succeeded', 'failed', 'timed_out', 'dead', 'canceled']);
const RETRYABLE_STATES = new Set(['failed', 'timed_out', 'dead', 'canceled']);
const MAX_EVENTS = 200;            // events panel
const MAX_APPLIED = 20000;         // events kept to re-apply over a newer status
const LOG_KEEP = 256 * 1024;       // characters of log kept on the job page
const REFETCH_MS = 2000;           // at most one background refresh per this
const SPARK_MINUTES = 60;
const MIN_RENDER_MS = 125;       // DOM updates at most 8 times a second
const KNOWN_EVENTS = [
  'supervisor_started', 'snapshot', 'config_loaded', 'config_rejected', 'child_started',
  'child_ready', 'child_exited', 'child_restart_scheduled', 'group_gave_up', 'job_started',
  'job_finished', 'job_retry_scheduled', 'job_dead', 'supervisor_stopping',
  'supervisor_stopped', 'supervisor_panicked', 'outcomes_waiting',
];

// ---------------------------------------------------------------- small helpers

const $ = (id) => document.getElementById(id);

/** Creates an element: h('td', {class: 'x', 'data-testid': 'y', text: 'z'}, child...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function setText(el, text) {
  const t = text === undefined || text === null ? '' : String(text);
  if (el.textContent !== t) el.textContent = t;
}

function setAttr(el, name, value) {
  if (value === undefined || value === null) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== String(value)) {
    el.setAttribute(name, String(value));
  }
}

/** Server time now (unix seconds), from the client clock and the last status' `now`. */
function serverNow() {
  return Date.now() / 1000 + S.clockOffset;
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '';
  if (s < 0) s = 0;
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.floor(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return `${hrs}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

function fmtAgo(ts) {
  if (!ts) return '';
  const d = serverNow() - ts;
  if (d < 5) return 'now';
  if (d < 60) return `${Math.floor(d)}s ago`;
  if (d < 3600) return `${Math.floor(d / 60)}m ago`;
  if (d < 86400) return `${Math.floor(d / 3600)}h ago`;
  return `${Math.floor(d / 86400)}d ago`;
}

function fmtClock(ts) {
  if (!ts) return '';
  const d = new Date(ts * 1000);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function fmtDate(ts) {
  if (ts === null || ts === undefined) return '';
  const d = new Date(ts * 1000);
  if (isNaN(d.getTime())) return String(ts);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtSignal(sig) {
  if (sig === null || sig === undefined) return '';
  if (typeof sig === 'number') {
    const names = {1: 'HUP', 2: 'INT', 3: 'QUIT', 4: 'ILL', 6: 'ABRT', 7: 'BUS', 8: 'FPE', 9: 'KILL',
      11: 'SEGV', 13: 'PIPE', 14: 'ALRM', 15: 'TERM', 24: 'XCPU', 25: 'XFSZ'};
    return names[sig] ? `SIG${names[sig]}` : `signal ${sig}`;
  }
  const s = String(sig);
  return /^\d+$/.test(s) ? fmtSignal(Number(s)) : (s.startsWith('SIG') ? s : `SIG${s}`);
}

function fmtExit(obj) {
  if (!obj) return '';
  if (obj.signal !== null && obj.signal !== undefined) return fmtSignal(obj.signal);
  if (obj.exit_code !== null && obj.exit_code !== undefined) return String(obj.exit_code);
  return '';
}

function shellQuote(arg) {
  const s = String(arg);
  if (s !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function fmtCommand(cmd) {
  // A row born of an event has no command until the next fetch brings it.
  if (!Array.isArray(cmd)) return cmd === undefined || cmd === null ? '…' : String(cmd);
  return cmd.map(shellQuote).join(' ');
}

function jobDuration(job) {
  if (!job || !job.started_at) return null;
  const end = job.state === 'running' ? serverNow() : job.finished_at;
  if (!end) return null;
  return end - job.started_at;
}

function childKey(role, group, slot) {
  return role === 'grabber' ? 'grabber' : `${group}/${slot}`;
}

function childTestId(c) {
  return c.role === 'grabber' ? 'child-row-grabber' : `child-row-${c.group}-${c.slot}`;
}

function stateClass(state) {
  return `state state-${String(state || 'unknown').replace(/[^a-z0-9_-]/gi, '_')}`;
}

// ---------------------------------------------------------------- state

const S = {
  status: null,            // the last /api/status answer (supervisor, auth, ...)
  statusSeq: 0,            // its last_seq: events up to it are in what it says
  lastSeq: 0,              // the newest event seen
  clockOffset: 0,          // server now - client now, seconds
  children: new Map(),     // childKey -> row
  groups: new Map(),       // name -> group (with rpm: 60 ints and rpmMinute)
  groupOrder: [],
  counts: {},              // job state -> n
  evState: new Map(),      // job id -> state its events since the status imply
  jobs: new Map(),         // id -> job shown in the list
  applied: [],             // events newer than statusSeq, to re-apply over a newer fetch
  newEvents: [],           // for the events panel, not yet rendered
  incoming: [],            // parsed events not yet applied
  filters: {state: '', group: '', limit: 100},
  view: 'overview',
  job: null,               // job page: {id, data, error}
  log: null,               // job page log stream
  es: null,
  esRetryMs: 1000,
  esTimer: null,
  connState: 'connecting',
  everConnected: false,
  fetch: {inflight: false, timer: null, pending: false, last: 0},
  dirty: new Set(),
  frame: 0,
  flushTimer: null,
};

// ---------------------------------------------------------------- notices

function notify(message, kind = 'error') {
  const box = $('notices');
  const item = h('div', {class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status',
    'data-testid': kind === 'error' ? 'error' : 'notice'},
  h('span', {class: 'notice-text', text: message}));
  const close = h('button', {type: 'button', class: 'notice-close', 'aria-label': 'Dismiss', text: '×'});
  close.addEventListener('click', () => item.remove());
  item.append(close);
  box.prepend(item);
  while (box.children.length > 4) box.lastElementChild.remove();
  if (kind !== 'error') setTimeout(() => item.remove(), 5000);
}

// ---------------------------------------------------------------- token dialog

let tokenAsk = null;   // {promise, resolve, reject} while the dialog is open

function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

function setToken(t) {
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives as long as the page */ }
  memToken = t || '';
}
let memToken = '';
function token() { return getToken() || memToken; }

class Canceled extends Error {
  constructor() { super('canceled'); this.name = 'Canceled'; }
}

/** Opens the token form; resolves with the token entered, rejects with Canceled. */
function askToken(reason) {
  $('token-reason').textContent = reason || 'Changes need the supervisor\'s token (the content of its token_file).';
  if (tokenAsk) return tokenAsk.promise;
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  tokenAsk = {promise, resolve, reject};
  const dlg = $('token-dialog');
  const input = $('token-input');
  input.value = '';
  $('token-forget').hidden = !token();
  if (!dlg.open) {
    if (typeof dlg.showModal === 'function') dlg.showModal(); else dlg.setAttribute('open', '');
  }
  input.focus();
  return promise;
}

function closeTokenDialog(value) {
  const dlg = $('token-dialog');
  if (dlg.open) { if (typeof dlg.close === 'function') dlg.close(); else dlg.removeAttribute('open'); }
  const ask = tokenAsk;
  tokenAsk = null;
  if (!ask) return;
  if (value) ask.resolve(value); else ask.reject(new Canceled());
}

function setupTokenDialog() {
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('token-input').value.trim();
    if (!v) { $('token-input').focus(); return; }
    setToken(v);
    closeTokenDialog(v);
    // A token entered for reads also goes into the events URL.
    if (S.status && S.status.auth && S.status.auth.reads_need_token && S.connState !== 'connected') connectEvents();
  });
  $('token-cancel').addEventListener('click', () => closeTokenDialog(null));
  $('token-forget').addEventListener('click', () => {
    setToken('');
    notify('The saved token is forgotten.', 'ok');
    closeTokenDialog(null);
  });
  // Escape closes a modal <dialog> by itself: treat it as Cancel.
  $('token-dialog').addEventListener('close', () => { if (tokenAsk) closeTokenDialog(null); });
  $('token-button').addEventListener('click', () => {
    askToken(token() ? 'A token is saved. Enter a new one to replace it.' : undefined).then(
      () => notify('Token saved.', 'ok'), () => {});
  });
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status, body) { super(message); this.name = 'ApiError'; this.status = status; this.body = body; }
}

/**
 * fetch() with the token: a write without a saved token asks for it first; any 401
 * asks for it (again) and repeats the request. Rejects with Canceled if the form is
 * dismissed.
 */
async function api(path, {method = 'GET', body, signal, write = false} = {}) {
  for (;;) {
    let t = token();
    if (write && !t) t = await askToken('This change needs the supervisor\'s token (the content of its token_file).');
    const headers = {Accept: 'application/json'};
    if (t) headers.Authorization = `Bearer ${t}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {method, headers, signal, cache: 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError(`Cannot reach the supervisor (${e && e.message ? e.message : e}).`, 0, null);
    }
    if (res.status === 401) {
      const msg = await errorMessage(res);
      if (t) setToken('');
      await askToken(t ? `The token was refused (${msg}). Enter it again.` : `The supervisor wants its token (${msg}).`);
      continue;
    }
    return res;
  }
}

async function errorMessage(res) {
  let text = '';
  try { text = await res.text(); } catch { /* ignore */ }
  try {
    const j = JSON.parse(text);
    if (j && typeof j.error === 'string') return j.error;
  } catch { /* not JSON */ }
  return text.trim().slice(0, 200) || `${res.status} ${res.statusText}`;
}

async function apiJson(path, opts) {
  const res = await api(path, opts);
  const text = await res.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (!res.ok) {
    let msg = data && typeof data.error === 'string' ? data.error : (text.trim().slice(0, 200) || `${res.status} ${res.statusText}`);
    if (data && Array.isArray(data.errors) && data.errors.length) msg += `: ${data.errors.join('; ')}`;
    throw new ApiError(msg, res.status, data);
  }
  return data;
}

function reportError(e, what) {
  if (e instanceof Canceled || (e && e.name === 'AbortError')) return;
  notify(`${what}: ${e && e.message ? e.message : e}`, 'error');
}

// ---------------------------------------------------------------- fetching status and jobs

function jobsQuery() {
  const q = new URLSearchParams();
  if (S.filters.state) q.set('state', S.filters.state);
  if (S.filters.group) q.set('group', S.filters.group);
  q.set('limit', String(S.filters.limit));
  return `/api/jobs?${q}`;
}

/** Fetches status, the jobs list and (on the job page) the job; `now` skips the 2 s wait. */
function requestRefetch(now = false) {
  const f = S.fetch;
  if (f.inflight) { f.pending = true; if (now) f.pendingNow = true; return; }
  if (f.timer) {
    if (!now) return;
    clearTimeout(f.timer);
    f.timer = null;
  }
  const wait = now ? 0 : Math.max(0, f.last + REFETCH_MS - Date.now());
  f.timer = setTimeout(() => { f.timer = null; refetch(); }, wait);
}

async function refetch() {
  const f = S.fetch;
  f.inflight = true;
  f.last = Date.now();
  try {
    // Status first: its last_seq says which events the jobs list (fetched after it) holds.
    const status = await apiJson('/api/status');
    const jobs = await apiJson(jobsQuery());
    let job = null;
    const jobId = S.view === 'job' && S.job ? S.job.id : null;
    if (jobId !== null) {
      try { job = await apiJson(`/api/jobs/${jobId}`); } catch (e) { job = e; }
    }
    applyFetched(status, jobs, jobId, job);
  } catch (e) {
    reportError(e, 'Refreshing failed');
  } finally {
    f.inflight = false;
    f.last = Date.now();
    if (f.pending) {
      const now = f.pendingNow;
      f.pending = false;
      f.pendingNow = false;
      requestRefetch(now);
    }
  }
}

function applyFetched(status, jobs, jobId, job) {
  S.status = status || {};
  const seq = Number(S.status.last_seq) || 0;
  S.statusSeq = seq;
  if (typeof S.status.now === 'number') S.clockOffset = S.status.now - Date.now() / 1000;

  // Children and groups.
  const children = new Map();
  for (const c of S.status.children || []) {
    const row = {...c};
    children.set(childKey(row.role, row.group, row.slot), row);
  }
  S.children = children;
  const groups = new Map();
  const order = [];
  const minute = Math.floor((S.status.now || serverNow()) / 60);
  for (const g of S.status.groups || []) {
    const rpm = Array.isArray(g.restarts_per_minute) ? g.restarts_per_minute.map((n) => Number(n) || 0) : [];
    while (rpm.length < SPARK_MINUTES) rpm.unshift(0);
    groups.set(g.name, {...g, rpm: rpm.slice(-SPARK_MINUTES), rpmMinute: minute});
    order.push(g.name);
  }
  S.groups = groups;
  S.groupOrder = order;
  S.counts = {...(S.status.jobs || {})};

  // Jobs list.
  const map = new Map();
  for (const j of Array.isArray(jobs) ? jobs : []) map.set(Number(j.id), {...j});
  S.jobs = map;

  // Job page.
  if (jobId !== null && S.job && S.job.id === jobId) {
    if (job instanceof Error) {
      S.job.error = job.status === 404 ? `There is no job ${jobId}.` : job.message;
      if (job.status === 404) S.job.data = null;
    } else if (job) {
      S.job.data = job;
      S.job.error = null;
    }
    S.dirty.add('job');
  }

  // Events that came after what the fetch saw are applied again over it.
  S.evState = new Map();
  S.applied = S.applied.filter((ev) => ev.seq > seq);
  for (const ev of S.applied) applyEvent(ev, false);

  updateGroupFilter();
  for (const k of ['children', 'groups', 'jobs', 'summary']) S.dirty.add(k);
  scheduleRender();
}

// ---------------------------------------------------------------- events

function connectEvents() {
  if (S.esTimer) { clearTimeout(S.esTimer); S.esTimer = null; }
  if (S.es) { S.es.close(); S.es = null; }
  const after = S.lastSeq > 0 ? S.lastSeq : Math.max(0, S.statusSeq - MAX_EVENTS);
  let url = `/api/events?after=${after}`;
  const t = token();
  if (t && S.status && S.status.auth && S.status.auth.reads_need_token) url += `&token=${encodeURIComponent(t)}`;
  const es = new EventSource(url);
  S.es = es;
  setConn(S.everConnected ? 'disconnected' : 'connecting');
  es.onopen = () => {
    if (S.es !== es) return;
    const wasDown = S.everConnected && S.connState !== 'connected';
    S.everConnected = true;
    S.esRetryMs = 1000;
    setConn('connected');
    if (wasDown) requestRefetch(true);
    if (S.view === 'job' && S.log && S.log.ended && !S.log.final) startLog();
  };
  const onMessage = (m) => { if (S.es === es) receive(m); };
  es.onmessage = onMessage;
  // Should the server name its events (`event: job_started`), they still arrive.
  for (const name of KNOWN_EVENTS) es.addEventListener(name, onMessage);
  es.onerror = () => {
    if (S.es !== es) return;
    setConn('disconnected');
    // Reconnect ourselves, from the newest event seen (the URL's `after` would be stale);
    // a 401 on the stream shows up as a failed status fetch, which asks for the token.
    es.close();
    S.es = null;
    const delay = S.esRetryMs;
    S.esRetryMs = Math.min(S.esRetryMs * 2, 15000);
    S.esTimer = setTimeout(async () => {
      S.esTimer = null;
      try {
        const res = await api('/api/status');
        if (res.ok) {
          const status = await res.json();
          if (status && status.auth) S.status = {...(S.status || {}), auth: status.auth};
        }
      } catch (e) {
        if (e instanceof Canceled) { S.esRetryMs = 1000; }
      }
      connectEvents();
    }, delay);
  };
}

function setConn(state) {
  S.connState = state;
  const el = $('conn');
  setAttr(el, 'data-state', state);
  setText(el, state === 'connected' ? 'live' : state === 'connecting' ? 'connecting…' : 'disconnected — reconnecting…');
  el.title = state === 'connected' ? 'Following /api/events' : 'The event stream is down; the page retries by itself.';
}

function receive(m) {
  let ev;
  try { ev = JSON.parse(m.data); } catch { return; }
  if (!ev || typeof ev !== 'object') return;
  let seq = Number(ev.seq);
  if (!isFinite(seq)) seq = Number(m.lastEventId) || 0;
  ev.seq = seq;
  if (seq && seq <= S.lastSeq) {
    // Already seen, unless the supervisor started over with fresh numbers.
    if (ev.event !== 'supervisor_started') return;
    S.statusSeq = 0;
  }
  if (seq) S.lastSeq = seq;
  S.incoming.push(ev);
  scheduleFlush();
}

let lastRender = 0;

function scheduleFlush() {
  if (S.frame || S.flushTimer) return;
  if (document.hidden) {
    // No animation frames come in a hidden tab: apply on a timer there, so events do not pile up.
    S.flushTimer = setTimeout(flush, 1000);
    return;
  }
  // One DOM update per frame, and under a flood of events at most one per MIN_RENDER_MS.
  const wait = lastRender + MIN_RENDER_MS - performance.now();
  if (wait > 0) {
    S.flushTimer = setTimeout(() => { S.flushTimer = null; S.frame = requestAnimationFrame(flush); }, wait);
  } else {
    S.frame = requestAnimationFrame(flush);
  }
}

function flush() {
  S.frame = 0;
  lastRender = performance.now();
  if (S.flushTimer) { clearTimeout(S.flushTimer); S.flushTimer = null; }
  const batch = S.incoming;
  S.incoming = [];
  let fresh = false;
  for (const ev of batch) {
    if (ev.seq > S.statusSeq) {
      fresh = true;
      applyEvent(ev, true);
      S.applied.push(ev);
    }
    S.newEvents.push(ev);
  }
  if (S.applied.length > MAX_APPLIED) S.applied.splice(0, S.applied.length - MAX_APPLIED);
  if (S.newEvents.length > MAX_EVENTS) S.newEvents.splice(0, S.newEvents.length - MAX_EVENTS);
  if (S.dirty.has('jobs')) trimJobs();
  S.dirty.add('events');
  if (fresh) requestRefetch();
  render();
}

function getChild(role, group, slot) {
  const key = childKey(role, group, slot);
  let c = S.children.get(key);
  if (!c) {
    c = {role, group: role === 'grabber' ? null : group, slot: role === 'grabber' ? null : slot,
      pid: null, started_at: null, state: 'starting', restarts: 0, job_id: null};
    S.children.set(key, c);
  }
  return c;
}

function findChildByJob(jobId, group) {
  for (const c of S.children.values()) {
    if (c.job_id === jobId && (group === undefined || group === null || c.group === group)) return c;
  }
  return null;
}

function bumpCount(from, to) {
  if (!from || !to || from === to) return;
  if (S.counts[from] > 0) S.counts[from] -= 1;
  S.counts[to] = (S.counts[to] || 0) + 1;
}

/**
 * The job counts follow the events alone (not the capped jobs list): each job's state
 * as its events since the last status say, with what an event implies before it when
 * its earlier events are older than that status. Returns [from, to].
 */
function countTransition(ev) {
  const id = Number(ev.job_id);
  const prev = S.evState.get(id);
  let from;
  let to;
  switch (ev.event) {
    case 'job_started':
      from = prev || 'queued';
      to = 'running';
      break;
    case 'job_finished':
      from = prev || 'running';
      // A lost attempt stays counted as running until its retry or death is announced.
      to = ['succeeded', 'failed', 'timed_out', 'canceled'].includes(ev.outcome) ? ev.outcome : from;
      break;
    case 'job_retry_scheduled':
      from = prev || 'failed';
      to = 'queued';
      break;
    case 'job_dead':
      from = prev || 'failed';
      to = 'dead';
      break;
    default:
      return [null, null];
  }
  S.evState.set(id, to);
  if (S.evState.size > MAX_APPLIED) S.evState.delete(S.evState.keys().next().value);
  bumpCount(from, to);
  return [from, to];
}

function shiftRpm(g, minute) {
  const d = minute - g.rpmMinute;
  if (d <= 0) return;
  if (d >= SPARK_MINUTES) g.rpm = new Array(SPARK_MINUTES).fill(0);
  else g.rpm = g.rpm.slice(d).concat(new Array(d).fill(0));
  g.rpmMinute = minute;
}

/** What a job event does to a job object (from the list or the job page). */
function applyJobEvent(job, ev) {
  const attempt = Number(ev.attempt) || 0;
  switch (ev.event) {
    case 'job_started':
      if (FINAL_STATES.has(job.state) && (job.attempts || 0) >= attempt && job.finished_at && job.finished_at >= ev.ts) return false;
      job.state = 'running';
      job.attempts = Math.max(job.attempts || 0, attempt);
      job.started_at = ev.ts;
      job.finished_at = null;
      job.exit_code = null;
      job.signal = null;
      if (ev.group !== undefined && job.group === undefined) job.group = ev.group;
      return true;
    case 'job_finished': {
      if (attempt && (job.attempts || 0) > attempt) return false;
      const o = ev.outcome;
      job.last_outcome = o;
      if (o === 'succeeded' || o === 'failed' || o === 'timed_out' || o === 'canceled') job.state = o;
      job.finished_at = ev.ts;
      if (!job.started_at && typeof ev.duration_s === 'number') job.started_at = ev.ts - ev.duration_s;
      job.exit_code = ev.exit_code === undefined ? null : ev.exit_code;
      job.signal = ev.signal === undefined ? null : ev.signal;
      if (ev.reason) job.reason = ev.reason;
      return true;
    }
    case 'job_retry_scheduled':
      job.state = 'queued';
      if (typeof ev.delay_s === 'number') job.not_before = ev.ts + ev.delay_s;
      return true;
    case 'job_dead':
      job.state = 'dead';
      if (ev.reason) job.reason = ev.reason;
      return true;
    default:
      return false;
  }
}

/** Applies one event to children, groups, counts and jobs. `live`: it is new, not a replay. */
function applyEvent(ev, live) {
  const d = S.dirty;
  switch (ev.event) {
    case 'snapshot':
      if (Array.isArray(ev.children)) {
        const old = S.children;
        S.children = new Map();
        for (const c of ev.children) {
          const key = childKey(c.role, c.group, c.slot);
          const prev = old.get(key);
          const row = {...c};
          if (row.started_at === undefined) row.started_at = prev && prev.pid === row.pid ? prev.started_at : null;
          S.children.set(key, row);
        }
        d.add('children'); d.add('groups');
      }
      break;
    case 'child_started': {
      const c = getChild(ev.role, ev.group, ev.slot);
      c.pid = ev.pid === undefined ? c.pid : ev.pid;
      c.state = 'starting';
      c.started_at = ev.ts;
      c.job_id = null;
      d.add('children'); d.add('groups');
      break;
    }
    case 'child_ready': {
      const c = getChild(ev.role, ev.group, ev.slot);
      if (ev.pid !== undefined) c.pid = ev.pid;
      c.state = ev.role === 'grabber' ? 'ready' : 'idle';
      d.add('children'); d.add('groups');
      break;
    }
    case 'child_exited': {
      const c = getChild(ev.role, ev.group, ev.slot);
      c.state = 'exited';
      c.pid = null;
      c.job_id = null;
      c.last_exit = fmtExit({exit_code: ev.code, signal: ev.signal});
      d.add('children'); d.add('groups');
      break;
    }
    case 'child_restart_scheduled': {
      const c = getChild(ev.role, ev.group, ev.slot);
      c.state = 'backoff';
      c.restarts = (Number(c.restarts) || 0) + 1;
      c.pid = null;
      const g = ev.group !== null && ev.group !== undefined ? S.groups.get(ev.group) : null;
      if (g) {
        const minute = Math.floor(ev.ts / 60);
        shiftRpm(g, minute);
        if (minute === g.rpmMinute) g.rpm[SPARK_MINUTES - 1] += 1;
        else if (g.rpmMinute - minute < SPARK_MINUTES) g.rpm[SPARK_MINUTES - 1 - (g.rpmMinute - minute)] += 1;
      }
      d.add('children'); d.add('groups');
      break;
    }
    case 'group_gave_up': {
      const g = S.groups.get(ev.group);
      if (g) { if (ev.action === 'disable') g.disabled = true; d.add('groups'); }
      break;
    }
    case 'job_started': {
      const id = Number(ev.job_id);
      const c = ev.slot !== undefined && ev.slot !== null ? getChild('worker', ev.group, ev.slot) : null;
      if (c) { c.state = 'busy'; c.job_id = id; if (ev.worker_pid) c.pid = ev.worker_pid; }
      let job = S.jobs.get(id);
      if (!job && jobMatchesFilters({state: 'running', group: ev.group})) {
        job = {id, state: 'queued', group: ev.group, command: null, attempts: 0, created_at: null};
        S.jobs.set(id, job);
      }
      if (job) applyJobEvent(job, ev);
      const [from] = countTransition(ev);
      const g = S.groups.get(ev.group);
      if (g && from === 'queued' && g.queued > 0) g.queued -= 1;
      d.add('children'); d.add('groups'); d.add('jobs'); d.add('summary');
      break;
    }
    case 'job_finished': {
      const id = Number(ev.job_id);
      const c = findChildByJob(id, ev.group);
      if (c) { c.state = 'idle'; c.job_id = null; }
      const job = S.jobs.get(id);
      if (job) applyJobEvent(job, ev);
      countTransition(ev);
      d.add('children'); d.add('groups'); d.add('jobs'); d.add('summary');
      break;
    }
    case 'job_retry_scheduled':
    case 'job_dead': {
      const id = Number(ev.job_id);
      const job = S.jobs.get(id);
      if (job) applyJobEvent(job, ev);
      const [, to] = countTransition(ev);
      const g = S.groups.get(job ? job.group : null);
      if (g && to === 'queued') g.queued = (g.queued || 0) + 1;
      d.add('jobs'); d.add('summary');
      break;
    }
    case 'supervisor_started':
      if (S.status && S.status.supervisor) { S.status.supervisor.running = true; S.status.supervisor.stopped = false; S.status.supervisor.pid = ev.pid; }
      d.add('summary');
      break;
    case 'supervisor_stopped':
      if (S.status && S.status.supervisor) { S.status.supervisor.running = false; S.status.supervisor.stopped = true; }
      d.add('summary');
      break;
    case 'outcomes_waiting':
      if (S.status) S.status.outcomes_waiting = ev.count;
      d.add('summary');
      break;
    default:
      break;
  }
  if (S.status && S.status.supervisor && ev.ts) S.status.supervisor.last_event_at = ev.ts;

  // The job page follows its job.
  if (S.job && S.job.data && Number(ev.job_id) === S.job.id && applyJobEvent(S.job.data, ev)) {
    d.add('job');
    if (live && ev.event === 'job_started') startLog();
  }
}

function jobMatchesFilters(job) {
  if (S.filters.state && job.state !== S.filters.state) return false;
  if (S.filters.group && job.group !== S.filters.group) return false;
  return true;
}

function trimJobs() {
  if (S.jobs.size <= S.filters.limit) return;
  const ids = [...S.jobs.keys()].sort((a, b) => a - b);
  for (const id of ids.slice(0, ids.length - S.filters.limit)) S.jobs.delete(id);
}

// ---------------------------------------------------------------- rendering

function scheduleRender() {
  scheduleFlush();
}

function render() {
  const d = S.dirty;
  if (d.has('summary')) renderSummary();
  if (d.has('groups')) renderGroups();
  if (d.has('children')) renderChildren();
  if (d.has('jobs')) renderJobs();
  if (d.has('events')) renderEvents();
  if (d.has('job')) renderJob();
  d.clear();
}

function renderSummary() {
  const box = $('summary');
  const sup = (S.status && S.status.supervisor) || {};
  const meta = $('sup-meta');
  const parts = [];
  if (sup.pid) parts.push(`pid ${sup.pid}`);
  if (sup.running === false) parts.push(sup.stopped ? 'stopped' : 'not running');
  setText(meta, parts.join(' · '));

  const banner = $('sup-banner');
  let msg = '';
  if (sup.running === false) {
    msg = sup.stopped ? 'The supervisor stopped cleanly' : 'The supervisor is not running: it died';
    if (sup.panic) msg += ` (panic: ${typeof sup.panic === 'string' ? sup.panic : JSON.stringify(sup.panic)})`;
    if (sup.last_event_at) msg += `; its last event was at ${fmtDate(sup.last_event_at)}`;
    msg += '.';
  }
  const waiting = S.status ? Number(S.status.outcomes_waiting) || 0 : 0;
  if (waiting > 0) msg += `${msg ? ' ' : ''}${waiting} outcome${waiting === 1 ? '' : 's'} wait for the store (it cannot be written); claims stop meanwhile.`;
  setText(banner, msg);
  banner.hidden = !msg;

  if (!box.firstChild) {
    for (const st of JOB_STATES) {
      const b = h('button', {type: 'button', class: `count count-${st}`, 'data-testid': `count-${st}`, 'data-state': st,
        title: `Show ${st} jobs`},
      h('span', {class: 'count-n', text: '0'}), h('span', {class: 'count-label', text: st.replace('_', ' ')}));
      b.addEventListener('click', () => {
        const sel = $('filter-state');
        sel.value = S.filters.state === st ? '' : st;
        sel.dispatchEvent(new Event('change'));
      });
      box.append(b);
    }
  }
  for (const b of box.children) {
    const st = b.getAttribute('data-state');
    setText(b.firstChild, String(S.counts[st] || 0));
    b.classList.toggle('count-active', S.filters.state === st);
    b.classList.toggle('count-zero', !S.counts[st]);
  }
}

const KNOWN_CHILD_STATES = ['starting', 'idle', 'ready', 'busy', 'stopping', 'exited', 'backoff'];

function workerCounts(name) {
  const counts = {};
  let any = false;
  for (const c of S.children.values()) {
    if (c.role !== 'worker' || c.group !== name) continue;
    any = true;
    counts[c.state] = (counts[c.state] || 0) + 1;
  }
  return any ? counts : null;
}

function renderGroups() {
  const box = $('groups');
  const seen = new Set();
  let prev = null;
  for (const name of S.groupOrder) {
    const g = S.groups.get(name);
    seen.add(name);
    let card = box.querySelector(`:scope > [data-group="${CSS.escape(name)}"]`);
    if (!card) card = makeGroupCard(name);
    // Keep config order.
    const want = prev ? prev.nextSibling : box.firstChild;
    if (card !== want) box.insertBefore(card, want);
    prev = card;
    updateGroupCard(card, g);
  }
  for (const card of [...box.children]) if (!seen.has(card.getAttribute('data-group'))) card.remove();
  $('groups-empty').hidden = S.groupOrder.length > 0 || !S.status;
}

function makeGroupCard(name) {
  const card = h('div', {class: 'group', 'data-group': name, 'data-testid': `group-${name}`});
  const head = h('div', {class: 'group-head'},
    h('span', {class: 'group-name', text: name}),
    h('span', {class: 'badge badge-paused', text: 'paused', hidden: true}),
    h('span', {class: 'badge badge-disabled', text: 'disabled', hidden: true}),
    h('span', {class: 'card-head-spacer'}));
  const btn = h('button', {type: 'button', class: 'btn btn-small group-toggle', 'data-testid': `group-toggle-${name}`});
  btn.addEventListener('click', () => toggleGroup(name, btn));
  head.append(btn);
  const workers = h('div', {class: 'group-row'},
    h('div', {class: 'group-workers'},
      h('div', {class: 'pips', 'aria-hidden': 'true'}),
      h('div', {class: 'group-counts'})),
    h('div', {class: 'stat'},
      h('span', {class: 'stat-n group-queued', 'data-testid': `group-queued-${name}`}),
      h('span', {class: 'stat-label', text: 'queued'})));
  const spark = h('div', {class: 'spark'});
  const s = svg('svg', {class: 'spark-svg', viewBox: '0 0 120 28', preserveAspectRatio: 'none', role: 'img',
    'data-testid': `sparkline-${name}`});
  s.append(svg('title', {}), svg('line', {class: 'spark-base', x1: 0, y1: 27.5, x2: 120, y2: 27.5}), svg('g', {class: 'spark-bars'}));
  spark.append(s, h('span', {class: 'spark-label'}));
  card.append(head, workers, spark);
  return card;
}

function updateGroupCard(card, g) {
  const name = g.name;
  setAttr(card, 'data-paused', g.paused ? 'true' : 'false');
  setAttr(card, 'data-disabled', g.disabled ? 'true' : 'false');
  setAttr(card, 'data-queued', g.queued || 0);
  card.querySelector('.badge-paused').hidden = !g.paused;
  card.querySelector('.badge-disabled').hidden = !g.disabled;
  const btn = card.querySelector('.group-toggle');
  if (!btn.disabled) {
    setText(btn, g.paused ? 'Resume' : 'Pause');
    setAttr(btn, 'data-action', g.paused ? 'resume' : 'pause');
    btn.title = g.paused ? `Claim jobs for ${name} again` : `Stop claiming jobs for ${name} (running jobs go on)`;
  }

  const counts = workerCounts(name) || g.workers || {};
  const pips = card.querySelector('.pips');
  const list = [];
  const order = ['busy', 'idle', 'starting', 'stopping', 'backoff', 'exited'];
  for (const st of order) for (let i = 0; i < (counts[st] || 0); i++) list.push(st);
  for (const st of Object.keys(counts)) if (!order.includes(st)) for (let i = 0; i < counts[st]; i++) list.push(st);
  const sig = list.join(',');
  if (pips.getAttribute('data-sig') !== sig) {
    pips.setAttribute('data-sig', sig);
    pips.replaceChildren(...list.slice(0, 64).map((st) => h('span', {class: `pip pip-${st.replace(/[^a-z0-9_-]/gi, '_')}`, title: st})));
    if (list.length > 64) pips.append(h('span', {class: 'pip-more', text: `+${list.length - 64}`}));
  }
  const text = Object.keys(counts).length
    ? [...order, ...Object.keys(counts).filter((s) => !order.includes(s))]
      .filter((st) => counts[st]).map((st) => `${counts[st]} ${st}`).join(' · ')
    : 'no workers';
  const max = g.max_workers === undefined || g.max_workers === null ? '' : ` (max ${g.max_workers})`;
  setText(card.querySelector('.group-counts'), text + max);
  setText(card.querySelector('.group-queued'), String(g.queued || 0));
  updateSparkline(card, g);
}

function updateSparkline(card, g) {
  const rpm = g.rpm;
  const sig = rpm.join(',');
  const s = card.querySelector('.spark-svg');
  if (s.getAttribute('data-sig') === sig) return;
  s.setAttribute('data-sig', sig);
  const total = rpm.reduce((a, b) => a + b, 0);
  const max = Math.max(3, ...rpm);
  const bars = s.querySelector('.spark-bars');
  const w = 120 / SPARK_MINUTES;
  const nodes = [];
  rpm.forEach((n, i) => {
    if (!n) return;
    const hgt = Math.max(3, (n / max) * 26);
    nodes.push(svg('rect', {x: (i * w + 0.25).toFixed(2), y: (27 - hgt).toFixed(2), width: (w - 0.5).toFixed(2), height: hgt.toFixed(2), rx: 0.5}));
  });
  bars.replaceChildren(...nodes);
  const last = rpm[SPARK_MINUTES - 1];
  s.querySelector('title').textContent = `Restarts per minute over the last hour (oldest first): ${total} in all, ${last} this minute`;
  s.setAttribute('data-total', String(total));
  const label = card.querySelector('.spark-label');
  setText(label, total ? `${total} restart${total === 1 ? '' : 's'} / hour` : 'no restarts / hour');
  label.classList.toggle('spark-hot', last > 0);
  card.querySelector('.spark').classList.toggle('spark-quiet', total === 0);
}

async function toggleGroup(name, btn) {
  const g = S.groups.get(name);
  if (!g) return;
  const action = g.paused ? 'resume' : 'pause';
  btn.disabled = true;
  setText(btn, action === 'pause' ? 'Pausing…' : 'Resuming…');
  try {
    const r = await apiJson(`/api/groups/${encodeURIComponent(name)}/${action}`, {method: 'POST', write: true});
    const paused = new Set(Array.isArray(r && r.paused) ? r.paused : []);
    for (const [n, grp] of S.groups) grp.paused = paused.has(n);
    notify(`${name} ${action === 'pause' ? 'paused' : 'resumed'}.`, 'ok');
    requestRefetch(true);
  } catch (e) {
    reportError(e, `Could not ${action} ${name}`);
  } finally {
    btn.disabled = false;
    S.dirty.add('groups');
    scheduleRender();
  }
}

function sortedChildren() {
  const groupIndex = new Map(S.groupOrder.map((n, i) => [n, i]));
  return [...S.children.values()].sort((a, b) => {
    if (a.role === 'grabber' && b.role !== 'grabber') return -1;
    if (b.role === 'grabber' && a.role !== 'grabber') return 1;
    const ga = groupIndex.has(a.group) ? groupIndex.get(a.group) : 1e9;
    const gb = groupIndex.has(b.group) ? groupIndex.get(b.group) : 1e9;
    if (ga !== gb) return ga - gb;
    if (a.group !== b.group) return String(a.group).localeCompare(String(b.group));
    return (Number(a.slot) || 0) - (Number(b.slot) || 0);
  });
}

const childRows = new Map();   // key -> tr

function makeChildRow() {
  const tr = h('tr', {class: 'child-row'});
  const jobCell = h('td', {class: 'mono c-job', 'data-label': 'job'}, h('a', {class: 'job-link', hidden: true}));
  tr.append(
    h('td', {class: 'child-name'}),
    h('td', {class: 'c-state'}, h('span', {class: 'state'})),
    h('td', {class: 'mono c-pid', 'data-label': 'pid'}),
    h('td', {class: 'num c-restarts', 'data-label': 'restarts'}),
    jobCell,
    h('td', {class: 'num c-uptime', 'data-label': 'up'}));
  return tr;
}

function childUptime(c) {
  if (!c.started_at || !c.pid || c.state === 'exited' || c.state === 'backoff') return '';
  return fmtDuration(serverNow() - c.started_at).replace(/\.\ds$/, 's');
}

function renderChildren() {
  const body = $('children-body');
  const list = sortedChildren();
  const seen = new Set();
  let prev = null;
  for (const c of list) {
    const key = childKey(c.role, c.group, c.slot);
    seen.add(key);
    let tr = childRows.get(key);
    if (!tr) { tr = makeChildRow(); childRows.set(key, tr); }
    const want = prev ? prev.nextSibling : body.firstChild;
    if (tr !== want) body.insertBefore(tr, want);
    prev = tr;
    setAttr(tr, 'data-testid', childTestId(c));
    setAttr(tr, 'data-state', c.state);
    setAttr(tr, 'data-restarts', Number(c.restarts) || 0);
    setAttr(tr, 'data-pid', c.pid === null || c.pid === undefined ? '' : c.pid);
    const [name, state, pid, restarts, job, uptime] = tr.children;
    setText(name, c.role === 'grabber' ? 'grabber' : `${c.group} / ${c.slot}`);
    name.classList.toggle('child-grabber', c.role === 'grabber');
    const st = state.firstChild;
    setText(st, c.state);
    st.className = `${stateClass(c.state)}${KNOWN_CHILD_STATES.includes(c.state) ? '' : ' state-other'}`;
    st.title = c.last_exit && (c.state === 'exited' || c.state === 'backoff') ? `last exit: ${c.last_exit}` : '';
    setText(pid, c.pid === null || c.pid === undefined ? '—' : String(c.pid));
    setText(restarts, String(Number(c.restarts) || 0));
    restarts.classList.toggle('restarts-hot', (Number(c.restarts) || 0) > 0);
    const a = job.firstChild;
    if (c.job_id !== null && c.job_id !== undefined) {
      a.hidden = false;
      setAttr(a, 'href', `#/jobs/${c.job_id}`);
      setText(a, `#${c.job_id}`);
    } else {
      a.hidden = true;
    }
    setText(uptime, childUptime(c));
  }
  for (const [key, tr] of childRows) if (!seen.has(key)) { tr.remove(); childRows.delete(key); }
  $('children-empty').hidden = list.length > 0 || !S.status;
  const workers = list.filter((c) => c.role === 'worker');
  const busy = workers.filter((c) => c.state === 'busy').length;
  setText($('children-note'), workers.length ? `${busy} of ${workers.length} workers busy` : '');
}

const jobRows = new Map();   // id -> tr

function makeJobRow(id) {
  const tr = h('tr', {class: 'job-row', 'data-testid': `job-row-${id}`, 'data-job-id': id});
  tr.append(
    h('td', {class: 'num mono j-id'}, h('a', {href: `#/jobs/${id}`, class: 'job-link', 'data-testid': `job-link-${id}`, text: `#${id}`})),
    h('td', {class: 'j-state'}, h('span', {class: 'state'})),
    h('td', {class: 'j-group'}),
    h('td', {class: 'mono cmd'}),
    h('td', {class: 'num j-attempts', 'data-label': 'attempts'}),
    h('td', {class: 'num duration', 'data-label': 'took'}),
    h('td', {class: 'mono j-exit', 'data-label': 'exit'}),
    h('td', {class: 'num when'}));
  tr.addEventListener('click', (e) => {
    if (e.target.closest('a')) return;
    if (window.getSelection && String(window.getSelection()).length) return;
    location.hash = `#/jobs/${id}`;
  });
  return tr;
}

function jobWhen(job) {
  return job.finished_at || job.started_at || job.created_at || null;
}

function renderJobs() {
  const body = $('jobs-body');
  const ids = [...S.jobs.keys()].sort((a, b) => b - a).slice(0, S.filters.limit);
  const seen = new Set();
  let prev = null;
  for (const id of ids) {
    const job = S.jobs.get(id);
    seen.add(id);
    let tr = jobRows.get(id);
    if (!tr) { tr = makeJobRow(id); jobRows.set(id, tr); }
    const want = prev ? prev.nextSibling : body.firstChild;
    if (tr !== want) body.insertBefore(tr, want);
    prev = tr;
    updateJobRow(tr, job);
  }
  for (const [id, tr] of jobRows) if (!seen.has(id)) { tr.remove(); jobRows.delete(id); }
  $('jobs-empty').hidden = ids.length > 0 || !S.status;
}

function updateJobRow(tr, job) {
  setAttr(tr, 'data-state', job.state);
  const [, state, group, cmd, attempts, duration, exit, when] = tr.children;
  const st = state.firstChild;
  setText(st, job.state);
  st.className = stateClass(job.state);
  setText(group, job.group === null || job.group === undefined ? '—' : job.group);
  const c = fmtCommand(job.command);
  setText(cmd, c);
  cmd.title = c;
  const max = job.max_attempts ? `/${job.max_attempts}` : '';
  setText(attempts, `${job.attempts || 0}${max}`);
  setText(duration, fmtDuration(jobDuration(job)));
  setText(exit, fmtExit(job));
  exit.classList.toggle('exit-bad', fmtExit(job) !== '' && fmtExit(job) !== '0');
  const w = jobWhen(job);
  setText(when, fmtAgo(w));
  when.title = w ? fmtDate(w) : '';
}

function eventSummary(ev) {
  const skip = new Set(['seq', 'ts', 'event']);
  const parts = [];
  for (const [k, v] of Object.entries(ev)) {
    if (skip.has(k) || v === null || v === undefined) continue;
    if (k === 'children' && Array.isArray(v)) { parts.push(`${v.length} children`); continue; }
    let s = typeof v === 'object' ? JSON.stringify(v) : String(v);
    if (s.length > 120) s = `${s.slice(0, 117)}…`;
    parts.push(`${k}=${s}`);
  }
  return parts.join('  ');
}

function eventKind(name) {
  if (!name) return 'other';
  if (name === 'job_finished') return 'job';
  if (name.startsWith('job_')) return name === 'job_dead' ? 'bad' : 'job';
  if (name === 'child_exited' || name === 'child_restart_scheduled' || name === 'group_gave_up'
    || name === 'config_rejected' || name === 'supervisor_panicked') return 'bad';
  if (name.startsWith('child_')) return 'child';
  if (name.startsWith('supervisor_') || name.startsWith('config_') || name === 'snapshot') return 'sup';
  return 'other';
}

function makeEventItem(ev) {
  let kind = eventKind(ev.event);
  if (ev.event === 'job_finished' && ev.outcome && ev.outcome !== 'succeeded') kind = 'bad';
  if (ev.event === 'child_exited' && ev.expected === true) kind = 'child';
  const li = h('li', {class: `event event-${kind}`, 'data-testid': 'event-item', 'data-event': ev.event || '', 'data-seq': ev.seq},
    h('span', {class: 'event-time', title: ev.ts ? `${fmtDate(ev.ts)} · seq ${ev.seq}` : `seq ${ev.seq}`, text: fmtClock(ev.ts)}),
    h('span', {class: 'event-name', text: ev.event || '?'}));
  const sum = h('span', {class: 'event-data'});
  if (ev.job_id !== undefined && ev.job_id !== null) {
    sum.append(h('a', {href: `#/jobs/${ev.job_id}`, class: 'job-link', text: `#${ev.job_id}`}), ' ');
  }
  if (ev.event === 'job_finished' && ev.outcome) sum.append(h('span', {class: stateClass(ev.outcome === 'lost' ? 'failed' : ev.outcome), text: ev.outcome}), ' ');
  const copy = {...ev};
  delete copy.job_id;
  if (ev.event === 'job_finished') delete copy.outcome;
  sum.append(eventSummary(copy));
  li.append(sum);
  return li;
}

function renderEvents() {
  const list = $('events');
  const fresh = S.newEvents;
  S.newEvents = [];
  if (fresh.length) {
    const frag = document.createDocumentFragment();
    for (let i = fresh.length - 1; i >= 0; i--) frag.append(makeEventItem(fresh[i]));
    if (fresh.length >= MAX_EVENTS) {
      list.replaceChildren(frag);
    } else {
      list.prepend(frag);
      const extra = list.children.length - MAX_EVENTS;
      if (extra > 0) {
        const r = document.createRange();
        r.setStartBefore(list.children[MAX_EVENTS]);
        r.setEndAfter(list.lastElementChild);
        r.deleteContents();
      }
    }
  }
  $('events-empty').hidden = list.children.length > 0;
  setText($('events-note'), S.lastSeq ? `seq ${S.lastSeq}` : '');
}

// ---------------------------------------------------------------- job page

/** One label/value pair of the job page; `optional` ones are left out when empty. */
function field(label, value, opts = {}) {
  const empty = value === undefined || value === null || value === '';
  if (empty && (opts.optional || value === undefined)) return [];
  const dd = h('dd', {class: opts.mono ? 'mono' : null});
  if (value instanceof Node) dd.append(value);
  else dd.textContent = empty ? '—' : String(value);
  if (empty) dd.classList.add('muted');
  return [h('div', {class: `pair${opts.wide ? ' pair-wide' : ''}`, 'data-field': opts.key || null}, h('dt', {text: label}), dd)];
}

function renderJob() {
  if (S.view !== 'job' || !S.job) return;
  const {id, data, error} = S.job;
  setText($('job-title'), `Job #${id}`);
  document.title = `#${id} · supervisor`;
  const stEl = $('job-state');
  const msg = $('job-message');
  if (error && !data) {
    setText(stEl, '');
    stEl.hidden = true;
    setText(msg, error);
    msg.hidden = false;
    msg.className = 'job-message job-message-error';
    $('job-fields').replaceChildren();
    $('job-explain').replaceChildren();
    $('job-cancel').hidden = true;
    $('job-retry').hidden = true;
    return;
  }
  if (!data) {
    stEl.hidden = true;
    setText(msg, 'Loading…');
    msg.hidden = false;
    msg.className = 'job-message';
    return;
  }
  if (msg.textContent === 'Loading…') msg.hidden = true;
  stEl.hidden = false;
  setText(stEl, data.state);
  stEl.className = stateClass(data.state);
  setAttr(stEl, 'data-state', data.state);

  const cancel = $('job-cancel');
  const retry = $('job-retry');
  cancel.hidden = false;
  retry.hidden = false;
  if (!cancel.dataset.busy) cancel.disabled = FINAL_STATES.has(data.state);
  if (!retry.dataset.busy) retry.disabled = !RETRYABLE_STATES.has(data.state);
  cancel.title = cancel.disabled ? 'The job is already final' : 'Cancel this job (a running job is stopped)';
  retry.title = retry.disabled ? 'Only a failed, timed out, dead or canceled job can be retried' : 'Queue it again with a fresh attempt budget';

  const afterList = Array.isArray(data.after) && data.after.length
    ? h('span', {}, ...data.after.flatMap((a, i) => [i ? ', ' : '', h('a', {href: `#/jobs/${a}`, class: 'job-link', text: `#${a}`})]))
    : null;
  const tags = data.tags && typeof data.tags === 'object' && Object.keys(data.tags).length
    ? Object.entries(data.tags).map(([k, v]) => `${k}=${v}`).join('  ') : null;
  const cmd = h('code', {class: 'cmd-full', text: fmtCommand(data.command)});
  const opt = {optional: true};
  const nodes = [
    ...field('Command', cmd, {key: 'command', wide: true}),
    ...field('Group', data.group, {key: 'group'}),
    ...field('Attempts', `${data.attempts || 0}${data.max_attempts ? ` of ${data.max_attempts}` : ''}`, {key: 'attempts'}),
    ...field('Exit', fmtExit(data) || null, {mono: true, key: 'exit', optional: true}),
    ...field('Last outcome', data.last_outcome, {key: 'last_outcome', optional: true}),
    ...field('Duration', fmtDuration(jobDuration(data)) || null, {key: 'duration'}),
    ...field('Created', data.created_at ? fmtDate(data.created_at) : null),
    ...field('Started', data.started_at ? fmtDate(data.started_at) : null),
    ...field('Finished', data.finished_at ? fmtDate(data.finished_at) : null),
    ...field('Not before', data.not_before ? fmtDate(data.not_before) : null, opt),
    ...field('Priority', data.priority ? data.priority : null, opt),
    ...field('After', afterList, opt),
    ...field('Key', data.key, {mono: true, optional: true}),
    ...field('Tags', tags, {mono: true, optional: true}),
    ...field('Working dir', data.cwd, {mono: true, optional: true}),
    ...field('Timeout', data.timeout_s ? `${data.timeout_s}s` : null, opt),
    ...field('Log file', data.log, {mono: true, optional: true, wide: true}),
    ...field('Start error', data.start_error, {key: 'start_error', optional: true, wide: true}),
    ...field('Reason', data.reason, {key: 'reason', optional: true, wide: true}),
  ];
  const dl = $('job-fields');
  const sig = JSON.stringify(data);
  if (dl.getAttribute('data-sig') !== sig) {
    dl.setAttribute('data-sig', sig);
    dl.replaceChildren(...nodes);
  }
  const ex = $('job-explain');
  const lines = Array.isArray(data.explain) ? data.explain : [];
  const exSig = lines.join('\n');
  if (ex.getAttribute('data-sig') !== exSig || !ex.firstChild) {
    ex.setAttribute('data-sig', exSig);
    ex.replaceChildren(...(lines.length ? lines.map((l) => h('li', {text: l})) : [h('li', {class: 'muted', text: 'Nothing to explain.'})]));
  }
  if (S.log) {
    S.log.final = FINAL_STATES.has(data.state);
    renderLogStatus();
  }
}

async function showJob(id) {
  stopLog();
  S.view = 'job';
  S.job = {id, data: null, error: null};
  $('view-overview').hidden = true;
  $('view-job').hidden = false;
  $('job-message').hidden = true;
  $('job-fields').replaceChildren();
  $('job-fields').removeAttribute('data-sig');
  $('job-explain').replaceChildren();
  $('job-state').removeAttribute('data-state');
  $('job-cancel').hidden = true;
  $('job-retry').hidden = true;
  $('job-log').textContent = '';
  $('log-trimmed').hidden = true;
  window.scrollTo(0, 0);
  S.dirty.add('job');
  render();
  try {
    const data = await apiJson(`/api/jobs/${id}`);
    if (!S.job || S.job.id !== id) return;
    S.job.data = data;
  } catch (e) {
    if (!S.job || S.job.id !== id) return;
    if (e instanceof Canceled) S.job.error = 'Needs the token to read.';
    else S.job.error = e.status === 404 ? `There is no job ${id}.` : e.message;
  }
  S.dirty.add('job');
  render();
  if (S.job && S.job.id === id && S.job.data) startLog();
}

function showOverview() {
  S.view = 'overview';
  S.job = null;
  stopLog();
  document.title = 'supervisor';
  $('view-job').hidden = true;
  $('view-overview').hidden = false;
  for (const k of ['summary', 'groups', 'children', 'jobs', 'events']) S.dirty.add(k);
  render();
}

function route() {
  const m = /^#\/jobs\/(\d+)\/?$/.exec(location.hash);
  if (m) showJob(Number(m[1]));
  else showOverview();
}

async function jobAction(kind) {
  if (!S.job) return;
  const id = S.job.id;
  const btn = kind === 'cancel' ? $('job-cancel') : $('job-retry');
  btn.dataset.busy = '1';
  btn.disabled = true;
  const msg = $('job-message');
  try {
    const r = await apiJson(`/api/jobs/${id}/${kind}`, {method: 'POST', write: true});
    let text;
    if (kind === 'cancel') {
      const result = r && r.result;
      text = result === 'canceled' ? 'Canceled.' : result === 'stopping' ? 'Stopping the running job…'
        : result === 'already_finished' ? `Already finished (${r.state}).` : `Cancel: ${JSON.stringify(r)}`;
      if (S.job && S.job.id === id && S.job.data && r && r.state) {
        S.job.data.state = r.state;
        const row = S.jobs.get(id);
        if (row) { row.state = r.state; S.dirty.add('jobs'); }
      }
    } else {
      const ids = r && Array.isArray(r.ids) ? r.ids : [id];
      text = `Queued again${ids.length && ids[0] !== id ? ` as #${ids.join(', #')}` : ''}.`;
      if (S.job && S.job.id === id && S.job.data) S.job.data.state = 'queued';
    }
    msg.className = 'job-message job-message-ok';
    setText(msg, text);
    msg.hidden = false;
    requestRefetch(true);
  } catch (e) {
    if (!(e instanceof Canceled)) {
      msg.className = 'job-message job-message-error';
      setText(msg, `Could not ${kind}: ${e.message}`);
      msg.hidden = false;
      reportError(e, `Could not ${kind} job ${id}`);
    }
  } finally {
    delete btn.dataset.busy;
    S.dirty.add('job');
    render();
  }
}

// ---------------------------------------------------------------- live log

function stopLog() {
  if (S.log && S.log.ctrl) S.log.ctrl.abort();
  S.log = null;
}

async function startLog() {
  if (!S.job) return;
  const id = S.job.id;
  if (S.log && S.log.jobId === id && !S.log.ended) {
    // Already following; a new attempt restarts the stream only once this one ends.
    S.log.restart = true;
    return;
  }
  stopLog();
  const ctrl = new AbortController();
  const log = {jobId: id, ctrl, text: '', trimmed: false, ended: false, final: false, error: null, restart: false};
  S.log = log;
  $('job-log').textContent = '';
  $('log-trimmed').hidden = true;
  renderLogStatus();
  try {
    const res = await api(`/api/jobs/${id}/log?follow=1`, {signal: ctrl.signal});
    if (!res.ok) throw new ApiError(await errorMessage(res), res.status, null);
    if (!res.body || !res.body.getReader) {
      appendLog(log, await res.text());
    } else {
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        appendLog(log, dec.decode(value, {stream: true}));
      }
      appendLog(log, dec.decode());
    }
  } catch (e) {
    if (e && e.name === 'AbortError') return;
    if (e instanceof Canceled) log.error = 'needs the token';
    else log.error = e && e.message ? e.message : String(e);
  }
  if (S.log !== log) return;
  log.ended = true;
  renderLogStatus();
  // A job that is not final yet (queued for a retry, or the stream broke): follow again
  // when it starts its next attempt or when the event stream reconnects.
  if (log.restart && !log.error) { log.restart = false; S.log = null; startLog(); }
}

function appendLog(log, chunk) {
  if (!chunk || S.log !== log) return;
  log.text += chunk;
  if (log.text.length > LOG_KEEP * 1.25) {
    let cut = log.text.length - LOG_KEEP;
    const nl = log.text.indexOf('\n', cut);
    if (nl !== -1 && nl - cut < 4096) cut = nl + 1;
    log.text = log.text.slice(cut);
    log.trimmed = true;
  }
  log.dirty = true;
  if (!log.frame) {
    log.frame = document.hidden ? setTimeout(() => renderLog(log), 500) : requestAnimationFrame(() => renderLog(log));
  }
}

let logScrollTop = 0;   // where the page last left the log's scroll position

function renderLog(log) {
  log.frame = 0;
  if (S.log !== log || !log.dirty) return;
  log.dirty = false;
  const pre = $('job-log');
  const follow = $('log-autoscroll').checked;
  pre.textContent = log.text;
  $('log-trimmed').hidden = !log.trimmed;
  if (follow) pre.scrollTop = pre.scrollHeight;
  logScrollTop = pre.scrollTop;
  renderLogStatus();
}

function renderLogStatus() {
  const log = S.log;
  const el = $('log-status');
  if (!log) { setText(el, ''); return; }
  if (S.job && S.job.id === log.jobId && S.job.data) log.final = FINAL_STATES.has(S.job.data.state);
  let s;
  if (log.error) s = `stream stopped: ${log.error}`;
  else if (!log.ended) s = 'following…';
  else if (log.final) s = 'end of log';
  else s = 'waiting for the next attempt';
  if (!log.text && log.ended && !log.error) s = log.final ? 'empty log' : 'no output yet';
  setText(el, s);
  setAttr(el, 'data-state', log.error ? 'error' : log.ended ? 'ended' : 'following');
}

// ---------------------------------------------------------------- filters and controls

function updateGroupFilter() {
  const sel = $('filter-group');
  const names = S.groupOrder;
  const have = [...sel.options].slice(1).map((o) => o.value);
  const want = [...names];
  if (S.filters.group && !want.includes(S.filters.group)) want.push(S.filters.group);
  if (have.join('\n') === want.join('\n')) return;
  const cur = sel.value;
  sel.replaceChildren(h('option', {value: '', text: 'all'}), ...want.map((n) => h('option', {value: n, text: n})));
  sel.value = cur;
}

function setupControls() {
  const onFilter = () => {
    S.filters.state = $('filter-state').value;
    S.filters.group = $('filter-group').value;
    S.filters.limit = Number($('filter-limit').value) || 100;
    S.dirty.add('summary');
    scheduleRender();
    requestRefetch(true);
  };
  for (const id of ['filter-state', 'filter-group', 'filter-limit']) $(id).addEventListener('change', onFilter);
  $('refresh').addEventListener('click', () => requestRefetch(true));
  $('job-cancel').addEventListener('click', () => jobAction('cancel'));
  $('job-retry').addEventListener('click', () => jobAction('retry'));
  $('log-autoscroll').addEventListener('change', () => {
    if ($('log-autoscroll').checked) { const pre = $('job-log'); pre.scrollTop = pre.scrollHeight; }
  });
  // Scrolling the log up stops following; scrolling back to the bottom follows again.
  // (A resize or new output does not move scrollTop up, so only the reader does.)
  $('job-log').addEventListener('scroll', () => {
    const pre = $('job-log');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
    if (atBottom) $('log-autoscroll').checked = true;
    else if (pre.scrollTop < logScrollTop - 4) $('log-autoscroll').checked = false;
    logScrollTop = pre.scrollTop;
  }, {passive: true});
  $('reload').addEventListener('click', async () => {
    const btn = $('reload');
    btn.disabled = true;
    try {
      const r = await apiJson('/api/reload', {method: 'POST', write: true});
      const changes = r && Array.isArray(r.changes) ? r.changes : [];
      notify(`Config accepted (generation ${r && r.generation}): ${changes.length ? changes.join('; ') : 'no changes'}.`, 'ok');
      requestRefetch(true);
    } catch (e) {
      reportError(e, 'Config rejected');
    } finally {
      btn.disabled = false;
    }
  });
  window.addEventListener('hashchange', route);
  // A hidden tab gets no animation frames: switch between frames and a slow timer.
  document.addEventListener('visibilitychange', () => {
    if (S.frame) { cancelAnimationFrame(S.frame); S.frame = 0; }
    if (S.flushTimer) { clearTimeout(S.flushTimer); S.flushTimer = null; }
    if (S.incoming.length || S.dirty.size) scheduleFlush();
  });
}

/** Once a second: uptimes, running durations, "ago" columns, sparkline minutes (no requests). */
function tick() {
  if (document.hidden) return;
  const minute = Math.floor(serverNow() / 60);
  for (const g of S.groups.values()) {
    if (g.rpmMinute < minute) { shiftRpm(g, minute); S.dirty.add('groups'); }
  }
  if (S.view === 'overview') {
    for (const [key, tr] of childRows) {
      const c = S.children.get(key);
      if (c) setText(tr.lastElementChild, childUptime(c));
    }
    for (const [id, tr] of jobRows) {
      const job = S.jobs.get(id);
      if (!job) continue;
      if (job.state === 'running') setText(tr.children[5], fmtDuration(jobDuration(job)));
      setText(tr.children[7], fmtAgo(jobWhen(job)));
    }
  } else if (S.job && S.job.data && S.job.data.state === 'running') {
    const dd = document.querySelector('#job-fields [data-field=duration] dd');
    if (dd) setText(dd, fmtDuration(jobDuration(S.job.data)));
  }
  if (S.dirty.size) scheduleRender();
}

// ---------------------------------------------------------------- start

async function boot() {
  setupTokenDialog();
  setupControls();
  setConn('connecting');
  const m = /^#\/jobs\/(\d+)\/?$/.exec(location.hash);
  if (m) { S.view = 'job'; S.job = {id: Number(m[1]), data: null, error: null}; }
  S.fetch.inflight = true;
  S.fetch.last = Date.now();
  for (;;) {
    try {
      const status = await apiJson('/api/status');
      const jobs = await apiJson(jobsQuery());
      applyFetched(status, jobs, null, null);
      break;
    } catch (e) {
      if (e instanceof Canceled) {
        notify('The supervisor wants its token to show anything; use the Token button.', 'error');
        await new Promise((r) => { $('token-dialog').addEventListener('close', r, {once: true}); });
      } else {
        reportError(e, 'Loading failed');
        setConn('disconnected');
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  }
  S.fetch.inflight = false;
  S.fetch.last = Date.now();
  route();
  connectEvents();
  setInterval(tick, 1000);
}

boot();
