// flowguard console: polls /api/v1/summary once a second and renders it. No framework,
// no build step; every value from the API goes through textContent (never innerHTML), so
// addresses and error messages cannot inject markup.
'use strict';

const POLL_MS = 1000;
const TIMEOUT_MS = 1500;
let lastOk = 0;
let serverSkew = 0; // server now_ms - local now, so durations use the service's clock

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

function si(n, unit) {
  n = Number(n) || 0;
  const steps = [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [d, s] of steps) if (n >= d) return (n / d).toFixed(n >= 10 * d ? 0 : 1) + ' ' + s + unit;
  return Math.round(n) + (unit ? ' ' + unit : '');
}
const pps = (n) => si(n, '');
const bps = (n) => si(n, 'b/s');

function clock(ms) {
  if (ms == null) return '';
  const d = new Date(ms);
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function dur(ms) {
  let s = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + s + 's';
}

// What MITIGATOR has acknowledged for one switch (mitigation.switches[].state), and the
// chip's colour.
const SWITCH_ACK = {
  on: ['on', 'on'], pending: ['pending', 'pending'], not_ours: ["on (not flowguard's)", 'on'],
  failed_retrying: ['failed, retrying', 'failed'], failed: ['failed', 'failed'],
  switching_off: ['switching off', 'pending'], off: ['off', 'off'], dry_run: ['dry run, not sent', 'dry_run'],
};
// The same for one BGP route (mitigation.routes[].state).
const ROUTE_ACK = {
  announced: ['announced', 'on'], pending: ['announcing', 'pending'], waiting: ['waiting', 'off'],
  failed_retrying: ['failed, retrying', 'failed'], withdrawing: ['withdrawing', 'pending'],
  withdrawn: ['withdrawn', 'off'], refused: ['refused', 'failed'], not_ours: ["not flowguard's", 'off'],
  dry_run: ['dry run, not sent', 'dry_run'],
};
// The attack's overall mitigation state, shown when no switch says more.
const ATTACK_STATE = {
  active: 'on', pending: 'pending', ending: 'switching off', ended: 'off', dry_run: 'dry run',
  failed_retrying: 'failed, retrying', failed: 'failed',
};

function chip(kind, name, label, wanted, state, table, error, note) {
  const [ack, cls] = table[state] || [state, 'none'];
  const c = el('span', { class: 'cm ' + cls, 'data-kind': kind, 'data-cm': name, 'data-wanted': wanted, 'data-state': state });
  c.textContent = `${label}: ${wanted} → ${ack}`;
  if (note) c.title = note;
  const kids = [c];
  if (error) kids.push(el('span', { class: 'err', 'data-cm': name, text: `${label}: ${error}` }));
  return kids;
}

function mitigationCell(a) {
  const td = el('td', { class: 'mitigation' });
  const m = a.mitigation;
  if (!m) {
    td.append(el('span', { class: 'cm none', text: 'no mitigation state' }));
    return td;
  }
  const switches = m.switches || [];
  for (const s of switches) {
    const label = s.name === 'toggle' ? `policy ${s.policy}` : s.name;
    td.append(...chip('switch', s.name, label, s.wanted, s.state, SWITCH_ACK, s.error, s.note));
  }
  for (const r of m.routes || []) {
    const wanted = a.active && !['waiting', 'refused'].includes(r.state) ? 'on' : 'off';
    const err = ['failed_retrying', 'refused'].includes(r.state) ? r.reason : null;
    td.append(...chip('route', r.route, `${r.kind} ${r.prefix}`, wanted, r.state, ROUTE_ACK, err, r.reason));
  }
  if (m.restored) td.append(el('span', { class: 'muted', text: ' (restored)' }));
  // An error no switch carries (the temporary blacklist, say) still shows.
  if (m.last_error && !switches.some((s) => s.error === m.last_error)) {
    td.append(el('span', { class: 'err', text: `mitigation ${ATTACK_STATE[m.state] || m.state}: ${m.last_error}` }));
  }
  return td;
}

function vectorsText(a) {
  const v = a.vectors;
  if (!Array.isArray(v) || !v.length) return null;
  return v.map((x) => (typeof x === 'string' ? x : x.name || x.type || x.vector || JSON.stringify(x))).join(', ');
}

function typeCell(a) {
  const td = el('td', {}, el('span', { class: 'type', text: a.attack_type }));
  td.append(el('span', { class: 'muted', text: ' ' + (a.protocol || '') }));
  const v = vectorsText(a);
  if (v) td.append(el('span', { class: 'vec', text: v }));
  if (a.external_active && !a.own_active) td.append(el('span', { class: 'muted', text: ' (external)' }));
  return td;
}

function reportButton(a) {
  return el('td', {}, el('button', { type: 'button', class: 'report', 'data-id': a.id, 'data-ip': a.ip, text: 'report' }));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderAttacks(d, now) {
  const active = d.attacks.active || [];
  const recent = d.attacks.recent || [];
  document.getElementById('active-count').textContent = active.length;
  document.getElementById('recent-count').textContent = d.attacks.recent_total ?? recent.length;
  document.getElementById('active-empty').hidden = active.length > 0;
  document.getElementById('recent-empty').hidden = recent.length > 0;
  fill(document.querySelector('#active tbody'), active.map((a) => el('tr',
    { class: 'attack', 'data-id': a.id, 'data-ip': a.ip },
    el('td', { class: 'addr', text: a.ip }),
    el('td', { text: a.direction }),
    el('td', { text: a.hostgroup }),
    typeCell(a),
    el('td', { class: 'num', text: `${pps(a.current?.pps)} / ${pps(a.peak_pps)}` }),
    el('td', { class: 'num', text: `${bps(a.current?.bps)} / ${bps(a.peak_bps)}` }),
    // Time of day only (the date is in the tooltip): the mitigation column needs the room.
    el('td', { text: clock(a.start_ms).slice(11), title: clock(a.start_ms) }),
    el('td', { text: dur(now - a.start_ms) }),
    mitigationCell(a),
    reportButton(a))));
  fill(document.querySelector('#recent tbody'), recent.map((a) => el('tr',
    { 'data-id': a.id, 'data-ip': a.ip },
    el('td', { class: 'addr', text: a.ip }),
    el('td', { text: a.direction }),
    el('td', { text: a.hostgroup }),
    typeCell(a),
    el('td', { class: 'num', text: pps(a.peak_pps) }),
    el('td', { class: 'num', text: bps(a.peak_bps) }),
    el('td', { text: clock(a.start_ms) }),
    el('td', { text: clock(a.end_ms) }),
    el('td', { text: dur((a.end_ms || now) - a.start_ms) }),
    mitigationCell(a),
    reportButton(a))));
}

const SVG = 'http://www.w3.org/2000/svg';
function spark(values) {
  const w = 150, h = 22;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', w);
  svg.setAttribute('height', h);
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  const v = values && values.length ? values : [0];
  const max = Math.max(1, ...v);
  const step = v.length > 1 ? w / (v.length - 1) : w;
  const pts = v.map((x, i) => `${(i * step).toFixed(1)},${(h - 1 - (x / max) * (h - 2)).toFixed(1)}`);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', pts.join(' '));
  svg.append(line);
  const t = document.createElementNS(SVG, 'title');
  t.textContent = `peak ${pps(max)} pps`;
  svg.append(t);
  return svg;
}

function renderTop(d) {
  for (const dir of ['incoming', 'outgoing']) {
    const rows = (d.top && d.top[dir]) || [];
    fill(document.querySelector(`#top-${dir} tbody`), rows.map((h) => el('tr', { 'data-ip': h.ip },
      el('td', { class: 'addr', text: h.ip }),
      el('td', { class: 'num', text: pps(h.pps) }),
      el('td', { class: 'num', text: bps(h.bps) }),
      el('td', { class: 'num', text: pps(h.flows_per_second) }),
      el('td', {}, spark(h.spark_pps)))));
  }
  const span = d.spark_seconds || 0;
  for (const s of document.querySelectorAll('.span-min')) s.textContent = span >= 120 ? Math.round(span / 60) + ' min' : span + ' s';
}

function renderExporters(d) {
  const rows = d.exporters || [];
  document.getElementById('exporters-empty').hidden = rows.length > 0;
  fill(document.querySelector('#exporters tbody'), rows.map((e) => el('tr', { 'data-exporter': e.exporter, 'data-collector': e.collector },
    el('td', { class: 'addr', text: e.exporter }),
    el('td', { class: 'muted', text: e.collector }),
    el('td', { class: 'num', text: si(e.records_per_second, '') }),
    el('td', { class: 'num', text: e.sampling_rate == null ? 'not announced' : `1:${e.sampling_rate}` }),
    el('td', { class: 'num', text: e.templates_known == null ? '–' : String(e.templates_known) }),
    el('td', { class: 'num' + (e.decode_errors_total ? ' bad' : ''), text: String(e.decode_errors_total) + (e.decode_errors_per_second ? ` (${e.decode_errors_per_second}/s)` : '') }))));
  const cols = d.collectors || [];
  fill(document.querySelector('#collectors tbody'), cols.map((c) => {
    const errs = Object.entries(c.decode_errors || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ');
    const drops = Object.entries(c.dropped || {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ');
    return el('tr', { 'data-collector': c.collector },
      el('td', { text: c.collector }),
      el('td', { class: 'num', text: si(c.datagrams_per_second, '') }),
      el('td', { class: 'num', text: `${c.exporters_known}` }),
      el('td', { class: 'num', text: `${c.template_misses}` }),
      el('td', { class: 'num' + (c.decode_errors_total ? ' bad' : ''), text: String(c.decode_errors_total) + (errs ? ` (${errs})` : '') }),
      el('td', { class: 'num' + (c.socket_drops || drops ? ' bad' : ''), text: `${c.socket_drops}` + (drops ? ` + ${drops}` : '') }));
  }));
}

function renderHealth(d) {
  const h = d.health || {};
  const dl = document.getElementById('health');
  const items = [];
  const add = (k, v, cls) => { items.push(el('dt', { text: k })); items.push(el('dd', { class: cls || '', text: v })); };
  if (!h.sampled) {
    add('status', 'first sample in a second…');
  } else {
    const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
    add('socket drops (kernel)', String(h.socket_drops_total), h.socket_drops_total ? 'bad' : 'good');
    add('datagrams dropped', String(h.datagrams_dropped_total), h.datagrams_dropped_total ? 'bad' : 'good');
    const q = sum(h.queue_full_drops) + sum(h.attack_events_dropped);
    add('queue drops', `${q}` + (q ? ` (${JSON.stringify({ ...h.queue_full_drops, ...h.attack_events_dropped })})` : ''), q ? 'bad' : 'good');
    add('detection pass', `${Number(h.detection_pass_ms).toFixed(2)} ms (${h.detection_passes} passes)`);
    add('tracked hosts', String(h.tracked_hosts));
    if (h.exporter_series_overflow) add('exporters not listed (series cap)', String(h.exporter_series_overflow), 'bad');
    const m = h.mitigator || {};
    const rcls = { reachable: 'good', unreachable: 'bad' }[m.reachability] || '';
    add('MITIGATOR', m.mode === 'dry_run' ? 'dry run (calls logged, not made)' : m.reachability, rcls);
    if (m.mode !== 'dry_run') {
      add('MITIGATOR last ok', m.last_ok || 'never');
      if (m.last_unreachable) add('MITIGATOR last unreachable', m.last_unreachable, 'bad');
      if (m.last_rejected) add('MITIGATOR last rejected call', m.last_rejected, 'bad');
    }
    add('mitigations active', String(m.mitigations_active));
    add('switch changes pending', String(m.pending_operations), m.pending_operations ? 'bad' : '');
  }
  dl.replaceChildren(...items);
}

function setOnline(ok, why) {
  const c = document.getElementById('conn');
  if (ok) {
    c.textContent = 'live';
    c.className = 'pill live';
    c.dataset.state = 'live';
    document.body.classList.remove('offline');
  } else {
    c.textContent = 'offline — reconnecting' + (lastOk ? ` (last data ${clock(lastOk)})` : '');
    c.className = 'pill offline';
    c.dataset.state = 'offline';
    c.title = String(why || '');
    document.body.classList.add('offline');
  }
}

function render(d) {
  serverSkew = d.now_ms - Date.now();
  const now = d.now_ms;
  renderAttacks(d, now);
  renderTop(d);
  renderExporters(d);
  renderHealth(d);
  document.getElementById('meta').textContent = `v${d.version} · up ${dur(d.uptime_seconds * 1000)} · ${clock(now)}`;
}

async function poll() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch('/api/v1/summary', { cache: 'no-store', signal: ctl.signal });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const d = await r.json();
    render(d);
    lastOk = Date.now() + serverSkew;
    setOnline(true);
  } catch (e) {
    setOnline(false, e);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

async function openReport(id, ip) {
  const panel = document.getElementById('report-panel');
  const url = `/api/v1/attacks/${encodeURIComponent(id)}/report.txt`;
  document.getElementById('report-title').textContent = `${ip} (${id})`;
  document.getElementById('report-link').setAttribute('href', url);
  const pre = document.getElementById('report-text');
  pre.textContent = 'loading…';
  panel.hidden = false;
  try {
    const r = await fetch(url, { cache: 'no-store' });
    pre.textContent = r.ok ? await r.text() : `report unavailable (HTTP ${r.status})`;
  } catch (e) {
    pre.textContent = 'report unavailable: service offline';
  }
  panel.scrollIntoView({ block: 'nearest' });
}

document.addEventListener('click', (ev) => {
  const b = ev.target.closest('button.report');
  if (b) openReport(b.dataset.id, b.dataset.ip);
  if (ev.target.id === 'report-close') document.getElementById('report-panel').hidden = true;
});

poll();
