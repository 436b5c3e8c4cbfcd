// ddpm-tool serve: the Sample view (draw a grid, watch its predicted x0 step by step) and the Run view (a run
// folder's loss, learning rate, FID and sample grids, read again every two seconds). Plain JavaScript, no library.
'use strict';

const $ = id => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const RUN_REFRESH_MS = 2000;
const INFO_REFRESH_MS = 5000;

const state = {
  info: null,        // /api/info
  filled: false,     // the form has its starting values
  job: null,         // the drawing shown
  events: null,      // its EventSource
  drawing: Promise.resolve(), // frames are drawn in order
  runTimer: null,
  runEtag: null,
  run: null,         // the last /api/run
  runReceived: 0,    // when it came (the page's clock)
  gridChosen: null,  // a grid the user picked
};

// ---- the server's answers: JSON, or {"error": "..."} with a 4xx/5xx ----
async function api(path, options) {
  const response = await fetch(path, options);
  if (response.status === 304) return { status: 304 };
  const type = response.headers.get('content-type') || '';
  const body = type.includes('application/json') ? await response.json() : null;
  if (!response.ok) throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  return { status: response.status, body, etag: response.headers.get('etag') };
}

function setText(id, text, bad) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle('error', !!bad);
}

// ---- views ----
function showView() {
  const view = location.hash.startsWith('#run') ? 'run' : 'sample';
  $('view-sample').hidden = view !== 'sample';
  $('view-run').hidden = view !== 'run';
  $('tab-sample').classList.toggle('active', view === 'sample');
  $('tab-run').classList.toggle('active', view === 'run');
  if (view === 'run') startRun(); else stopRun();
}

// ---- Sample ----
async function loadInfo() {
  try {
    const { body } = await api('/api/info');
    state.info = body;
    fillForm(body);
  } catch (e) {
    setText('sample-status', e.message, true);
  }
  // A run folder without a checkpoint yet: look again until train writes one; then for its newer checkpoints.
  setTimeout(loadInfo, state.info && state.info.model ? INFO_REFRESH_MS : 3000);
}

function option(value, text) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  return o;
}

// Gives a select these options (value, text) unless it has them already (an open list stays open), keeping the
// chosen value when it is still offered.
function offer(select, options) {
  const key = JSON.stringify(options);
  if (select.dataset.offered === key) return;
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, text]) => option(value, text)));
  select.dataset.offered = key;
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

function fillForm(info) {
  const model = info.model, d = info.defaults, limits = info.limits;
  $('source').textContent = model ? model.source : '';
  $('draw').disabled = !model || (state.job && !finished(state.job.state));
  if (!model) {
    setText('sample-status', info.problem || 'no model', true);
    return;
  }
  offer($('f-class'), [['', model.conditional ? 'unconditional' : 'unconditional model'],
    ...(model.conditional ? [...model.classes.map((name, i) => [String(i), `${i} ${name}`]), ['all', 'all (one row per class)']] : [])]);
  $('f-class').disabled = !model.conditional;
  // A run folder's checkpoints (newest first): the latest by default, any other by its file name.
  offer($('f-checkpoint'), [['', `latest (${model.file})`], ...info.checkpoints.map(name => [name, name])]);
  $('checkpoint-label').hidden = info.checkpoints.length === 0;
  const maxSteps = Math.min(model.t, limits.max_steps);
  $('f-steps').max = maxSteps;
  $('f-n').max = limits.max_images;
  let asked = null;
  if (!state.filled) {
    $('f-sampler').value = d.sampler;
    $('f-steps').value = Math.min(d.steps, maxSteps);
    $('f-seed').value = d.seed;
    $('f-n').value = d.n;
    $('f-guidance').value = d.guidance;
    state.filled = true;
    asked = fromAddress(model);
    setText('sample-status', `${model.classes.length ? model.classes.length + ' classes, ' : ''}T = ${model.t}, ${model.image_size}x${model.image_size}; at most ${limits.max_images} images and ${limits.max_steps} steps a drawing.`);
  }
  formChanged();
  if (asked && asked.draw) $('sample-form').requestSubmit();
}

// The drawing the address asks for: #sample?class=Sneaker&guidance=3&sampler=dpm%2B%2B&steps=20&seed=1&n=8
// (&draw=1 draws it at once); the page writes the address of each drawing, so a link draws it again.
function fromAddress(model) {
  const query = location.hash.split('?')[1];
  if (!location.hash.startsWith('#sample') || !query) return null;
  const p = new URLSearchParams(query);
  if (p.has('checkpoint')) {
    // A checkpoint the folder no longer lists is asked for all the same: the server says what it has.
    const ckpt = $('f-checkpoint'), name = p.get('checkpoint');
    if (![...ckpt.options].some(o => o.value === name)) ckpt.append(option(name, name));
    ckpt.value = name;
  }
  const cls = p.get('class');
  if (cls != null) {
    const byName = model.classes.findIndex(c => c.toLowerCase() === cls.toLowerCase());
    $('f-class').value = cls.toLowerCase() === 'all' ? 'all' : byName >= 0 ? String(byName) : cls;
  }
  for (const [key, id] of [['guidance', 'f-guidance'], ['sampler', 'f-sampler'], ['steps', 'f-steps'], ['seed', 'f-seed'], ['n', 'f-n']])
    if (p.has(key)) $(id).value = p.get(key);
  return { draw: p.get('draw') === '1' };
}

function toAddress(request) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(request)) if (v !== undefined) p.set(k, k === 'class' && /^\d+$/.test(v) ? state.info.model.classes[Number(v)] : v);
  history.replaceState(null, '', `#sample?${p}`);
}

function formChanged() {
  const conditional = $('f-class').value !== '';
  $('f-guidance').disabled = !conditional;
  $('f-steps').disabled = $('f-sampler').value === 'ddpm';
  $('n-label').firstChild.textContent = $('f-class').value === 'all' ? 'Images per class ' : 'Images ';
}

// A field as typed: a number when it is one, else the text (the server names the field and what is wrong).
function field(id) {
  const text = $(id).value.trim();
  if (text === '') return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;
}

async function draw(event) {
  event.preventDefault();
  const request = { n: field('f-n'), sampler: $('f-sampler').value, seed: field('f-seed') };
  if ($('f-sampler').value !== 'ddpm') request.steps = field('f-steps');
  if ($('f-class').value !== '') {
    request.class = $('f-class').value;
    request.guidance = field('f-guidance');
  }
  if ($('f-checkpoint').value !== '') request.checkpoint = $('f-checkpoint').value;
  $('draw').disabled = true;
  toAddress(request);
  try {
    const { body } = await api('/api/sample', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(request),
    });
    follow(body);
  } catch (e) {
    setText('sample-status', e.message, true);
    $('draw').disabled = !(state.info && state.info.model);
  }
}

function finished(s) {
  return s === 'done' || s === 'failed' || s === 'cancelled';
}

function follow(job) {
  if (state.events) state.events.close();
  state.job = job;
  const canvas = $('sample-canvas');
  canvas.dataset.job = job.id;
  canvas.dataset.state = job.state;
  canvas.dataset.frames = '0';
  $('sample-download').hidden = true;
  $('sample-model').textContent = '';
  $('stop').disabled = false;
  showJob(job);
  const events = new EventSource(`/api/jobs/${encodeURIComponent(job.id)}/events`);
  state.events = events;
  events.onmessage = message => {
    const s = JSON.parse(message.data);
    state.job = s;
    if (s.png) {
      const final = s.state === 'done';
      state.drawing = state.drawing.then(() => paint(s.png, final ? null : canvas)).then(() => {
        if (final) ended(s);
      });
    } else if (finished(s.state)) {
      state.drawing = state.drawing.then(() => ended(s));
    }
    showJob(s);
    if (finished(s.state)) events.close();
  };
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED && state.job && !finished(state.job.state)) {
      api(`/api/jobs/${encodeURIComponent(job.id)}`).then(r => { state.job = r.body; showJob(r.body); ended(r.body); },
        e => setText('sample-status', e.message, true));
    }
  };
}

// Draws a PNG (base64) on the canvas at its own pixels; a frame (not the final grid) counts in data-frames.
async function paint(base64, frameOf) {
  const img = new Image();
  img.src = `data:image/png;base64,${base64}`;
  await img.decode();
  const canvas = $('sample-canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  // Shown enlarged by a whole factor (crisp pixels), as large as fits 640 px wide and most of the window's height.
  const fit = Math.min(640 / img.naturalWidth, window.innerHeight * 0.75 / img.naturalHeight);
  canvas.style.width = `${img.naturalWidth * Math.max(1, Math.floor(fit))}px`;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0);
  if (frameOf) frameOf.dataset.frames = String(Number(frameOf.dataset.frames) + 1);
}

function ended(s) {
  const canvas = $('sample-canvas');
  canvas.dataset.state = s.state;
  $('stop').disabled = true;
  $('draw').disabled = !(state.info && state.info.model);
  if (s.model) $('sample-model').textContent = `drawn from ${s.model}`;
  if (s.state === 'done') {
    const link = $('sample-download');
    link.href = `/api/jobs/${encodeURIComponent(s.id)}/image.png`;
    link.hidden = false;
  }
  showJob(s);
}

function showJob(s) {
  const progress = $('sample-progress');
  progress.max = Math.max(1, s.of);
  progress.value = s.state === 'done' ? progress.max : s.step;
  let text;
  if (s.state === 'queued') text = `waiting: ${s.ahead} drawing${s.ahead === 1 ? '' : 's'} before this one`;
  else if (s.state === 'running') text = s.step ? `step ${s.step} of ${s.of} (predicted x0 shown)` : `starting (${s.of} steps)`;
  else if (s.state === 'done') text = `${s.what}: done in ${s.seconds.toFixed(1)} s`;
  else text = `${s.state}: ${s.error || ''}`;
  setText('sample-status', text, s.state === 'failed');
}

async function stop() {
  if (!state.job) return;
  try {
    const { body } = await api(`/api/jobs/${encodeURIComponent(state.job.id)}`, { method: 'DELETE' });
    showJob(body);
  } catch (e) {
    setText('sample-status', e.message, true);
  }
}

// ---- Run ----
function startRun() {
  if (state.runTimer) return;
  refreshRun();
  state.runTimer = setInterval(refreshRun, RUN_REFRESH_MS);
}

function stopRun() {
  clearInterval(state.runTimer);
  state.runTimer = null;
}

async function refreshRun() {
  try {
    const headers = state.runEtag ? { 'If-None-Match': state.runEtag } : {};
    const r = await api('/api/run', { headers });
    if (r.status !== 304) {
      state.run = r.body;
      state.runEtag = r.etag;
      state.runReceived = Date.now();
      renderRun(r.body);
    }
    renderAge();
    setText('run-error', '');
  } catch (e) {
    setText('run-error', e.message, true);
  }
}

function renderAge() {
  const d = state.run;
  if (!d || d.updated_ms == null) return;
  const seconds = Math.max(0, (d.now_ms - d.updated_ms + Date.now() - state.runReceived) / 1000);
  $('run-updated').textContent = seconds < 90 ? `${seconds.toFixed(0)} s ago` : seconds < 5400 ? `${(seconds / 60).toFixed(0)} min ago` : `${(seconds / 3600).toFixed(1)} h ago`;
}

function renderRun(d) {
  const view = $('view-run');
  $('run-folder').textContent = d.folder;
  const loss = d.loss, last = loss.last;
  $('run-step').textContent = last ? last[0] : '-';
  $('run-loss').textContent = last ? last[1] : '-';
  $('run-grad').textContent = last ? last[2] : '-';
  $('run-lr').textContent = last ? last[3] : '-';
  $('run-checkpoint').textContent = d.checkpoints.length ? `step ${d.checkpoints[d.checkpoints.length - 1]} (${d.checkpoints.length} kept)` : 'none yet';
  $('loss-every').textContent = loss.every > 1 ? `(means of ${loss.every} steps)` : '';
  chart($('chart-loss'), loss.step, loss.loss, { log: true, smooth: true });
  chart($('chart-lr'), loss.step, loss.lr, {});
  const m = d.metrics, stepAt = m.columns.indexOf('step'), fidAt = m.columns.indexOf('fid');
  chart($('chart-fid'), m.rows.map(r => Number(r[stepAt])), m.rows.map(r => Number(r[fidAt])), { dots: true });
  $('run-fid').textContent = m.rows.length ? Number(m.rows[m.rows.length - 1][fidAt]).toFixed(2) : '-';
  metricsTable(m);
  grids(d);
  $('run-config').textContent = d.config ? JSON.stringify(d.config, null, 2) : '(no config.json yet)';
  $('run-notes').replaceChildren(...d.notes.map(n => { const li = document.createElement('li'); li.textContent = n; return li; }));
  view.dataset.version = d.version;
  view.dataset.rows = String(loss.rows);
}

function metricsTable(m) {
  const head = document.createElement('tr');
  m.columns.forEach(c => { const th = document.createElement('th'); th.textContent = c; head.append(th); });
  $('run-metrics').tHead.replaceChildren(head);
  $('run-metrics').tBodies[0].replaceChildren(...m.rows.map(r => {
    const tr = document.createElement('tr');
    r.forEach(v => { const td = document.createElement('td'); td.textContent = v; tr.append(td); });
    return tr;
  }));
}

function grids(d) {
  const select = $('grid-select');
  const names = d.grids.map(g => g.name);
  if (state.gridChosen && !names.includes(state.gridChosen)) state.gridChosen = null;
  const shown = state.gridChosen || d.latest_grid;
  select.replaceChildren(...d.grids.map(g => option(g.name, g.step == null ? `${g.name} (final)` : `step ${g.step}`)));
  const img = $('run-grid');
  select.hidden = !d.grids.length;
  if (!shown) {
    $('grid-note').textContent = 'no sample grid yet';
    img.hidden = true;
    return;
  }
  select.value = shown;
  $('grid-note').textContent = shown === d.latest_grid ? 'the latest' : '';
  const grid = d.grids.find(g => g.name === shown);
  const src = `/api/run/grids/${encodeURIComponent(grid.name)}?v=${grid.version}`;
  if (img.getAttribute('src') !== src) {
    img.dataset.name = grid.name;
    img.src = src;
  }
  img.hidden = false;
}

// ---- a small SVG line chart: x by step, y linear or log10 ----
function niceStep(span, count) {
  const raw = span / Math.max(1, count), power = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / power;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * power;
}

// Round values between lo and hi, about count of them; whole numbers only when whole (steps).
function ticks(lo, hi, count, whole = false) {
  if (!(hi > lo)) return [lo];
  const step = whole ? Math.max(1, niceStep(hi - lo, count)) : niceStep(hi - lo, count), out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
    for (const m of [1, 2, 5]) { const v = m * Math.pow(10, e); if (v >= lo && v <= hi) out.push(v); }
  return out.length >= 2 ? out : ticks(lo, hi, 4);
}

function fmt(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

function chart(svg, xs, ys, { log = false, smooth = false, dots = false }) {
  const W = 320, H = 160, L = 46, R = 16, T = 8, B = 22;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const points = xs.map((x, i) => [x, ys[i]]).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!log || y > 0));
  svg.dataset.points = String(points.length);
  if (!points.length) {
    svg.append(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data yet'));
    return;
  }
  let x0 = Math.min(...points.map(p => p[0])), x1 = Math.max(...points.map(p => p[0]));
  let y0 = Math.min(...points.map(p => p[1])), y1 = Math.max(...points.map(p => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 1; y0 = log ? y0 / 2 : y0 - pad; y1 = log ? y1 * 2 : y1 + pad; }
  const ty = v => log ? Math.log10(v) : v;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (ty(y1) - ty(y)) / (ty(y1) - ty(y0)) * (H - T - B);
  svg.append(el('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(el('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of log ? logTicks(y0, y1) : ticks(y0, y1, 4)) {
    svg.append(el('line', { class: 'axis', x1: L - 3, y1: sy(v), x2: W - R, y2: sy(v), 'stroke-dasharray': '2 3' }));
    svg.append(el('text', { x: L - 5, y: sy(v) + 3, 'text-anchor': 'end' }, fmt(v)));
  }
  for (const v of ticks(x0, x1, 4, true)) svg.append(el('text', { x: sx(v), y: H - 6, 'text-anchor': 'middle' }, fmt(v)));
  const path = pts => pts.map((p, i) => `${i ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join('');
  if (smooth && points.length > 20) {
    // The raw curve light, an exponential moving average (in log space for a log axis) over it.
    svg.append(el('path', { class: 'raw', d: path(points) }));
    let m = ty(points[0][1]);
    const alpha = 2 / (1 + Math.min(50, points.length / 10));
    const smoothed = points.map(([x, y]) => { m += alpha * (ty(y) - m); return [x, log ? Math.pow(10, m) : m]; });
    svg.append(el('path', { class: 'line', d: path(smoothed) }));
  } else {
    svg.append(el('path', { class: 'line', d: path(points) }));
  }
  if (dots) for (const p of points) svg.append(el('circle', { cx: sx(p[0]), cy: sy(p[1]), r: 2.5 }));
}

// ---- start ----
$('sample-form').addEventListener('submit', draw);
$('stop').addEventListener('click', stop);
$('f-class').addEventListener('change', formChanged);
$('f-sampler').addEventListener('change', formChanged);
$('grid-select').addEventListener('change', () => {
  state.gridChosen = $('grid-select').value;
  if (state.run) grids(state.run);
});
window.addEventListener('hashchange', showView);
showView();
loadInfo();
