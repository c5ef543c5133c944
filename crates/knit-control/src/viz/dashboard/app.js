// Knit dashboard: plain JavaScript, no build step, no external resources. It reads knit-control's
// viz API on the same origin (/api/stat, /api/edges, /api/routes, /api/authz, /api/certificates,
// /api/identity, /api/tap) and refreshes the open view every few seconds in place, so scroll position, filters
// and focus are kept.
// The header says when the view was last updated and how old the data is: every metrics answer
// carries `as_of`, when knit-control's last scrape round ended.
//
// Views (hash routes): #/ overview, #/deployments (all namespaces), #/namespaces/NS,
// #/namespaces/NS/deployments/NAME, #/tap, #/certificates. Large lists are paged by the server
// (limit/offset/sort/filter), so the DOM never holds more than one page of rows.
'use strict';
(function () {
  const REFRESH_MS = 5000;
  const TAP_CAP = 500;
  const EXPIRING_SECS = 6 * 3600;
  const GRAPH_MAX_NODES = 200;
  const PAGE_SIZES = [25, 50, 100, 200];
  const POD_LIMIT = 200; // a deployment page's pods
  const EDGE_FETCH_LIMIT = 2000; // the most edges fetched to draw the topology

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG, tag);
    setProps(el, props);
    append(el, children);
    return el;
  }

  function setProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  // ---------------------------------------------------------------- formats (as `knit viz stat`)

  const fmt = {
    pct: (v) => (v == null ? '-' : (100 * v).toFixed(2) + '%'),
    rps: (row) => (row.requests > 0 ? row.rps.toFixed(1) : '-'),
    rate: (v) => (v == null ? '-' : v.toFixed(1)),
    ms: (v) => (v == null ? '-' : (v < 10 ? v.toFixed(1) : v.toFixed(0)) + 'ms'),
    int: (v) => (v == null ? '-' : String(Math.round(v))),
    count: (n) => Number(n).toLocaleString('en-US'),
    bytes: (v) => {
      if (v == null) return '-';
      const units = ['B', 'kB', 'MB', 'GB'];
      let i = 0;
      while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
      return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + units[i];
    },
    clock: (ms) => new Date(ms).toLocaleTimeString('en-GB', { hour12: false }),
    clockMs: (ms) => {
      const d = new Date(ms);
      return d.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
    },
    date: (secs) => {
      const d = new Date(secs * 1000);
      const p = (n) => String(n).padStart(2, '0');
      return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
    },
    left: (secs) => {
      if (secs == null) return '-';
      if (secs <= 0) return 'expired';
      const d = Math.floor(secs / 86400), hh = Math.floor((secs % 86400) / 3600);
      const m = Math.floor((secs % 3600) / 60), ss = Math.floor(secs % 60);
      if (d > 0) return `${d}d ${hh}h`;
      if (hh > 0) return `${hh}h ${m}m`;
      return `${m}m ${ss}s`;
    },
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function isAbort(e) {
    return e && (e.name === 'AbortError' || e instanceof DOMException && e.code === 20);
  }

  function abortError() {
    return new DOMException('aborted', 'AbortError');
  }

  function query(params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== '') qs.set(k, String(v));
    }
    const text = qs.toString();
    return text ? '?' + text : '';
  }

  async function api(path, params, signal) {
    const url = path + query(params);
    const view = state.view;
    let rsp;
    try {
      rsp = await fetch(url, { signal, headers: { accept: 'application/json' }, cache: 'no-store' });
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new ApiError(`cannot reach knit-control (${e.message})`, 0);
    }
    let body = null;
    try {
      body = await rsp.json();
    } catch (e) {
      if (isAbort(e)) throw e;
    }
    if (signal && signal.aborted) throw abortError();
    if (!rsp.ok) {
      throw new ApiError(`${path}: ${(body && body.error) || 'HTTP ' + rsp.status}`, rsp.status);
    }
    if (body == null) throw new ApiError(`${path}: the answer is not JSON`, rsp.status);
    if (state.view === view) noteAsOf(body.as_of);
    return body;
  }

  // An AbortController that also aborts when `outer` does.
  function linked(outer) {
    const c = new AbortController();
    if (outer) {
      if (outer.aborted) c.abort();
      else outer.addEventListener('abort', () => c.abort(), { once: true });
    }
    return c;
  }

  // ---------------------------------------------------------------- global state

  const ui = {
    app: document.getElementById('app'),
    banner: document.getElementById('banner'),
    updated: document.getElementById('last-updated'),
    asOf: document.getElementById('as-of'),
    window: document.getElementById('window'),
    live: document.getElementById('live'),
  };
  const state = {
    view: null, // the mounted view
    timer: null,
    ctl: null, // the global refresh's controller
    live: true,
    lastUpdate: 0,
    asOf: 0, // the newest `as_of` (Unix seconds) the open view received
  };
  try {
    const w = localStorage.getItem('knit.window');
    if (w && [...ui.window.options].some((o) => o.value === w)) ui.window.value = w;
  } catch (_) { /* storage may be disabled */ }

  // Marks for tests and benchmarks: each view's first rendered data, in ms after the route.
  window.knit = { timings: [], refreshes: 0, routeStart: performance.now() };

  function currentWindow() {
    return ui.window.value;
  }

  function markUpdated() {
    state.lastUpdate = Date.now();
    ui.updated.dataset.updatedAt = String(state.lastUpdate);
    ui.updated.classList.remove('stale');
    setText(ui.updated, 'Updated ' + fmt.clock(state.lastUpdate));
    window.knit.refreshes++;
  }

  // Shows the newest data time the open view received ("data as of HH:MM:SS").
  function noteAsOf(secs) {
    if (typeof secs !== 'number' || !(secs > 0) || secs <= state.asOf) return;
    state.asOf = secs;
    ui.asOf.dataset.asOf = String(secs);
    setText(ui.asOf, 'data as of ' + fmt.clock(secs * 1000));
    ui.asOf.hidden = false;
    markStale();
  }

  // Warns (in the header) when the page or its data is older than three refresh intervals.
  function markStale() {
    const old = (ms) => ms > 0 && Date.now() - ms > 3 * REFRESH_MS;
    ui.updated.classList.toggle('stale', old(state.lastUpdate));
    ui.asOf.classList.toggle('stale', old(state.asOf * 1000));
  }

  function showBanner(message) {
    if (message) {
      setText(ui.banner, message);
      ui.banner.hidden = false;
    } else if (!ui.banner.hidden) {
      ui.banner.hidden = true;
      ui.banner.textContent = '';
    }
  }

  setInterval(markStale, 1000);

  // A part of a view that loads on its own: its runs supersede each other (the older one is
  // aborted, so a slow answer never overwrites a newer one) and its errors show in place.
  class Section {
    constructor(load, errorSlot) {
      this.loadFn = load;
      this.errorSlot = errorSlot;
      this.ctl = null;
    }

    async run(outer) {
      if (this.ctl) this.ctl.abort();
      const ctl = (this.ctl = linked(outer));
      try {
        await this.loadFn(ctl.signal);
        if (ctl.signal.aborted) return null;
        this.setError(null);
        return true;
      } catch (e) {
        if (isAbort(e) || ctl.signal.aborted) return null;
        this.setError(e);
        return e;
      } finally {
        if (this.ctl === ctl) this.ctl = null;
      }
    }

    // Reloads this section alone now (after a sort, filter or page change).
    reload() {
      return this.run(null).then((r) => {
        if (r === true) markUpdated();
      });
    }

    setError(e) {
      if (!this.errorSlot) return;
      if (e) {
        setText(this.errorSlot, e.message || String(e));
        this.errorSlot.hidden = false;
      } else if (!this.errorSlot.hidden) {
        this.errorSlot.hidden = true;
        this.errorSlot.textContent = '';
      }
    }

    abort() {
      if (this.ctl) this.ctl.abort();
    }
  }

  function errorSlot() {
    return h('p', { class: 'section-error', 'data-testid': 'section-error', role: 'status', hidden: true });
  }

  // Refreshes every section of the open view; schedules the next refresh when done.
  async function refresh() {
    clearTimeout(state.timer);
    const view = state.view;
    if (!view || !view.sections || view.sections.length === 0) return;
    if (state.ctl) state.ctl.abort();
    const ctl = (state.ctl = new AbortController());
    const results = await Promise.all(view.sections.map((sec) => sec.run(ctl.signal)));
    if (ctl.signal.aborted || state.view !== view) return;
    state.ctl = null;
    if (results.some((r) => r === true)) {
      markUpdated();
      showBanner(null);
    } else {
      const err = results.find((r) => r instanceof Error);
      if (err) showBanner(`${err.message} (retrying every ${REFRESH_MS / 1000}s)`);
    }
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!state.live) return;
    state.timer = setTimeout(() => {
      if (document.hidden) schedule();
      else refresh();
    }, REFRESH_MS);
  }

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.live && state.lastUpdate && Date.now() - state.lastUpdate > REFRESH_MS) refresh();
  });

  ui.window.addEventListener('change', () => {
    try { localStorage.setItem('knit.window', ui.window.value); } catch (_) { /* ignore */ }
    refresh();
  });

  ui.live.addEventListener('click', () => {
    state.live = !state.live;
    ui.live.setAttribute('aria-pressed', String(state.live));
    setText(ui.live, 'Live updates: ' + (state.live ? 'on' : 'off'));
    if (state.live) refresh();
    else clearTimeout(state.timer);
  });

  // ---------------------------------------------------------------- routing

  const enc = encodeURIComponent;
  const link = {
    ns: (ns) => `#/namespaces/${enc(ns)}`,
    deploy: (ns, name) => `#/namespaces/${enc(ns)}/deployments/${enc(name)}`,
  };

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const q = raw.indexOf('?');
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
    const parts = path.split('/').filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (_) { return p; }
    });
    return { path, parts, params };
  }

  // Keeps a view's state (sort, filter, page) in the address without a hashchange.
  function replaceParams(update) {
    const { path, params } = parseHash();
    for (const [k, v] of Object.entries(update)) {
      if (v === undefined || v === null || v === '') params.delete(k);
      else params.set(k, String(v));
    }
    const qs = params.toString();
    history.replaceState(history.state, '', '#' + path + (qs ? '?' + qs : ''));
  }

  function route() {
    const { parts, params } = parseHash();
    if (state.view && state.view.destroy) state.view.destroy();
    if (state.view) for (const sec of state.view.sections || []) sec.abort();
    if (state.ctl) state.ctl.abort();
    clearTimeout(state.timer);
    showBanner(null);
    // The next view says its own data's time (the old one stays shown until it does).
    state.asOf = 0;
    window.knit.routeStart = performance.now();

    let view, nav;
    if (parts.length === 0) [view, nav] = [overviewView(), 'overview'];
    else if (parts[0] === 'deployments' && parts.length === 1) [view, nav] = [deploymentsView(null, params), 'deployments'];
    else if (parts[0] === 'namespaces' && parts.length === 2) [view, nav] = [deploymentsView(parts[1], params), 'deployments'];
    else if (parts[0] === 'namespaces' && parts.length === 4 && parts[2] === 'deployments') [view, nav] = [deploymentView(parts[1], parts[3]), 'deployments'];
    else if (parts[0] === 'tap' && parts.length === 1) [view, nav] = [tapView(params), 'tap'];
    else if (parts[0] === 'certificates' && parts.length === 1) [view, nav] = [certificatesView(params), 'certificates'];
    else [view, nav] = [notFoundView(), null];

    for (const a of document.querySelectorAll('[data-nav]')) {
      if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    state.view = view;
    if (!view.sections || !view.sections.length) ui.asOf.hidden = true; // no metrics here
    document.title = view.title + ' · Knit';
    ui.app.replaceChildren(view.node);
    ui.app.dataset.view = view.name;
    const h1 = ui.app.querySelector('h1');
    if (h1 && state.routed) {
      h1.tabIndex = -1;
      h1.focus({ preventScroll: true });
    }
    state.routed = true;
    if (view.sections && view.sections.length) refresh();
  }

  window.addEventListener('hashchange', route);

  function firstRender(name) {
    window.knit.timings.push({ view: name, ms: Math.round(performance.now() - window.knit.routeStart) });
  }

  function heading(title, crumbs) {
    const parts = [];
    if (crumbs && crumbs.length) {
      const trail = [];
      crumbs.forEach(([text, href], i) => {
        if (i) trail.push(' › ');
        trail.push(href ? h('a', { href }, text) : text);
      });
      parts.push(h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, trail));
    }
    parts.push(h('h1', null, title));
    return parts;
  }

  // ---------------------------------------------------------------- server-paged tables
  // The state `st` of a table the server pages, sorts and filters: {sort, order, filter,
  // offset, limit}. `changed()` reloads it.

  // A search box that sets `st.filter` 300 ms after typing stops, back on the first page.
  function filterBox(props, st, changed) {
    let debounce = null;
    const input = h('input', { type: 'search', value: st.filter, ...props });
    input.addEventListener('input', () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        const v = input.value.trim();
        if (v === st.filter) return;
        st.filter = v;
        st.offset = 0;
        changed();
      }, 300);
    });
    return input;
  }

  // A header row of `cols`; a column with `sort` gets a button calling onSort(column). `heads`:
  // the sortable headers by key(column), for markSorted.
  function sortableHeads(cols, key, onSort) {
    const heads = new Map();
    const row = h('tr', null, cols.map((c) => {
      const th = h('th', { scope: 'col', class: c.num ? 'num' : null, 'data-col': c.key, title: c.title });
      if (c.sort) {
        th.append(h('button', { type: 'button', class: 'sort', 'data-sort': key(c), onclick: () => onSort(c) }, c.label));
        heads.set(key(c), th);
      } else {
        th.textContent = c.label;
      }
      return th;
    }));
    return { row, heads };
  }

  function markSorted(heads, key, order) {
    for (const [k, th] of heads) th.setAttribute('aria-sort', k === key ? (order === 'asc' ? 'ascending' : 'descending') : 'none');
  }

  // Sorting by the field already sorted by flips the order; a new field starts ascending for
  // names, descending for numbers (the busiest first).
  function sortByField(st, field) {
    if (st.sort === field) st.order = st.order === 'asc' ? 'desc' : 'asc';
    else {
      st.sort = field;
      st.order = field === 'name' ? 'asc' : 'desc';
    }
    st.offset = 0;
  }

  // The first row of the page holding row `offset`, within `total` rows.
  function pageStart(offset, total, limit) {
    const o = Math.max(0, Math.min(offset, Math.max(0, total - 1)));
    return o - (o % limit);
  }

  // ---------------------------------------------------------------- stat tables

  const successCls = (v) => (v == null ? '' : v < 0.9 ? 'bad' : v < 0.99 ? 'warn' : '');
  // `pods`: how many of the resource's pods run a proxy, as Linkerd's MESHED column (unknown
  // for services). Not sortable by the server.
  const MESHED_COLUMN = { key: 'meshed', label: 'Meshed', num: true, title: 'Pods with a proxy, of all its pods',
    text: (r) => (r.pods ? `${r.pods.meshed}/${r.pods.total}` : '-'), raw: (r) => (r.pods ? r.pods.meshed : null),
    cls: (r) => (r.pods && r.pods.meshed < r.pods.total ? 'warn' : '') };
  // Success rate, rps and latency: the columns every row of /api/stat and /api/routes has.
  const GOLDEN_COLUMNS = [
    { key: 'success', label: 'Success', sort: 'success_rate', num: true, text: (r) => fmt.pct(r.success_rate), raw: (r) => r.success_rate,
      cls: (r) => successCls(r.success_rate) },
    { key: 'rps', label: 'RPS', sort: 'rps', num: true, text: (r) => fmt.rps(r), raw: (r) => r.rps },
    { key: 'p50', label: 'P50', num: true, text: (r) => fmt.ms(r.latency_ms_p50), raw: (r) => r.latency_ms_p50 },
    { key: 'p95', label: 'P95', num: true, text: (r) => fmt.ms(r.latency_ms_p95), raw: (r) => r.latency_ms_p95 },
    { key: 'p99', label: 'P99', sort: 'latency_ms_p99', num: true, text: (r) => fmt.ms(r.latency_ms_p99), raw: (r) => r.latency_ms_p99 },
  ];
  const STAT_COLUMNS = [
    MESHED_COLUMN,
    ...GOLDEN_COLUMNS,
    { key: 'mtls', label: 'mTLS', num: true, text: (r) => fmt.pct(r.mtls_rate), raw: (r) => r.mtls_rate,
      cls: (r) => (r.mtls_rate != null && r.mtls_rate < 1 ? 'warn' : '') },
    { key: 'tcp', label: 'TCP', num: true, text: (r) => fmt.int(r.tcp_connections), raw: (r) => r.tcp_connections, title: 'Open TCP connections' },
  ];

  // Outbound rows: the linked clusters the traffic reached (mirrored and federated Services),
  // `local` for this one.
  const clusterNames = (clusters) => (clusters && clusters.length ? clusters.map((c) => c || 'local').join(', ') : '-');
  const CLUSTER_COLUMN = { key: 'cluster', label: 'Cluster', title: 'Linked clusters the traffic went to',
    text: (r) => clusterNames(r.clusters), raw: (r) => (r.clusters || []).join(',') };

  // Sets the metric cells of a stat row to row `r`.
  function fillStatRow(tr, columns, r) {
    tr.dataset.requests = String(r.requests);
    fillCells(tr, columns, r);
  }

  // Sets the cells of the columns that have a `text` (and maybe `raw`, `cls`) to row `r`; the
  // others (links made when the row was) are left as they are.
  function fillCells(tr, columns, r) {
    columns.forEach((c, i) => {
      if (!c.text) return;
      const td = tr.children[i];
      setText(td, c.text(r));
      if (c.raw) {
        const raw = c.raw(r);
        td.dataset.value = raw == null ? '' : String(raw);
      }
      const cls = [c.num ? 'num' : '', c.cls ? c.cls(r) : ''].filter(Boolean).join(' ');
      if ((td.getAttribute('class') || '') !== cls) td.setAttribute('class', cls);
    });
  }

  // Keeps the rows of a tbody in the order of `items`, reusing each row by its key so a
  // refresh only touches the cells whose text changed.
  function reconcile(tbody, items, key, create, update) {
    const old = new Map();
    for (const tr of tbody.children) if (tr.dataset.key != null) old.set(tr.dataset.key, tr);
    let prev = null;
    for (const item of items) {
      const k = key(item);
      let tr = old.get(k);
      if (tr) old.delete(k);
      else {
        tr = create(item, k);
        tr.dataset.key = k;
      }
      update(tr, item);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of old.values()) tr.remove();
    // Anything else (an "empty" row) after the last kept row.
    while (prev ? prev.nextSibling : tbody.firstChild) (prev ? prev.nextSibling : tbody.firstChild).remove();
  }

  function emptyRow(tbody, colspan, text) {
    tbody.replaceChildren(h('tr', { 'data-testid': 'empty-row' }, h('td', { class: 'empty', colspan }, text)));
  }

  // A clickable row: a click anywhere follows the row's link (text selection excepted).
  function rowLink(tr, href) {
    tr.classList.add('clickable');
    tr.dataset.href = href;
  }

  document.addEventListener('click', (ev) => {
    const tr = ev.target.closest && ev.target.closest('tr.clickable');
    if (!tr || ev.target.closest('a, button, input, select')) return;
    if (String(window.getSelection && window.getSelection()).length) return;
    if (ev.ctrlKey || ev.metaKey) window.open(tr.dataset.href, '_blank');
    else location.hash = tr.dataset.href;
  });

  // A golden-metrics table of /api/stat, paged, sorted and filtered by the server.
  //   opts: label, base() -> {kind, namespace, to, from}, nameLabel, showNamespace,
  //         href(row), persist (keep state in the address), limit, filterable, empty,
  //         testid, onData(data)
  function statTable(opts) {
    const st = { sort: 'name', order: 'asc', filter: '', offset: 0, limit: opts.limit || 50 };
    if (opts.persist) {
      const p = opts.persist;
      if (p.get('sort')) st.sort = p.get('sort');
      if (p.get('order')) st.order = p.get('order') === 'desc' ? 'desc' : 'asc';
      if (p.get('filter')) st.filter = p.get('filter');
      const size = Number(p.get('size'));
      if (PAGE_SIZES.includes(size)) st.limit = size;
      const page = Number(p.get('page'));
      if (page > 1) st.offset = (page - 1) * st.limit;
    }
    const err = errorSlot();
    const columns = [];
    if (opts.showNamespace) columns.push({ key: 'namespace', label: 'Namespace' });
    columns.push({ key: 'name', label: opts.nameLabel || 'Name', sort: 'name' });
    if (opts.clusters) columns.push(CLUSTER_COLUMN);
    columns.push(...STAT_COLUMNS);

    const count = h('span', { class: 'count', 'data-testid': 'count', role: 'status' }, '…');
    const toolbar = h('div', { class: 'toolbar' });
    if (opts.filterable !== false) {
      toolbar.append(filterBox({ placeholder: 'Filter by name or namespace', 'aria-label': `Filter ${opts.label.toLowerCase()}`, 'data-testid': 'filter' }, st, changed));
    }
    toolbar.append(count);

    const { row: headRow, heads } = sortableHeads(columns, (c) => c.sort, (c) => {
      sortByField(st, c.sort);
      changed();
    });
    const tbody = h('tbody');
    const table = h('table', { 'data-testid': opts.testid || 'stat-table' },
      h('caption', { class: 'sr-only' }, opts.label), h('thead', null, headRow), tbody);
    const wrap = h('div', { class: 'table-wrap', 'data-testid': (opts.testid || 'stat-table') + '-wrap', 'data-state': 'loading' }, table);

    const pageLabel = h('span', { 'data-testid': 'page' });
    const btn = (text, label, testid, fn) => h('button', { type: 'button', 'aria-label': label, 'data-testid': testid, onclick: fn }, text);
    const first = btn('«', 'First page', 'page-first', () => go(0));
    const prev = btn('‹ Prev', 'Previous page', 'page-prev', () => go(st.offset - st.limit));
    const next = btn('Next ›', 'Next page', 'page-next', () => go(st.offset + st.limit));
    const last = btn('»', 'Last page', 'page-last', () => go(total - 1));
    const size = h('select', { 'aria-label': 'Rows per page', 'data-testid': 'page-size' },
      PAGE_SIZES.map((n) => h('option', { value: n, selected: n === st.limit }, `${n} per page`)));
    size.addEventListener('change', () => {
      st.limit = Number(size.value);
      st.offset = 0;
      changed();
    });
    const pager = h('div', { class: 'pager' }, first, prev, pageLabel, next, last, size);

    const node = h('div', { class: 'stat' }, toolbar, err, wrap, pager);
    let total = 0;
    let rendered = false;

    function go(offset) {
      st.offset = pageStart(offset, total, st.limit);
      changed();
    }

    function changed() {
      if (opts.persist) {
        replaceParams({
          sort: st.sort === 'name' ? null : st.sort,
          order: (st.sort === 'name' ? st.order === 'asc' : st.order === 'desc') ? null : st.order,
          filter: st.filter,
          page: st.offset ? st.offset / st.limit + 1 : null,
          size: st.limit === (opts.limit || 50) ? null : st.limit,
        });
      }
      wrap.dataset.state = 'loading';
      section.reload();
    }

    function showHeads() {
      markSorted(heads, st.sort, st.order);
    }
    showHeads();

    async function load(signal) {
      const started = performance.now();
      const applied = { ...st };
      const data = await api('/api/stat', {
        ...opts.base(), window: currentWindow(),
        sort: applied.sort, order: applied.order, filter: applied.filter, limit: applied.limit, offset: applied.offset,
      }, signal);
      total = data.total != null ? data.total : data.rows.length;
      if (data.rows.length === 0 && total > 0 && applied.offset >= total) {
        // The filter or the mesh shrank under the current page: show the last page.
        st.offset = pageStart(total - 1, total, st.limit);
        return load(signal);
      }
      render(data, applied);
      wrap.dataset.state = 'ready';
      wrap.dataset.sort = applied.sort;
      wrap.dataset.order = applied.order;
      wrap.dataset.filter = applied.filter;
      wrap.dataset.offset = String(applied.offset);
      wrap.dataset.total = String(total);
      wrap.dataset.ms = String(Math.round(performance.now() - started));
      if (!rendered) {
        rendered = true;
        firstRender(opts.testid || 'stat-table');
      }
      if (opts.onData) opts.onData(data);
    }

    function render(data, applied) {
      showHeads();
      const from = data.rows.length ? applied.offset + 1 : 0;
      const to = applied.offset + data.rows.length;
      setText(count, `${fmt.count(data.rows.length)} of ${fmt.count(total)}` + (data.rows.length ? ` (rows ${fmt.count(from)}–${fmt.count(to)})` : ''));
      count.dataset.shown = String(data.rows.length);
      count.dataset.total = String(total);
      const pages = Math.max(1, Math.ceil(total / applied.limit));
      const page = Math.floor(applied.offset / applied.limit) + 1;
      setText(pageLabel, `Page ${page} of ${pages}`);
      first.disabled = prev.disabled = applied.offset === 0;
      next.disabled = last.disabled = to >= total;
      pager.hidden = opts.hidePagerWhenSmall && total <= applied.limit;
      if (data.rows.length === 0) {
        emptyRow(tbody, columns.length, applied.filter ? `Nothing matches “${applied.filter}”.` : opts.empty || 'No traffic found.');
        return;
      }
      reconcile(tbody, data.rows, (r) => r.namespace + '/' + r.name, (r) => {
        const tr = h('tr', { 'data-testid': 'stat-row', 'data-name': r.name, 'data-namespace': r.namespace });
        for (const c of columns) {
          const td = h('td', { 'data-col': c.key, class: c.num ? 'num' : null });
          if (c.key === 'name' && opts.href) td.append(h('a', { href: opts.href(r) }, r.name));
          else if (c.key === 'namespace') td.append(h('a', { href: link.ns(r.namespace) }, r.namespace));
          else if (c.key === 'name') td.textContent = r.name;
          tr.append(td);
        }
        if (opts.href) rowLink(tr, opts.href(r));
        return tr;
      }, (tr, r) => fillStatRow(tr, columns, r));
    }

    const section = new Section(load, err);
    return { node, section, state: st };
  }

  function panel(title, ...children) {
    const id = 'h-' + Math.random().toString(36).slice(2, 9);
    return h('section', { class: 'panel', 'aria-labelledby': id }, h('h2', { id }, title), children);
  }

  // A small unpaged table (a deployment's pods, routes, authorizations): one fetch per refresh,
  // rows reused by key. opts: testid, label, rowTestid, columns, key(row), fill(tr, columns, row),
  // noun [one, many], empty, attrs(row) -> the row's data-* attributes, fetch(signal) -> {rows, total?}.
  function listTable(opts) {
    const err = errorSlot();
    const tbody = h('tbody');
    const count = h('span', { class: 'count', 'data-testid': opts.testid + '-count', role: 'status' }, '…');
    const table = h('div', { class: 'table-wrap' }, h('table', { 'data-testid': opts.testid },
      h('caption', { class: 'sr-only' }, opts.label),
      h('thead', null, h('tr', null, opts.columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null, title: c.title }, c.label)))),
      tbody));
    const section = new Section(async (signal) => {
      const data = await opts.fetch(signal);
      const rows = data.rows || [];
      const total = data.total != null ? data.total : rows.length;
      const n = (k) => `${fmt.count(k)} ${k === 1 ? opts.noun[0] : opts.noun[1]}`;
      setText(count, total > rows.length ? `${fmt.count(rows.length)} of ${n(total)}` : n(total));
      count.dataset.shown = String(rows.length);
      count.dataset.total = String(total);
      if (!rows.length) {
        emptyRow(tbody, opts.columns.length, opts.empty);
        return;
      }
      reconcile(tbody, rows, opts.key,
        (r) => h('tr', { 'data-testid': opts.rowTestid, ...opts.attrs(r) }, opts.columns.map((c) => h('td', { 'data-col': c.key, class: c.num ? 'num' : null }))),
        (tr, r) => opts.fill(tr, opts.columns, r));
    }, err);
    return { node: h('div', null, h('div', { class: 'toolbar' }, count), err, table), section };
  }

  const ROUTE_COLUMNS = [
    { key: 'parent', label: 'Parent', text: (r) => r.parent, title: 'The Service (namespace/name:port) the route is attached to' },
    { key: 'route', label: 'Route', text: (r) => r.route },
    ...GOLDEN_COLUMNS,
  ];
  const AUTHZ_COLUMNS = [
    { key: 'server', label: 'Server', text: (r) => r.server },
    { key: 'authorization', label: 'Authorization', text: (r) => r.authorization },
    { key: 'route', label: 'Route', text: (r) => r.route },
    { key: 'allowed', label: 'Allowed/s', num: true, text: (r) => fmt.rate(r.allowed_rps), raw: (r) => r.allowed_rps },
    { key: 'denied', label: 'Denied/s', num: true, text: (r) => fmt.rate(r.denied_rps), raw: (r) => r.denied_rps,
      cls: (r) => (r.denied_rps > 0 ? 'bad' : '') },
  ];

  // ---------------------------------------------------------------- overview

  function overviewView() {
    const namespaces = statTable({
      label: 'Namespaces', testid: 'namespaces', nameLabel: 'Namespace',
      base: () => ({ kind: 'namespace' }), href: (r) => link.ns(r.name), limit: 50,
      hidePagerWhenSmall: true, empty: 'No namespace has a proxy that reports metrics yet.',
    });
    const topo = topology();
    const node = h('div', null,
      heading('Overview'),
      panel('Namespaces', namespaces.node),
      panel('Topology', topo.node));
    return { name: 'overview', title: 'Overview', node, sections: [namespaces.section, ...topo.sections] };
  }

  // Deployment-to-deployment edges: an SVG graph when they join at most GRAPH_MAX_NODES
  // deployments and all of them come in one answer (EDGE_FETCH_LIMIT), else only a table paged
  // by the server (laying out thousands of nodes helps nobody). The table is there in both cases.
  function topology() {
    const err = errorSlot();
    const summary = h('p', { class: 'note', 'data-testid': 'topology-summary' }, 'Loading edges…');
    const graphBox = h('div', { class: 'topology', 'data-testid': 'topology-graph', hidden: true });
    const legend = h('div', { class: 'legend', hidden: true },
      h('span', null, h('span', { class: 'swatch' }), 'mutual TLS'),
      h('span', null, h('span', { class: 'swatch plain' }), 'not (all) mutual TLS'),
      h('span', { 'data-testid': 'legend-labels' }, 'labels: requests per second over the window'));
    const edgeTable = edgesTable();
    const details = h('details', { 'data-testid': 'topology-details' }, h('summary', null, 'Edges as a table'));
    const tableBox = h('div', { 'data-testid': 'topology-table-box' }, edgeTable.node);
    const node = h('div', null, err, summary, graphBox, legend, tableBox);
    let graphKey = null;
    let rendered = false;
    let drawable = true; // as the last answer said: a mesh too big to draw is asked only for its counts

    // The edges, all of them when they can be drawn; else only how many there are.
    async function fetchEdges(signal) {
      const params = { window: currentWindow() };
      const data = await api('/api/edges', { ...params, limit: drawable ? EDGE_FETCH_LIMIT : 0 }, signal);
      const fits = data.nodes <= GRAPH_MAX_NODES && data.total <= EDGE_FETCH_LIMIT;
      const wasDrawable = drawable;
      drawable = fits;
      return fits && !wasDrawable ? api('/api/edges', { ...params, limit: EDGE_FETCH_LIMIT }, signal) : data;
    }

    function tooBig(data) {
      return data.nodes > GRAPH_MAX_NODES
        ? ` Too many deployments to draw (more than ${fmt.count(GRAPH_MAX_NODES)}): edges are listed as a table.`
        : ` Too many edges to draw (more than ${fmt.count(EDGE_FETCH_LIMIT)}): they are listed as a table.`;
    }

    async function load(signal) {
      const data = await fetchEdges(signal);
      const edges = data.edges || [];
      const total = data.total != null ? data.total : edges.length;
      const secs = data.window_secs || 30;
      const draw = total > 0 && data.nodes <= GRAPH_MAX_NODES && edges.length === total;
      // How many are not mutual TLS is known only when every edge is at hand.
      const insecure = draw ? edges.filter((e) => !e.secured).length : null;
      setText(summary, total === 0
        ? 'No calls between meshed deployments in the window.'
        : `${fmt.count(data.nodes)} deployments, ${fmt.count(total)} edges` +
          (draw ? `, ${fmt.count(insecure)} not secured by mutual TLS.` : '.' + tooBig(data)));
      summary.dataset.nodes = String(data.nodes);
      summary.dataset.edges = String(total);
      summary.dataset.insecure = insecure == null ? '' : String(insecure);
      graphBox.hidden = !draw;
      legend.hidden = !draw;
      if (draw) {
        const nodes = new Map();
        for (const e of edges) {
          nodes.set(e.src_namespace + '/' + e.src, { ns: e.src_namespace, name: e.src });
          nodes.set(edgeDst(e), { ns: e.dst_namespace, name: edgeDstName(e), cluster: e.dst_cluster || null });
        }
        const key = [...nodes.keys()].sort().join('|') + '#' + edges.map(edgeKey).sort().join('|');
        if (key !== graphKey) {
          graphKey = key;
          graphBox.replaceChildren(drawGraph(nodes, edges, secs));
          setText(legend.querySelector('[data-testid="legend-labels"]'), graphBox.querySelector('.edge-label')
            ? 'labels: requests per second over the window' : 'point at an edge for its requests per second and identities');
        } else {
          updateGraph(graphBox, edges, secs);
        }
        // The graph's edges are also a table, for screen readers and exact numbers.
        if (edgeTable.node.parentNode !== details) {
          details.append(edgeTable.node);
          tableBox.replaceChildren(details);
        }
      } else {
        graphKey = null;
        graphBox.replaceChildren();
        if (edgeTable.node.parentNode !== tableBox) tableBox.replaceChildren(edgeTable.node);
      }
      tableBox.hidden = total === 0;
      if (!rendered) {
        rendered = true;
        firstRender('topology');
      }
    }
    return { node, sections: [new Section(load, err), edgeTable.section] };
  }

  function edgeKey(e) {
    return `${e.src_namespace}/${e.src}>${edgeDst(e)}`;
  }

  // An edge's destination: a deployment here, or in a linked cluster (`@cluster`), where it is
  // the remote Service when reached through the gateway.
  function edgeDstName(e) {
    return (e.via_gateway ? 'svc/' : '') + e.dst + (e.dst_cluster ? ` @${e.dst_cluster}` : '');
  }

  function edgeDst(e) {
    return `${e.dst_namespace}/${edgeDstName(e)}`;
  }

  function edgeTitle(e, secs) {
    return `${e.src_namespace}/${e.src} → ${edgeDst(e)}: ${fmt.rate(e.requests / secs)} rps, ` +
      (e.secured ? 'mutual TLS' : 'NOT all mutual TLS') +
      (e.client_id ? `\nclient: ${e.client_id}` : '') + (e.server_id ? `\nserver: ${e.server_id}` : '');
  }

  // Layered layout: longest path from the callers (cycles broken where a DFS meets them), nodes
  // ordered in their layer by their callers' positions.
  function layout(nodes, edges) {
    const keys = [...nodes.keys()].sort();
    const out = new Map(keys.map((k) => [k, []]));
    const pairs = [];
    const seen = new Set();
    for (const e of edges) {
      const a = e.src_namespace + '/' + e.src, b = edgeDst(e);
      if (a === b || seen.has(a + '>' + b)) continue;
      seen.add(a + '>' + b);
      out.get(a).push(b);
      pairs.push([a, b]);
    }
    const mark = new Map();
    const back = new Set();
    const order = [];
    const visit = (root) => {
      const stack = [[root, 0]];
      mark.set(root, 1);
      while (stack.length) {
        const top = stack[stack.length - 1];
        const [k, i] = top;
        const next = out.get(k);
        if (i < next.length) {
          top[1]++;
          const m = mark.get(next[i]);
          if (m === 1) back.add(k + '>' + next[i]);
          else if (!m) {
            mark.set(next[i], 1);
            stack.push([next[i], 0]);
          }
        } else {
          mark.set(k, 2);
          order.push(k);
          stack.pop();
        }
      }
    };
    const indeg = new Map(keys.map((k) => [k, 0]));
    for (const [, b] of pairs) indeg.set(b, indeg.get(b) + 1);
    for (const k of keys) if (indeg.get(k) === 0 && !mark.get(k)) visit(k);
    for (const k of keys) if (!mark.get(k)) visit(k);
    order.reverse(); // topological order of the DAG without back edges
    const layer = new Map(keys.map((k) => [k, 0]));
    for (const k of order) {
      for (const b of out.get(k)) {
        if (back.has(k + '>' + b)) continue;
        layer.set(b, Math.max(layer.get(b), layer.get(k) + 1));
      }
    }
    const layers = [];
    for (const k of keys) (layers[layer.get(k)] = layers[layer.get(k)] || []).push(k);
    const pos = new Map();
    const preds = new Map(keys.map((k) => [k, []]));
    for (const [a, b] of pairs) preds.get(b).push(a);
    layers.forEach((ks, li) => {
      if (li > 0) {
        const bary = (k) => {
          const ps = preds.get(k).filter((p) => layer.get(p) < li);
          return ps.length ? ps.reduce((t, p) => t + pos.get(p), 0) / ps.length : Infinity;
        };
        ks.sort((x, y) => bary(x) - bary(y) || (x < y ? -1 : 1));
      }
      ks.forEach((k, i) => pos.set(k, i));
    });
    return { layers, layer, pos, back, order };
  }

  function drawGraph(nodes, edges, secs) {
    const W = 170, H = 38, PAD = 24;
    const { layers, layer, pos, order } = layout(nodes, edges);
    const tall = Math.max(1, ...layers.filter(Boolean).map((l) => l.length));
    const multiNs = new Set([...nodes.values()].map((n) => n.ns)).size > 1;
    // Few layers: callers left of callees. Long chains or very tall layers would make a strip
    // thousands of pixels long: the deployments then go in a grid, in call order.
    const layered = layers.length <= 8 && tall <= 30;
    let xy, width, height, GX, GY;
    if (layered) {
      [GX, GY] = [110, 22];
      xy = (k) => {
        const li = layer.get(k), n = layers[li].length;
        const offset = ((tall - n) * (H + GY)) / 2;
        return [PAD + li * (W + GX), PAD + offset + pos.get(k) * (H + GY)];
      };
      width = PAD * 2 + layers.length * W + (layers.length - 1) * GX;
      height = PAD * 2 + tall * H + (tall - 1) * GY + 40;
    } else {
      [GX, GY] = [60, 46];
      const cols = Math.max(2, Math.min(8, Math.ceil(Math.sqrt(nodes.size * 1.5))));
      const index = new Map(order.map((k, i) => [k, i]));
      xy = (k) => {
        const i = index.get(k);
        return [PAD + (i % cols) * (W + GX), PAD + Math.floor(i / cols) * (H + GY)];
      };
      const rows = Math.ceil(nodes.size / cols);
      width = PAD * 2 + cols * W + (cols - 1) * GX;
      height = PAD * 2 + rows * H + (rows - 1) * GY;
    }
    const labels = layered || edges.length <= 40;
    const svg = s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `Topology: ${nodes.size} deployments, ${edges.length} edges` });
    svg.append(s('defs', null,
      ['secured', 'plain'].map((kind) => s('marker', { id: 'arrow-' + kind, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow-' + kind, style: `fill: var(${kind === 'secured' ? '--good' : '--bad'})` })))));
    const edgeLayer = s('g', { class: 'edges' });
    const nodeLayer = s('g', { class: 'nodes' });
    for (const e of edges) {
      const a = e.src_namespace + '/' + e.src, b = edgeDst(e);
      const [ax, ay] = xy(a), [bx, by] = xy(b);
      let d, mx, my;
      if (a === b) {
        d = `M${ax + W - 30},${ay} C${ax + W},${ay - 40} ${ax + W + 40},${ay + 10} ${ax + W},${ay + H / 2}`;
        [mx, my] = [ax + W + 14, ay - 12];
      } else if (!layered) {
        // Between the boxes' edges, bent a little so that A->B and B->A do not overlap.
        const [cx1, cy1, cx2, cy2] = [ax + W / 2, ay + H / 2, bx + W / 2, by + H / 2];
        const [dx, dy] = [cx2 - cx1, cy2 - cy1];
        const clip = (x, y, ux, uy) => {
          const t = Math.min(ux ? W / 2 / Math.abs(ux) : Infinity, uy ? H / 2 / Math.abs(uy) : Infinity);
          return [x + ux * t, y + uy * t];
        };
        const len = Math.hypot(dx, dy) || 1;
        const [sx, sy] = clip(cx1, cy1, dx / len, dy / len);
        const [tx, ty] = clip(cx2, cy2, -dx / len, -dy / len);
        const bend = Math.min(60, 0.15 * len);
        const [qx, qy] = [(sx + tx) / 2 - (dy / len) * bend, (sy + ty) / 2 + (dx / len) * bend];
        d = `M${sx},${sy} Q${qx},${qy} ${tx},${ty}`;
        [mx, my] = [(sx + 2 * qx + tx) / 4, (sy + 2 * qy + ty) / 4 - 3];
      } else if (layer.get(b) > layer.get(a)) {
        const [sx, sy, tx, ty] = [ax + W, ay + H / 2, bx, by + H / 2];
        const c = (tx - sx) / 2;
        d = `M${sx},${sy} C${sx + c},${sy} ${tx - c},${ty} ${tx},${ty}`;
        // Labels near the callee, where the fanned-out edges are apart.
        [mx, my] = [tx - GX / 2 + 8, ty - 6];
      } else {
        // Back or same-layer edge: bottom of the caller to the bottom of the callee, below.
        const [sx, sy, tx, ty] = [ax + W / 2, ay + H, bx + W / 2 + 12, by + H];
        const dip = Math.max(sy, ty) + 36;
        d = `M${sx},${sy} C${sx},${dip} ${tx},${dip} ${tx},${ty}`;
        [mx, my] = [(sx + tx) / 2, dip - 6];
      }
      const kind = e.secured ? 'secured' : 'plain';
      const g = s('g', { 'data-testid': 'topology-edge', 'data-key': edgeKey(e), 'data-src': e.src, 'data-dst': e.dst, 'data-secured': String(e.secured),
        'data-dst-cluster': e.dst_cluster || '', 'data-via-gateway': String(!!e.via_gateway) },
        s('title', null, edgeTitle(e, secs)),
        s('path', { d, class: 'edge ' + kind, 'marker-end': `url(#arrow-${kind})` }),
        labels ? s('text', { x: mx, y: my, 'text-anchor': 'middle', class: 'edge-label ' + kind }, edgeLabel(e, secs)) : null);
      edgeLayer.append(g);
    }
    for (const [k, n] of nodes) {
      const [x, y] = xy(k);
      const label = n.name.length > 22 ? n.name.slice(0, 21) + '…' : n.name;
      // A linked cluster's node has no page here.
      const a = s('a', { href: n.cluster ? null : link.deploy(n.ns, n.name), class: n.cluster ? 'node remote' : 'node', 'data-testid': 'topology-node',
        'data-name': n.name, 'data-namespace': n.ns, 'data-cluster': n.cluster || '' },
        s('title', null, `${n.ns}/${n.name}`),
        s('rect', { x, y, width: W, height: H, rx: 6 }),
        multiNs ? s('text', { x: x + 10, y: y + 13, class: 'ns' }, n.ns) : null,
        s('text', { x: x + 10, y: y + (multiNs ? 29 : 24) }, label));
      nodeLayer.append(a);
    }
    svg.append(edgeLayer, nodeLayer);
    return svg;
  }

  function edgeLabel(e, secs) {
    return `${fmt.rate(e.requests / secs)} rps${e.secured ? '' : ' · no mTLS'}`;
  }

  function updateGraph(box, edges, secs) {
    const byKey = new Map(edges.map((e) => [edgeKey(e), e]));
    for (const g of box.querySelectorAll('[data-testid="topology-edge"]')) {
      const e = byKey.get(g.dataset.key);
      if (!e) continue;
      const kind = e.secured ? 'secured' : 'plain';
      g.dataset.secured = String(e.secured);
      setText(g.querySelector('title'), edgeTitle(e, secs));
      const path = g.querySelector('path');
      path.setAttribute('class', 'edge ' + kind);
      path.setAttribute('marker-end', `url(#arrow-${kind})`);
      const text = g.querySelector('text');
      if (text) {
        text.setAttribute('class', 'edge-label ' + kind);
        setText(text, edgeLabel(e, secs));
      }
    }
  }

  // The edges as a table, sorted, filtered and paged by the server (/api/edges): the server sorts
  // by names (From, then To), requests and bytes.
  function edgesTable() {
    const st = { sort: 'requests', order: 'desc', filter: '', offset: 0, limit: 50 };
    const err = errorSlot();
    const cols = [
      { key: 'src', label: 'From', sort: 'name' },
      { key: 'dst', label: 'To' },
      { key: 'rps', label: 'RPS', num: true, sort: 'requests' },
      { key: 'bytes', label: 'Bytes/s', num: true, sort: 'bytes' },
      { key: 'mtls', label: 'mTLS' },
      { key: 'client_id', label: 'Client identity' },
      { key: 'server_id', label: 'Server identity' },
    ];
    const filter = filterBox({ placeholder: 'Filter by name or namespace', 'aria-label': 'Filter edges', 'data-testid': 'edge-filter' }, st, changed);
    const count = h('span', { class: 'count', 'data-testid': 'edge-count', role: 'status' }, '…');
    const { row: headRow, heads } = sortableHeads(cols, (c) => c.sort, (c) => {
      sortByField(st, c.sort);
      changed();
    });
    const tbody = h('tbody');
    const wrap = h('div', { class: 'table-wrap', 'data-testid': 'edge-table-wrap', 'data-state': 'loading' },
      h('table', null, h('caption', { class: 'sr-only' }, 'Edges between deployments'), h('thead', null, headRow), tbody));
    const prev = h('button', { type: 'button', 'aria-label': 'Previous page of edges', 'data-testid': 'edge-prev', onclick: () => go(st.offset - st.limit) }, '‹ Prev');
    const next = h('button', { type: 'button', 'aria-label': 'Next page of edges', 'data-testid': 'edge-next', onclick: () => go(st.offset + st.limit) }, 'Next ›');
    const pageLabel = h('span');
    const pager = h('div', { class: 'pager' }, prev, pageLabel, next);
    const node = h('div', { 'data-testid': 'topology-table' }, h('div', { class: 'toolbar' }, filter, count), err, wrap, pager);
    let total = 0;

    function go(offset) {
      st.offset = pageStart(offset, total, st.limit);
      changed();
    }

    function changed() {
      wrap.dataset.state = 'loading';
      section.reload();
    }

    async function load(signal) {
      const applied = { ...st };
      const data = await api('/api/edges', {
        window: currentWindow(), sort: applied.sort, order: applied.order, filter: applied.filter, offset: applied.offset, limit: applied.limit,
      }, signal);
      const edges = data.edges || [];
      total = data.total != null ? data.total : edges.length;
      if (edges.length === 0 && total > 0 && applied.offset >= total) {
        // Fewer edges than the page starts at (the filter or the window shrank): the last page.
        st.offset = pageStart(total - 1, total, st.limit);
        return load(signal);
      }
      render(edges, data.window_secs || 30, applied);
      wrap.dataset.state = 'ready';
      wrap.dataset.sort = applied.sort;
      wrap.dataset.order = applied.order;
      wrap.dataset.filter = applied.filter;
      wrap.dataset.offset = String(applied.offset);
      wrap.dataset.total = String(total);
    }

    function render(edges, secs, applied) {
      markSorted(heads, applied.sort, applied.order);
      setText(count, `${fmt.count(edges.length)} of ${fmt.count(total)} edges`);
      count.dataset.shown = String(edges.length);
      count.dataset.total = String(total);
      setText(pageLabel, `Page ${Math.floor(applied.offset / applied.limit) + 1} of ${Math.max(1, Math.ceil(total / applied.limit))}`);
      prev.disabled = applied.offset === 0;
      next.disabled = applied.offset + edges.length >= total;
      pager.hidden = total <= applied.limit;
      if (!edges.length) {
        emptyRow(tbody, cols.length, applied.filter ? `No edge matches “${applied.filter}”.` : 'No edges.');
        return;
      }
      reconcile(tbody, edges, edgeKey, (e) => h('tr', { 'data-testid': 'edge-row', 'data-src': e.src, 'data-dst': e.dst, 'data-src-namespace': e.src_namespace, 'data-dst-namespace': e.dst_namespace,
        'data-dst-cluster': e.dst_cluster || '', 'data-via-gateway': String(!!e.via_gateway) },
        h('td', { 'data-col': 'src' }, h('a', { href: link.deploy(e.src_namespace, e.src) }, `${e.src_namespace}/${e.src}`)),
        // A linked cluster's deployment has no page here.
        h('td', { 'data-col': 'dst' }, e.dst_cluster ? edgeDst(e) : h('a', { href: link.deploy(e.dst_namespace, e.dst) }, edgeDst(e))),
        h('td', { 'data-col': 'rps', class: 'num' }),
        h('td', { 'data-col': 'bytes', class: 'num' }),
        h('td', { 'data-col': 'mtls' }),
        h('td', { 'data-col': 'client_id' }),
        h('td', { 'data-col': 'server_id' })), (tr, e) => {
        const c = tr.children;
        tr.dataset.secured = String(e.secured);
        tr.dataset.requests = String(e.requests);
        setText(c[2], fmt.rate(e.requests / secs));
        setText(c[3], fmt.bytes(e.bytes / secs) + '/s');
        setText(c[4], e.secured ? '✔ yes' : '✘ no');
        c[4].className = e.secured ? 'secured-yes' : 'secured-no';
        setText(c[5], e.client_id || '-');
        setText(c[6], e.server_id || '-');
      });
    }

    const section = new Section(load, err);
    return { node, section };
  }

  // ---------------------------------------------------------------- deployments (one or all namespaces)

  function deploymentsView(ns, params) {
    const table = statTable({
      label: 'Deployments', testid: 'deployments', showNamespace: !ns,
      base: () => ({ kind: 'deployment', namespace: ns }),
      href: (r) => link.deploy(r.namespace, r.name), persist: params, limit: 50,
      empty: ns ? `No deployment in ${ns} reports metrics (is the namespace meshed?).` : 'No deployment reports metrics yet.',
    });
    const title = ns ? `Namespace ${ns}` : 'Deployments in all namespaces';
    const crumbs = ns ? [['Overview', '#/'], [ns, null]] : [['Overview', '#/'], ['Deployments', null]];
    const node = h('div', null, heading(title, crumbs), panel('Deployments', table.node));
    return { name: ns ? 'namespace' : 'deployments', title, node, sections: [table.section] };
  }

  // ---------------------------------------------------------------- deployment

  function deploymentView(ns, name) {
    const resource = 'deploy/' + name;
    // Golden metrics.
    const cardsErr = errorSlot();
    const card = (key, label) => h('div', { class: 'card', 'data-col': key }, h('div', { class: 'label' }, label), h('div', { class: 'value', 'data-testid': 'metric-' + key }, '…'));
    const cards = [
      card('success', 'Success'), card('rps', 'RPS'), card('p50', 'P50'), card('p95', 'P95'), card('p99', 'P99'),
      card('mtls', 'mTLS'), card('tcp', 'TCP conns'), card('read', 'Read/s'), card('write', 'Write/s'), card('meshed', 'Meshed pods'),
    ];
    const missing = h('p', { class: 'note', hidden: true, 'data-testid': 'deployment-missing' });
    const metrics = h('div', { class: 'cards', 'data-testid': 'deployment-metrics' }, cards);
    let metricsRendered = false;
    const metricsSection = new Section(async (signal) => {
      const data = await api('/api/stat', { kind: 'deployment', namespace: ns, filter: name, window: currentWindow() }, signal);
      const r = (data.rows || []).find((x) => x.name === name && x.namespace === ns);
      missing.hidden = !!r;
      setText(missing, r ? '' : `No proxy of ${ns}/${name} reports metrics: the deployment does not exist, is not meshed, or its proxies are not scraped yet.`);
      const v = r || { requests: 0, rps: 0 };
      const values = {
        success: fmt.pct(v.success_rate), rps: fmt.rps(v), p50: fmt.ms(v.latency_ms_p50), p95: fmt.ms(v.latency_ms_p95),
        p99: fmt.ms(v.latency_ms_p99), mtls: fmt.pct(v.mtls_rate), tcp: fmt.int(r ? v.tcp_connections : null),
        read: r ? fmt.bytes(v.read_bytes_per_sec) + '/s' : '-', write: r ? fmt.bytes(v.write_bytes_per_sec) + '/s' : '-',
        meshed: MESHED_COLUMN.text(v),
      };
      for (const c of cards) setText(c.querySelector('.value'), values[c.dataset.col]);
      metrics.querySelector('[data-testid="metric-meshed"]').classList.toggle('warn', !!MESHED_COLUMN.cls(v));
      if (!metricsRendered) {
        metricsRendered = true;
        firstRender('deployment');
      }
    }, cardsErr);

    // Pods: the deployment's own, from the server (the first POD_LIMIT by name).
    const pods = listTable({
      testid: 'pods', label: 'Pods', rowTestid: 'pod-row',
      columns: [{ key: 'name', label: 'Pod', text: (r) => r.name }, ...STAT_COLUMNS],
      key: (r) => r.name, attrs: (r) => ({ 'data-name': r.name }), fill: fillStatRow, noun: ['pod', 'pods'],
      empty: `No pod of ${ns}/${name} is known.`,
      fetch: (signal) => api('/api/stat', { kind: 'pod', namespace: ns, deployment: name, window: currentWindow(), limit: POD_LIMIT }, signal),
    });

    // Routes it calls and the authorization decisions of its servers (LINKERD-WIRE.md §5.3).
    const routes = listTable({
      testid: 'routes', label: 'Routes (outbound)', rowTestid: 'route-row', noun: ['route', 'routes'],
      columns: ROUTE_COLUMNS, key: (r) => r.parent + ' ' + r.route, fill: fillCells,
      attrs: (r) => ({ 'data-parent': r.parent, 'data-route': r.route }),
      empty: `${name} sent no request through an HTTP route in the window.`,
      fetch: (signal) => api('/api/routes', { namespace: ns, deployment: name, window: currentWindow() }, signal),
    });
    const authz = listTable({
      testid: 'authz', label: 'Authorization (inbound)', rowTestid: 'authz-row', noun: ['decision', 'decisions'],
      columns: AUTHZ_COLUMNS, key: (r) => [r.server, r.authorization, r.route].join(' '), fill: fillCells,
      attrs: (r) => ({ 'data-server': r.server, 'data-authorization': r.authorization, 'data-route': r.route }),
      empty: `No request to ${name} was authorized or denied in the window.`,
      fetch: (signal) => api('/api/authz', { namespace: ns, deployment: name, window: currentWindow() }, signal),
    });

    // Callers and destinations.
    const callers = statTable({
      label: 'Inbound callers', testid: 'callers', showNamespace: true, filterable: false, limit: 25, hidePagerWhenSmall: true,
      base: () => ({ kind: 'deployment', to: resource, to_namespace: ns }), href: (r) => link.deploy(r.namespace, r.name),
      empty: `Nothing called ${name} through a proxy in the window.`,
    });
    const destinations = statTable({
      label: 'Outbound destinations', testid: 'destinations', showNamespace: true, filterable: false, limit: 25, hidePagerWhenSmall: true,
      base: () => ({ kind: 'deployment', from: resource, from_namespace: ns }), href: (r) => link.deploy(r.namespace, r.name), clusters: true,
      empty: `${name} called no meshed destination in the window.`,
    });
    const tap = tapPanel({ fixed: { namespace: ns, resource }, cap: 100, compact: true });

    const node = h('div', null,
      heading(`Deployment ${name}`, [['Overview', '#/'], [ns, link.ns(ns)], [name, null]]),
      panel('Golden metrics (inbound)', cardsErr, missing, metrics),
      panel('Pods', pods.node),
      panel('Inbound callers', h('p', { class: 'note' }, `Deployments calling ${name}, from the callers’ outbound metrics.`), callers.node),
      panel('Outbound destinations', h('p', { class: 'note' }, `Deployments ${name} calls, from its outbound metrics.`), destinations.node),
      panel('Routes (outbound)', h('p', { class: 'note' }, `The HTTP routes ${name} called, per parent Service, after retries.`), routes.node),
      panel('Authorization (inbound)', h('p', { class: 'note' }, `Requests to ${name} allowed or denied, per server and authorization.`), authz.node),
      panel('Live tap', h('p', { class: 'note' }, 'Requests to and from this deployment as they complete. ',
        h('a', { href: `#/tap?namespace=${enc(ns)}&resource=${enc(resource)}` }, 'Open in the tap page')), tap.node));
    return {
      name: 'deployment', title: `${ns}/${name}`, node,
      sections: [metricsSection, pods.section, callers.section, destinations.section, routes.section, authz.section],
      destroy: () => tap.stop(),
    };
  }

  // ---------------------------------------------------------------- tap

  function tapView(params) {
    const tap = tapPanel({
      cap: TAP_CAP,
      initial: {
        namespace: params.get('namespace') || '', resource: params.get('resource') || '',
        method: params.get('method') || '', path: params.get('path') || '', authority: params.get('authority') || '',
      },
      autostart: params.has('resource') || params.has('namespace'),
    });
    const node = h('div', null, heading('Tap', [['Overview', '#/'], ['Tap', null]]),
      panel('Live requests', h('p', { class: 'note' }, `Each request as it completes, newest first (the last ${TAP_CAP} are kept).`), tap.node));
    return { name: 'tap', title: 'Tap', node, sections: [], destroy: () => tap.stop() };
  }

  // A tap: a form, start/stop and a table fed by GET /api/tap (newline-delimited JSON).
  function tapPanel(opts) {
    const cap = opts.cap || TAP_CAP;
    const init = opts.initial || {};
    const field = (name, label, attrs) => {
      const input = h('input', { type: 'text', name, value: init[name] || '', 'data-testid': 'tap-' + name, ...attrs });
      return [input, h('label', null, label, input)];
    };
    const [nsInput, nsLabel] = field('namespace', 'Namespace', { placeholder: 'all', size: 12 });
    const [resInput, resLabel] = field('resource', 'Resource', { placeholder: 'deploy/NAME', size: 16 });
    const method = h('select', { name: 'method', 'data-testid': 'tap-method' },
      ['', 'GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].map((m) => h('option', { value: m, selected: m === (init.method || '') }, m || 'any')));
    const [pathInput, pathLabel] = field('path', 'Path prefix', { placeholder: '/', size: 14 });
    const [authInput, authLabel] = field('authority', 'Authority', { placeholder: 'any', size: 14 });
    const maxRps = h('input', { type: 'number', name: 'max_rps', min: 1, max: 1000, value: 100, 'data-testid': 'tap-max-rps' });
    const start = h('button', { type: 'submit', class: 'primary', 'data-testid': 'tap-start' }, 'Start');
    const stopBtn = h('button', { type: 'button', 'data-testid': 'tap-stop', disabled: true, onclick: () => stop('stopped') }, 'Stop');
    const clear = h('button', { type: 'button', 'data-testid': 'tap-clear', onclick: () => { tbody.replaceChildren(); seen = 0; showCount(); } }, 'Clear');
    const form = h('form', { class: 'tap-form', 'aria-label': 'Tap filters' },
      opts.fixed ? null : [nsLabel, resLabel],
      h('label', null, 'Method', method), pathLabel, authLabel, h('label', null, 'Max RPS', maxRps),
      start, stopBtn, clear);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      begin();
    });
    const status = h('p', { class: 'tap-status', 'data-testid': 'tap-status', 'data-state': 'idle', role: 'status' }, 'Not running. Press Start.');
    const count = h('span', { class: 'muted', 'data-testid': 'tap-count' });
    const warnings = h('ul', { class: 'section-error', 'data-testid': 'tap-warnings', hidden: true });
    const cols = ['Time', 'Dir', 'Pod', 'Source', 'Destination', 'Method', 'Authority', 'Path', 'Status', 'Latency', 'Bytes', 'mTLS', 'Error'];
    const tbody = h('tbody');
    const table = h('div', { class: 'tap-table table-wrap' }, h('div', { class: 'scroll' },
      h('table', { 'data-testid': 'tap-table' }, h('caption', { class: 'sr-only' }, 'Tapped requests, newest first'),
        h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: ['Status', 'Latency', 'Bytes'].includes(c) ? 'num' : null }, c)))),
        tbody)));
    const node = h('div', { 'data-testid': 'tap' }, form, status, warnings, count, table);

    let ctl = null;
    let pending = [];
    let flushTimer = null;
    let seen = 0;

    function setStatus(st, text) {
      status.dataset.state = st;
      setText(status, text);
      const running = st === 'connecting' || st === 'streaming';
      start.disabled = running;
      stopBtn.disabled = !running;
    }

    function showCount() {
      setText(count, seen ? `${fmt.count(seen)} requests seen, ${fmt.count(tbody.children.length)} shown` : '');
    }

    function params() {
      const fixed = opts.fixed || {};
      if (!opts.fixed) replaceParams({ namespace: nsInput.value.trim(), resource: resInput.value.trim(), method: method.value, path: pathInput.value.trim(), authority: authInput.value.trim() });
      return {
        namespace: fixed.namespace != null ? fixed.namespace : nsInput.value.trim(),
        resource: fixed.resource != null ? fixed.resource : resInput.value.trim(),
        method: method.value, path: pathInput.value.trim(), authority: authInput.value.trim(),
        max_rps: maxRps.value || 100,
      };
    }

    async function begin() {
      stop(null);
      warnings.replaceChildren();
      warnings.hidden = true;
      const my = (ctl = new AbortController());
      setStatus('connecting', 'Connecting…');
      const url = '/api/tap' + query(params());
      let rsp;
      try {
        rsp = await fetch(url, { signal: my.signal, headers: { accept: 'application/x-ndjson' }, cache: 'no-store' });
      } catch (e) {
        if (!isAbort(e)) setStatus('error', `Cannot reach knit-control: ${e.message}`);
        return;
      }
      if (!rsp.ok) {
        let msg = null;
        try { msg = (await rsp.json()).error; } catch (_) { /* not JSON */ }
        if (my.signal.aborted) return;
        if (ctl === my) ctl = null;
        // 404 for the path itself (an older knit-control) versus 404 for a selection that
        // matches no workload.
        if (rsp.status === 404 && (!msg || /no such endpoint/i.test(msg))) {
          setStatus('unavailable', 'Tap is not available: this knit-control answers 404 for /api/tap (it has no tap support yet).');
        } else {
          setStatus('error', `Tap refused: ${msg || 'HTTP ' + rsp.status}`);
        }
        return;
      }
      setStatus('streaming', 'Streaming… waiting for requests.');
      try {
        const reader = rsp.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (line) onLine(line);
          }
        }
        if (buf.trim()) onLine(buf.trim());
        if (ctl === my) {
          ctl = null;
          flush();
          setStatus('stopped', 'The tap ended (knit-control closed the stream).');
        }
      } catch (e) {
        if (!isAbort(e) && ctl === my) {
          ctl = null;
          setStatus('error', `The tap broke off: ${e.message}`);
        }
      }
    }

    function onLine(line) {
      let ev;
      try { ev = JSON.parse(line); } catch (_) { return; }
      if (ev && ev.at == null && ev.method == null && ev.error) {
        // One proxy that cannot be tapped; the others go on.
        warnings.hidden = false;
        if (warnings.children.length < 20) warnings.append(h('li', null, ev.error));
        return;
      }
      pending.push(ev);
      if (pending.length > cap) pending.splice(0, pending.length - cap);
      seen++;
      if (!flushTimer) flushTimer = setTimeout(flush, 100);
    }

    // Adds the events received since the last flush on top, in one DOM update.
    function flush() {
      clearTimeout(flushTimer);
      flushTimer = null;
      if (!pending.length) return;
      const frag = document.createDocumentFragment();
      for (let i = pending.length - 1; i >= 0; i--) frag.append(tapRow(pending[i]));
      pending = [];
      tbody.prepend(frag);
      while (tbody.children.length > cap) tbody.lastChild.remove();
      if (status.dataset.state === 'streaming') setText(status, 'Streaming.');
      showCount();
      markUpdated();
    }

    function stop(why) {
      if (ctl) {
        ctl.abort();
        ctl = null;
      }
      flush();
      if (why) setStatus('stopped', 'Stopped.');
    }

    if (opts.autostart) setTimeout(begin, 0);
    return { node, stop: () => stop(null) };
  }

  function tapRow(ev) {
    const failed = (ev.status != null && ev.status >= 500) || !!ev.error || (ev.grpc_status != null && ev.grpc_status !== 0);
    const tls = ev.direction === 'outbound' ? ev.destination_identity : ev.source_identity;
    const statusText = ev.status == null ? '-' : String(ev.status) + (ev.grpc_status != null ? ` (grpc ${ev.grpc_status})` : '');
    return h('tr', { 'data-testid': 'tap-row', 'data-status': ev.status == null ? '' : ev.status, 'data-deployment': ev.deployment || '' },
      h('td', null, ev.at != null ? fmt.clockMs(ev.at) : '-'),
      h('td', null, ev.direction === 'inbound' ? 'in' : ev.direction === 'outbound' ? 'out' : ev.direction || '-'),
      h('td', { title: `${ev.namespace || ''}/${ev.deployment || ''}` }, ev.pod || ev.deployment || '-'),
      h('td', { title: ev.source_identity || '' }, ev.source || '-'),
      h('td', { title: ev.destination_identity || '' }, ev.destination || '-'),
      h('td', null, ev.method || '-'),
      h('td', null, ev.authority || '-'),
      h('td', { class: 'wrap', title: (ev.scheme ? ev.scheme + '://' : '') + (ev.authority || '') + (ev.path || '') }, ev.path || '-'),
      h('td', { class: 'num' + (failed ? ' bad' : ''), 'data-col': 'status' }, statusText),
      h('td', { class: 'num' }, fmt.ms(ev.latency_ms)),
      h('td', { class: 'num' }, ev.response_bytes == null ? '-' : fmt.bytes(ev.response_bytes)),
      h('td', { title: [ev.source_identity, ev.destination_identity].filter(Boolean).join(' → ') }, tls ? 'yes' : 'no'),
      h('td', { class: ev.error ? 'bad wrap' : 'wrap' }, ev.error || ''));
  }

  // ---------------------------------------------------------------- certificates

  // Every proxy's certificate, paged, sorted and filtered by the server; soonest expiry first.
  function certificatesView(params) {
    const st = {
      filter: params.get('filter') || '', expiring: params.get('expiring') === '1',
      sort: params.get('sort') === 'name' ? 'name' : 'expires_at', order: params.get('order') === 'desc' ? 'desc' : 'asc',
      col: params.get('sort') === 'name' ? 'namespace' : 'left', offset: 0, limit: 50,
    };
    const err = errorSlot();
    const filter = filterBox({ placeholder: 'Filter by name, namespace or identity', 'aria-label': 'Filter certificates', 'data-testid': 'filter' }, st, changed);
    const onlyExpiring = h('input', { type: 'checkbox', checked: st.expiring, 'data-testid': 'expiring-only' });
    onlyExpiring.addEventListener('change', () => { st.expiring = onlyExpiring.checked; st.offset = 0; changed(); });
    const count = h('span', { class: 'count', 'data-testid': 'count', role: 'status' }, '…');
    const summary = h('p', { class: 'note', 'data-testid': 'cert-summary' });
    // `sort`: what the server sorts by when the column's header is pressed.
    const cols = [
      { key: 'namespace', label: 'Namespace', sort: 'name' },
      { key: 'pod', label: 'Pod', sort: 'name' },
      { key: 'deployment', label: 'Deployment' },
      { key: 'identity', label: 'Identity' },
      { key: 'expires', label: 'Expires', sort: 'expires_at' },
      { key: 'left', label: 'Time left', num: true, sort: 'expires_at' },
    ];
    const { row: headRow, heads } = sortableHeads(cols, (c) => c.key, sortBy);
    const tbody = h('tbody');
    const wrap = h('div', { class: 'table-wrap', 'data-testid': 'certificates-wrap', 'data-state': 'loading' },
      h('table', { 'data-testid': 'certificates' }, h('caption', { class: 'sr-only' }, 'Certificates'), h('thead', null, headRow), tbody));
    const pageLabel = h('span', { 'data-testid': 'page' });
    const prev = h('button', { type: 'button', 'aria-label': 'Previous page', 'data-testid': 'page-prev', onclick: () => go(st.offset - st.limit) }, '‹ Prev');
    const next = h('button', { type: 'button', 'aria-label': 'Next page', 'data-testid': 'page-next', onclick: () => go(st.offset + st.limit) }, 'Next ›');
    const trust = trustPanel();
    const node = h('div', null,
      heading('Certificates', [['Overview', '#/'], ['Certificates', null]]),
      trust.node,
      panel('Proxy certificates',
        h('p', { class: 'note' }, 'Each proxy\u2019s identity and how long its certificate has left. Rows expiring within 6 hours are highlighted.'),
        summary,
        h('div', { class: 'toolbar' }, filter, h('label', null, onlyExpiring, ' expiring within 6h only'), count),
        err,
        wrap,
        h('div', { class: 'pager' }, prev, pageLabel, next)));
    let total = 0;

    function sortBy(c) {
      if (st.sort === c.sort) st.order = st.order === 'asc' ? 'desc' : 'asc';
      else { st.sort = c.sort; st.order = 'asc'; }
      st.col = c.key;
      st.offset = 0;
      changed();
    }

    function go(offset) {
      st.offset = pageStart(offset, total, st.limit);
      changed();
    }

    function changed() {
      replaceParams({
        filter: st.filter, expiring: st.expiring ? 1 : null,
        sort: st.sort === 'expires_at' ? null : st.sort, order: st.order === 'asc' ? null : st.order,
      });
      wrap.dataset.state = 'loading';
      section.reload();
    }

    async function load(signal) {
      const applied = { ...st };
      // The page, and how many of all the proxies expire within 6h (for the summary).
      const [data, soon] = await Promise.all([
        api('/api/certificates', {
          filter: applied.filter, expiring_within: applied.expiring ? '6h' : null,
          sort: applied.sort, order: applied.order, offset: applied.offset, limit: applied.limit,
        }, signal),
        api('/api/certificates', { expiring_within: '6h', limit: 0 }, signal),
      ]);
      const certs = data.certificates || [];
      total = data.total != null ? data.total : certs.length;
      if (certs.length === 0 && total > 0 && applied.offset >= total) {
        st.offset = pageStart(total - 1, total, st.limit);
        return load(signal);
      }
      const proxies = data.proxies != null ? data.proxies : total;
      setText(summary, `${fmt.count(proxies)} proxies · ${fmt.count(soon.total)} expiring within 6h · ${fmt.count(data.without_expiry || 0)} without a certificate reported`);
      summary.dataset.proxies = String(proxies);
      summary.dataset.expiring = String(soon.total);
      summary.dataset.withoutExpiry = String(data.without_expiry || 0);
      render(certs, applied, proxies);
      wrap.dataset.state = 'ready';
      wrap.dataset.sort = applied.sort;
      wrap.dataset.order = applied.order;
      wrap.dataset.filter = applied.filter;
      wrap.dataset.expiring = String(applied.expiring);
      wrap.dataset.offset = String(applied.offset);
      wrap.dataset.total = String(total);
    }

    function render(certs, applied, proxies) {
      const now = Date.now() / 1000;
      markSorted(heads, applied.col, applied.order);
      setText(count, `${fmt.count(certs.length)} of ${fmt.count(total)}`);
      count.dataset.shown = String(certs.length);
      count.dataset.total = String(total);
      setText(pageLabel, `Page ${Math.floor(applied.offset / applied.limit) + 1} of ${Math.max(1, Math.ceil(total / applied.limit))}`);
      prev.disabled = applied.offset === 0;
      next.disabled = applied.offset + certs.length >= total;
      if (!certs.length) {
        emptyRow(tbody, cols.length, proxies ? 'Nothing matches.' : 'No proxies are known.');
        return;
      }
      reconcile(tbody, certs, (c) => c.namespace + '/' + c.pod, (c) => h('tr', { 'data-testid': 'cert-row', 'data-pod': c.pod, 'data-namespace': c.namespace },
        h('td', { 'data-col': 'namespace' }, h('a', { href: link.ns(c.namespace) }, c.namespace)),
        h('td', { 'data-col': 'pod' }, c.pod),
        h('td', { 'data-col': 'deployment' }, h('a', { href: link.deploy(c.namespace, c.deployment) }, c.deployment)),
        h('td', { 'data-col': 'identity', class: 'wrap' }),
        h('td', { 'data-col': 'expires' }),
        h('td', { 'data-col': 'time-left', class: 'num' })), (tr, c) => {
        const left = c.expires_at == null ? null : c.expires_at - now;
        const soon = left != null && left < EXPIRING_SECS;
        tr.classList.toggle('expiring', soon && left > 0);
        tr.classList.toggle('expired', left != null && left <= 0);
        tr.dataset.expiring = String(soon);
        tr.dataset.expiresAt = c.expires_at == null ? '' : String(c.expires_at);
        tr.dataset.left = left == null ? '' : String(Math.round(left));
        setText(tr.children[3], c.identity || '- (not meshed)');
        setText(tr.children[4], c.expires_at == null ? '-' : fmt.date(c.expires_at));
        const cell = tr.children[5];
        const text = fmt.left(left);
        if (cell.firstChild == null || cell.firstChild.textContent !== text || !!cell.querySelector('.badge') !== soon) {
          cell.replaceChildren(text);
          if (soon) cell.append(h('span', { class: 'badge' }, left <= 0 ? 'expired' : 'expires soon'));
        }
      });
    }

    let rendered = false;
    const section = new Section(async (signal) => {
      await load(signal);
      if (!rendered) {
        rendered = true;
        firstRender('certificates');
      }
    }, err);
    return { name: 'certificates', title: 'Certificates', node, sections: [trust.section, section] };
  }

  // The issuer and the trust anchors (/api/identity): when they expire (highlighted 30 and 7 days
  // ahead, as the shipped alert rules fire), where an anchor rotation stands, and the proxies it
  // still waits for.
  function trustPanel() {
    const err = errorSlot();
    const step = h('p', { class: 'note', 'data-testid': 'rotation-step' });
    const cols = ['Certificate', 'SHA-256', 'Expires', 'Time left', 'Leaves'];
    const tbody = h('tbody');
    const wrap = h('div', { class: 'table-wrap', 'data-testid': 'trust-wrap', 'data-state': 'loading' },
      h('table', { 'data-testid': 'trust' }, h('caption', { class: 'sr-only' }, 'Issuer and trust anchors'),
        h('thead', null, h('tr', null, ...cols.map((c, i) => h('th', { scope: 'col', class: i >= 3 ? 'num' : null }, c)))), tbody));
    const behind = h('p', { class: 'note', 'data-testid': 'rotation-behind', hidden: true });
    const node = panel('Issuer and trust anchors',
      h('p', { class: 'note' }, 'Highlighted 30 days before expiry, and as critical 7 days before (as the identity alert rules fire).'),
      step, err, wrap, behind);

    async function load(signal) {
      const t = await api('/api/identity', {}, signal);
      const now = Date.now() / 1000;
      const rows = [{ key: 'issuer', kind: 'issuer', name: t.issuer.subject, notAfter: t.issuer.not_after }].concat(t.anchors.map((a) => (
        { key: 'anchor ' + a.sha256, kind: 'anchor', name: a.subject, sha256: a.sha256, notAfter: a.not_after, leaves: a.leaves, current: a.current })));
      reconcile(tbody, rows, (r) => r.key, (r) => h('tr', { 'data-testid': 'trust-row', 'data-kind': r.kind },
        h('td', { 'data-col': 'name', class: 'wrap' }),
        h('td', { 'data-col': 'sha256', class: 'mono' }),
        h('td', { 'data-col': 'expires' }),
        h('td', { 'data-col': 'time-left', class: 'num' }),
        h('td', { 'data-col': 'leaves', class: 'num' })), (tr, r) => {
        const left = r.notAfter - now;
        const level = left <= t.critical_secs ? 'critical' : left <= t.warn_secs ? 'warning' : 'ok';
        tr.classList.toggle('expiring', level === 'warning');
        tr.classList.toggle('expired', level === 'critical');
        tr.dataset.level = level;
        tr.dataset.subject = r.name;
        tr.dataset.notAfter = String(r.notAfter);
        tr.dataset.current = String(!!r.current);
        const label = r.kind === 'issuer' ? `Issuer ${r.name}` : `Trust anchor ${r.name}${r.current ? ' (the issuer\u2019s)' : ''}`;
        setText(tr.children[0], label);
        setText(tr.children[1], r.sha256 ? r.sha256.slice(0, 16) + '\u2026' : '-');
        tr.children[1].title = r.sha256 || '';
        setText(tr.children[2], fmt.date(r.notAfter));
        const text = fmt.left(left);
        const cell = tr.children[3];
        if (cell.firstChild == null || cell.firstChild.textContent !== text || (cell.querySelector('.badge') || {}).textContent !== badge(level, left)) {
          cell.replaceChildren(text);
          if (level !== 'ok') cell.append(h('span', { class: 'badge' }, badge(level, left)));
        }
        setText(tr.children[4], r.leaves == null ? '-' : fmt.count(r.leaves));
      });
      setText(step, t.describe);
      step.dataset.step = t.step;
      const l = t.leaves;
      behind.hidden = l.behind === 0 && l.complete;
      const waits = l.behind === 0 ? 'No proxy\u2019s leaf chains to an old anchor.'
        : `${fmt.count(l.behind)} of ${fmt.count(l.total)} proxy leaves still chain to an old anchor: ${l.behind_shown.map((b) => b.identity).join(', ')}${l.behind > l.behind_shown.length ? ' and more' : ''}.`;
      setText(behind, waits + (l.complete ? '' : ` knit-control started recently: leaves signed before it are unknown to it for ${l.complete_in}s more.`));
      behind.dataset.behind = String(l.behind);
      wrap.dataset.state = 'ready';
    }

    function badge(level, left) {
      return left <= 0 ? 'expired' : level === 'critical' ? 'expires within 7 days' : level === 'warning' ? 'expires within 30 days' : undefined;
    }

    return { node, section: new Section(load, err) };
  }

  function notFoundView() {
    return {
      name: 'not-found', title: 'Not found', sections: [],
      node: h('div', null, heading('Not found'), h('p', null, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.'))),
    };
  }

  route();
})();
