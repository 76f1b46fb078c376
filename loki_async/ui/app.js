// loki-async console: LogQL queries (sync or as tickets), the tenant's tickets with their
// progress, results as a log table or an SVG line chart. Vanilla JS, no external requests.
"use strict";

(() => {
  // The console is served at <base>/ui/; the API lives at <base>/ (a path prefix survives).
  const BASE = new URL("../", location.href);
  const QUERY_RANGE = "loki/api/v1/query_range";
  const TICKETS = "loki/api/v1/tickets";
  const HEADER_TENANT = "X-Scope-OrgID";
  const HEADER_ENCODING = "X-Loki-Response-Encoding-Flags";
  const TENANT_KEY = "loki-async.tenant";
  const POLL_RUNNING_MS = 1000;
  const POLL_IDLE_MS = 4000;
  const POLL_HIDDEN_MS = 15000;
  const MAX_LOG_ROWS = 5000;
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  const PALETTE = [
    "#2f6fde", "#e8590c", "#2f9e5b", "#c62f8f", "#7950f2",
    "#0c8599", "#d9a400", "#c62f2f", "#5c7cfa", "#66a80f",
  ];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  /** An element with attributes (class, dataset via data-*, text) and children. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...children);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------ HTTP

  class HTTPError extends Error {
    constructor(status, statusText, body) {
      super(`${status} ${statusText}${body ? "\n" + body.trim() : ""}`);
      this.status = status;
    }
  }

  /** A mistake in the form, shown as is. */
  class UserError extends Error {}

  function apiURL(path, params) {
    const url = new URL(path.replace(/^\//, ""), BASE);
    for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
    return url;
  }

  function requestHeaders() {
    const h = new Headers({ [HEADER_ENCODING]: "categorize-labels" });
    const tenant = $("tenant").value.trim();
    if (tenant) h.set(HEADER_TENANT, tenant);
    return h;
  }

  /** fetch with the tenant header; resolves {status, json, text}; non-2xx throws. */
  async function call(method, url) {
    const r = await fetch(url, { method, headers: requestHeaders(), cache: "no-store" });
    const text = await r.text();
    if (!r.ok) throw new HTTPError(r.status, r.statusText, text);
    const json = text && (r.headers.get("Content-Type") || "").includes("json")
      ? JSON.parse(text) : null;
    return { status: r.status, json, text };
  }

  // ------------------------------------------------------------------ messages

  function showError(err) {
    const box = $("error");
    box.textContent = err instanceof Error ? err.message : String(err);
    box.hidden = false;
    setStatus("");
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ------------------------------------------------------------------ time and numbers

  const pad = (n, w = 2) => String(n).padStart(w, "0");

  function localInput(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` +
      `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtTime(ms, withMs = false) {
    const d = new Date(ms);
    const s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
  }

  const msToNs = (ms) => (BigInt(Math.round(ms)) * 1000000n).toString();

  function fmtBytes(n) {
    if (n >= 1e9) return `${(n / 1e9).toFixed(1)} GB`;
    if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
    if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
    return `${n} B`;
  }

  function fmtNum(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return `${+(v / 1e9).toFixed(2)}G`;
    if (a >= 1e6) return `${+(v / 1e6).toFixed(2)}M`;
    if (a >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
    if (Number.isInteger(v)) return String(v);
    return String(+v.toPrecision(4));
  }

  function fmtSeconds(s) {
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }

  function fmtLabels(labels) {
    const inner = Object.entries(labels || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
    return `{${inner}}`;
  }

  // ------------------------------------------------------------------ the query form

  function onPresetChange() {
    const preset = $("range").value;
    if (preset === "custom") return;
    const end = Date.now();
    $("start").value = localInput(end - Number(preset) * 1000);
    $("end").value = localInput(end);
  }

  /** start and end in ns: a preset counts back from now, a custom range is local time. */
  function timeRange() {
    const preset = $("range").value;
    if (preset !== "custom") {
      const end = Date.now();
      return { start: msToNs(end - Number(preset) * 1000), end: msToNs(end) };
    }
    const start = Date.parse($("start").value);
    const end = $("end").value ? Date.parse($("end").value) : Date.now();
    if (Number.isNaN(start)) throw new UserError("Pick a start time for the custom range.");
    if (Number.isNaN(end)) throw new UserError("The end time is not a valid date.");
    if (end <= start) throw new UserError("The end of the range must be after its start.");
    return { start: msToNs(start), end: msToNs(end) };
  }

  function queryParams() {
    const query = $("logql").value.trim();
    if (!query) throw new UserError("Enter a LogQL query.");
    const params = { query, ...timeRange() };
    const step = $("step").value.trim();
    if (step) params.step = step;
    const limit = $("limit").value.trim();
    if (limit) params.limit = limit;
    return params;
  }

  // A newer submission wins over a slower older one.
  let generation = 0;
  // The ticket submitted from this page whose result shows once it is done.
  let autoShow = null;

  function setBusy(busy) {
    $("submit-sync").disabled = busy;
    $("submit-async").disabled = busy;
  }

  async function runSync() {
    clearError();
    const gen = ++generation;
    autoShow = null;
    let url;
    try {
      url = apiURL(QUERY_RANGE, queryParams());
      setBusy(true);
      setStatus("Running…");
      const t0 = performance.now();
      const { json } = await call("GET", url);
      if (gen !== generation) return;
      const took = (performance.now() - t0) / 1000;
      setStatus(`Done in ${fmtSeconds(took)}.`);
      showResult(json, { source: "sync query", raw: url });
    } catch (err) {
      if (gen === generation) showError(err);
    } finally {
      if (gen === generation) setBusy(false);
    }
  }

  async function runAsync() {
    clearError();
    const gen = ++generation;
    try {
      const url = apiURL(QUERY_RANGE, { ...queryParams(), async: "true" });
      setBusy(true);
      const { status, json } = await call("GET", url);
      if (status === 202) {
        const id = json.data.ticket;
        autoShow = id;
        setStatus(`Ticket ${id.slice(0, 8)}… submitted.`);
      } else if (gen === generation) {
        setStatus("The query finished at once.");
        showResult(json, { source: "async query", raw: url });
      }
      refreshTickets();
    } catch (err) {
      if (gen === generation) showError(err);
    } finally {
      if (gen === generation) setBusy(false);
    }
  }

  // ------------------------------------------------------------------ tickets

  const rows = new Map(); // ticket id → <li>
  let pollTimer = 0;
  let inflight = null;
  let again = false;
  let anyRunning = false;

  /** Reload the list now; one request at a time, then the next poll is scheduled. */
  function refreshTickets() {
    if (inflight) {
      again = true;
      return;
    }
    clearTimeout(pollTimer);
    inflight = loadTickets().finally(() => {
      inflight = null;
      if (again) {
        again = false;
        refreshTickets();
        return;
      }
      const ms = document.hidden ? POLL_HIDDEN_MS : anyRunning ? POLL_RUNNING_MS : POLL_IDLE_MS;
      pollTimer = setTimeout(refreshTickets, ms);
    });
  }

  async function loadTickets() {
    const note = $("tickets-note");
    const tenant = $("tenant").value.trim();
    try {
      const { json } = await call("GET", apiURL(TICKETS));
      if (tenant !== $("tenant").value.trim()) return; // the next load lists the new tenant's
      note.textContent = "";
      renderTickets(json.data || []);
    } catch (err) {
      note.textContent = `(cannot list: ${err.message.split("\n").join(": ")})`;
      anyRunning = false;
    }
  }

  function renderTickets(statuses) {
    const list = $("tickets");
    const seen = new Set();
    anyRunning = false;
    statuses.forEach((st, i) => {
      seen.add(st.ticket);
      let li = rows.get(st.ticket);
      if (!li) {
        li = ticketRow(st.ticket);
        rows.set(st.ticket, li);
      }
      updateRow(li, st);
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
      anyRunning = anyRunning || st.is_running;
      if (st.ticket === autoShow && !st.is_running) {
        autoShow = null;
        if (st.state === "done") showTicket(st.ticket);
        else if (st.state === "failed") showError(st.error ? st.error.error : "query failed");
      }
    });
    for (const [id, li] of rows) {
      if (!seen.has(id)) {
        li.remove();
        rows.delete(id);
      }
    }
    $("tickets-empty").hidden = statuses.length > 0;
  }

  function ticketRow(id) {
    const progress = el("div", {
      class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-label": "splits finished", "data-testid": "progress",
    },
    el("span", { class: "bar-done" }), el("span", { class: "bar-skipped" }),
    el("span", { class: "bar-unneeded" }));
    const url = apiURL(`${TICKETS}/${id}`).href;
    return el("li", { class: "ticket", "data-ticket": id, "data-testid": "ticket" },
      el("div", { class: "ticket-main" },
        el("div", { class: "ticket-query" },
          el("span", { class: "badge", "data-testid": "state" }), el("code")),
        el("div", { class: "ticket-progress" },
          progress, el("span", { class: "progress-text", "data-testid": "progress-text" })),
        el("div", { class: "ticket-meta" })),
      el("div", { class: "ticket-actions" },
        el("button", { type: "button", class: "show", "data-action": "show", text: "Show result" }),
        el("button", { type: "button", class: "stop", "data-action": "stop", text: "Stop",
          title: "Stop running: what is done becomes the result" }),
        el("button", { type: "button", class: "cancel danger", "data-action": "cancel",
          text: "Cancel", title: "Cancel the query and delete the ticket" }),
        el("a", { class: "raw", href: url, target: "_blank", rel: "noopener", "data-raw": "",
          text: "raw JSON" })),
      el("div", { class: "ticket-error", hidden: true }));
  }

  /** Finished splits in percent. Skipped splits need no work, so they count as finished;
   * a log query that met its limit leaves splits unread ("not needed"). */
  function progressOf(st) {
    const p = st.progress || {};
    const total = p.splits_total || 0;
    const done = p.splits_done || 0;
    const skipped = p.splits_skipped || 0;
    const complete = st.state === "done" && !st.is_partial;
    const unneeded = complete ? Math.max(total - done - skipped, 0) : 0;
    let pct = total ? Math.floor((100 * (done + skipped + unneeded)) / total) : complete ? 100 : 0;
    pct = Math.min(pct, 100);
    const share = (n) => (total ? `${(100 * n) / total}%` : "0%");
    return { total, done, skipped, unneeded, pct, share, p };
  }

  function updateRow(li, st) {
    li.dataset.state = st.state;
    const badge = li.querySelector(".badge");
    badge.textContent = st.state;
    badge.className = `badge state-${st.state}`;
    const code = li.querySelector(".ticket-query code");
    code.textContent = st.query;
    li.querySelector(".ticket-query").title = st.query;

    const { total, done, skipped, unneeded, pct, share, p } = progressOf(st);
    const bar = li.querySelector(".progress");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.dataset.percent = String(pct);
    bar.title = `${pct}%`;
    li.querySelector(".bar-done").style.width = share(done);
    li.querySelector(".bar-skipped").style.width = share(skipped);
    li.querySelector(".bar-unneeded").style.width = share(unneeded);
    const parts = [`${done}/${total} splits`];
    const plugins = Object.entries(p.coprocessors || {})
      .filter(([, c]) => c.skipped).map(([name]) => name);
    if (skipped) parts.push(`${skipped} skipped${plugins.length ? ` by ${plugins.join(", ")}` : ""}`);
    if (p.splits_cached) parts.push(`${p.splits_cached} cached`);
    if (unneeded) parts.push(`${unneeded} not needed`);
    parts.push(fmtBytes((st.stats || {}).bytes_processed || 0));
    li.querySelector(".progress-text").textContent = `${pct}% · ${parts.join(" · ")}`;

    const stats = st.stats || {};
    const meta = [`${st.ticket.slice(0, 8)}…`];
    if (st.created) meta.push(`created ${fmtTime(Date.parse(st.created))}`);
    if (stats.queue_time_s) meta.push(`queued ${fmtSeconds(stats.queue_time_s)}`);
    if (stats.exec_time_s) meta.push(`ran ${fmtSeconds(stats.exec_time_s)}`);
    if (st.is_partial && !st.is_running) meta.push("partial result");
    li.querySelector(".ticket-meta").textContent = meta.join(" · ");

    li.querySelector(".stop").disabled = !st.is_running;
    li.querySelector(".show").disabled = st.state === "cancelled" || st.state === "failed";
    const error = li.querySelector(".ticket-error");
    error.hidden = !st.error;
    error.textContent = st.error ? `${st.error.status}: ${st.error.error}` : "";
  }

  async function showTicket(id) {
    clearError();
    const gen = ++generation;
    const url = apiURL(`${TICKETS}/${id}`);
    try {
      const r = await call("GET", url);
      if (gen !== generation) return;
      if (r.status === 200) {
        showResult(r.json, { source: `ticket ${id.slice(0, 8)}…`, raw: url });
        return;
      }
      // 204: still running; show the merge of the splits finished so far.
      const partial = await call("GET", apiURL(`${TICKETS}/${id}/partial`));
      if (gen !== generation) return;
      setStatus("The ticket is still running: showing the splits finished so far.");
      showResult(partial.json, { source: `ticket ${id.slice(0, 8)}… (running)`, raw: url });
    } catch (err) {
      if (gen === generation) showError(err);
    }
  }

  async function ticketAction(action, id, li) {
    clearError();
    try {
      if (action === "show") {
        await showTicket(id);
      } else if (action === "stop") {
        await call("POST", apiURL(`${TICKETS}/${id}/stop`));
        setStatus(`Ticket ${id.slice(0, 8)}… stopped.`);
      } else if (action === "cancel") {
        await call("DELETE", apiURL(`${TICKETS}/${id}`));
        li.remove();
        rows.delete(id);
        if (autoShow === id) autoShow = null;
        $("tickets-empty").hidden = rows.size > 0;
        setStatus(`Ticket ${id.slice(0, 8)}… cancelled.`);
      }
    } catch (err) {
      showError(err);
    }
    refreshTickets();
  }

  // ------------------------------------------------------------------ results

  let lastResult = null;

  function showResult(doc, { source, raw }) {
    lastResult = { doc, source, raw };
    const data = (doc && doc.data) || {};
    const result = data.result || [];
    $("results-panel").hidden = false;
    $("raw-link").href = raw.href;
    $("chart").replaceChildren();
    $("legend").replaceChildren();
    $("logs").hidden = true;
    $("scalar").hidden = true;

    const meta = [source, data.resultType];
    if (data.resultType === "streams") {
      const n = renderLogs(result);
      meta.push(`${n} entries`, `${result.length} streams`);
    } else if (data.resultType === "matrix" || data.resultType === "vector") {
      const series = data.resultType === "matrix"
        ? result.map((s) => ({ labels: s.metric, points: s.values }))
        : result.map((s) => ({ labels: s.metric, points: [s.value] }));
      renderChart(series);
      meta.push(`${result.length} series`);
    } else if (data.resultType === "scalar" || data.resultType === "string") {
      $("scalar").textContent = `${result[1]} at ${fmtTime(result[0] * 1000)}`;
      $("scalar").hidden = false;
    }
    if (doc && doc.is_partial) meta.push("partial");
    const summary = (data.stats || {}).summary;
    if (summary) {
      meta.push(`${fmtBytes(summary.totalBytesProcessed || 0)} processed`);
      if (summary.execTime) meta.push(`exec ${fmtSeconds(summary.execTime)}`);
    }
    $("result-meta").textContent = meta.filter(Boolean).join(" · ");
  }

  function chips(cell, labels, kind) {
    const names = Object.keys(labels || {}).sort();
    for (const k of names) {
      cell.append(el("span", { class: kind ? `chip ${kind}` : "chip", title: kind || "stream label",
        text: `${k}=${labels[k]}` }));
    }
  }

  /** Every entry of every stream, newest first. */
  function renderLogs(streams) {
    const entries = [];
    for (const s of streams) {
      for (const v of s.values || []) entries.push({ ns: BigInt(v[0]), v, stream: s.stream });
    }
    entries.sort((a, b) => (a.ns < b.ns ? 1 : a.ns > b.ns ? -1 : 0));
    const body = $("logs").tBodies[0];
    const trs = entries.slice(0, MAX_LOG_ROWS).map(({ ns, v, stream }) => {
      const labels = el("td", { class: "labels" });
      chips(labels, stream);
      const cats = v[2] || {};
      chips(labels, cats.structuredMetadata, "meta");
      chips(labels, cats.parsed, "parsed");
      return el("tr", { "data-ts": ns.toString() },
        el("td", { class: "ts", title: `${ns} ns` , text: fmtTime(Number(ns / 1000000n), true) }),
        el("td", { class: "line", text: v[1] }),
        labels);
    });
    body.replaceChildren(...trs);
    $("logs").hidden = false;
    return entries.length;
  }

  // ------------------------------------------------------------------ the chart

  const TIME_STEPS_MS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800, 1209600, 2592000].map((s) => s * 1000);

  function niceStep(span, ticks) {
    const raw = span / ticks;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  }

  /** Ticks at least a label's width apart ("11-05" is narrower than "11-05 14:00"). */
  function timeTicks(min, max, width) {
    const span = max - min;
    const room = (s) => (s >= 86400000 ? 50 : span >= 86400000 ? 85 : 55);
    const step = TIME_STEPS_MS.find((s) => (span / s) * room(s) <= width) || TIME_STEPS_MS.at(-1);
    // Align to local time, so that day ticks fall on local midnight.
    const off = -new Date(min).getTimezoneOffset() * 60000;
    const ticks = [];
    for (let t = Math.ceil((min + off) / step) * step - off; t <= max; t += step) ticks.push(t);
    const d2 = (t) => { const d = new Date(t); return `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`; };
    const hm = (t) => { const d = new Date(t); return `${pad(d.getHours())}:${pad(d.getMinutes())}`; };
    const label = step >= 86400000 ? d2
      : span >= 86400000 ? (t) => `${d2(t)} ${hm(t)}`
        : step < 60000 ? (t) => `${hm(t)}:${pad(new Date(t).getSeconds())}` : hm;
    return ticks.map((t) => [t, label(t)]);
  }

  /** One line per series; a gap where a step has no point. Points are [seconds, "value"]. */
  function renderChart(input) {
    const box = $("chart");
    const series = input.map((s, i) => ({
      name: fmtLabels(s.labels),
      color: PALETTE[i % PALETTE.length],
      points: s.points.map(([t, v]) => [t * 1000, Number(v)]).filter(([, v]) => Number.isFinite(v)),
    }));
    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      box.append(el("p", { class: "muted", text: "No data points in this range." }));
      return;
    }
    // The step: the smallest distance between two points of one series.
    let step = Infinity;
    for (const s of series) {
      for (let i = 1; i < s.points.length; i++) step = Math.min(step, s.points[i][0] - s.points[i - 1][0]);
    }
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    if (x0 === x1) [x0, x1] = [x0 - 60000, x1 + 60000];
    let y0 = Math.min(0, ...all.map((p) => p[1]));
    let y1 = Math.max(...all.map((p) => p[1]));
    if (y0 === y1) y1 = y0 + 1;
    const yStep = niceStep(y1 - y0, 5);
    y0 = Math.floor(y0 / yStep) * yStep;
    y1 = Math.ceil(y1 / yStep) * yStep;

    const W = Math.max(box.clientWidth, 480);
    const H = 300;
    const m = { l: 56, r: 18, t: 12, b: 30 };
    const x = (t) => m.l + ((t - x0) / (x1 - x0)) * (W - m.l - m.r);
    const y = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);

    const root = svg("svg", {
      class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `line chart of ${series.length} series`, "data-testid": "chart-svg",
    });
    const grid = svg("g", { class: "grid" });
    const axes = svg("g", { class: "axis" });
    for (let v = y0; v <= y1 + yStep / 2; v += yStep) {
      grid.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      axes.append(svg("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v)));
    }
    for (const [t, label] of timeTicks(x0, x1, W - m.l - m.r)) {
      grid.append(svg("line", { x1: x(t), x2: x(t), y1: m.t, y2: H - m.b }));
      axes.append(svg("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }));
      axes.append(svg("text", { x: x(t), y: H - m.b + 17, "text-anchor": "middle" }, label));
    }
    axes.append(svg("path", { d: `M${m.l},${m.t}V${H - m.b}H${W - m.r}`, fill: "none" }));
    root.append(grid, axes);

    const lines = svg("g", { class: "lines" });
    for (const s of series) {
      let d = "";
      s.points.forEach(([t, v], i) => {
        const gap = i === 0 || t - s.points[i - 1][0] > step * 1.5;
        d += `${gap ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        // A lone point is a dot (round caps on a zero-length segment).
        const next = s.points[i + 1];
        if (gap && (!next || next[0] - t > step * 1.5)) d += "h0";
      });
      lines.append(svg("path", { class: "series", d, stroke: s.color, "data-series": s.name }));
    }
    root.append(lines);
    const cursor = svg("line", { class: "cursor", y1: m.t, y2: H - m.b, visibility: "hidden" });
    root.append(cursor);
    box.append(root);

    for (const s of series) {
      $("legend").append(el("li", { "data-testid": "legend-item" },
        el("span", { class: "swatch", style: `background:${s.color}` }), s.name));
    }
    hover(root, cursor, series, { x, W, m, x0, x1 });
  }

  /** The values of every series at the time under the mouse. */
  function hover(root, cursor, series, { x, W, m, x0, x1 }) {
    const box = $("chart");
    const tip = el("div", { class: "tooltip", hidden: true });
    box.append(tip);
    const times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const byTime = series.map((s) => new Map(s.points));
    root.addEventListener("mousemove", (ev) => {
      const rect = root.getBoundingClientRect();
      const px = ((ev.clientX - rect.left) * W) / rect.width;
      if (px < m.l || px > W - m.r) {
        root.dispatchEvent(new Event("mouseleave"));
        return;
      }
      const t = x0 + ((px - m.l) / (W - m.l - m.r)) * (x1 - x0);
      let lo = 0;
      let hi = times.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (times[mid] < t) lo = mid + 1; else hi = mid;
      }
      const at = lo > 0 && t - times[lo - 1] < times[lo] - t ? times[lo - 1] : times[lo];
      cursor.setAttribute("x1", x(at));
      cursor.setAttribute("x2", x(at));
      cursor.setAttribute("visibility", "visible");
      const items = series.map((s, i) => [s, byTime[i].get(at)]).filter(([, v]) => v !== undefined)
        .sort((a, b) => b[1] - a[1]).slice(0, 12);
      tip.replaceChildren(el("div", { text: fmtTime(at) }), ...items.map(([s, v]) =>
        el("div", {}, el("i", { style: `background:${s.color}` }), `${fmtNum(v)}  ${s.name}`)));
      tip.hidden = false;
      const left = ev.clientX - box.getBoundingClientRect().left + 14;
      tip.style.left = `${Math.min(left, box.clientWidth - tip.offsetWidth - 4)}px`;
      tip.style.top = `${ev.clientY - box.getBoundingClientRect().top + 12}px`;
    });
    root.addEventListener("mouseleave", () => {
      cursor.setAttribute("visibility", "hidden");
      tip.hidden = true;
    });
  }

  // ------------------------------------------------------------------ wiring

  /** Raw JSON links: fetched with the tenant header, shown in a new tab. */
  async function openRaw(ev) {
    const a = ev.target.closest("a[data-raw], #raw-link");
    if (!a || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    const win = window.open("about:blank", "_blank");
    try {
      const r = await fetch(a.href, { headers: requestHeaders(), cache: "no-store" });
      const text = await r.text();
      const type = r.status === 204 ? "text/plain" : r.headers.get("Content-Type") || "text/plain";
      const body = r.status === 204 ? "204 No Content: the query is still running" : text;
      const url = URL.createObjectURL(new Blob([body], { type }));
      if (win) win.location.href = url; else location.href = url;
    } catch (err) {
      if (win) win.close();
      showError(err);
    }
  }

  function init() {
    const tenant = $("tenant");
    tenant.value = localStorage.getItem(TENANT_KEY) || "";
    tenant.addEventListener("change", () => {
      localStorage.setItem(TENANT_KEY, tenant.value.trim());
      for (const li of rows.values()) li.remove();
      rows.clear();
      refreshTickets();
    });
    $("range").addEventListener("change", onPresetChange);
    for (const id of ["start", "end"]) {
      $(id).addEventListener("input", () => { $("range").value = "custom"; });
    }
    onPresetChange();
    $("query-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      runSync();
    });
    $("logql").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        runSync();
      }
    });
    $("submit-async").addEventListener("click", runAsync);
    $("tickets").addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (!button) return;
      const li = button.closest(".ticket");
      ticketAction(button.dataset.action, li.dataset.ticket, li);
    });
    document.addEventListener("click", openRaw);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshTickets();
    });
    let resize = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => { if (lastResult) showResult(lastResult.doc, lastResult); }, 200);
    });
    refreshTickets();
  }

  init();
})();
