// The marketer dashboard: plain JavaScript over the query service's read API (docs/dashboard.md).
//
// * The read key lives in sessionStorage (gone with the tab) and travels only as a Bearer header; never in
//   a URL, so it cannot leak through history, logs or Referer.
// * Every value from the API reaches the page through textContent or plotly, never innerHTML: ids,
//   touchpoints and channels are whatever customers' events said.
// * Each view refreshes itself every POLL_MS while the tab is visible; a refresh never overlaps another.
"use strict";

(function () {
  const KEY_SLOT = "journeys.readKey";
  const POLL_MS = 5000;
  const STALE_SECONDS = 15 * 60;
  const VIEWS = ["journey", "flow", "compare", "customer"];
  const COLORS = { forward: "rgba(36,87,197,0.45)", dropped: "rgba(198,40,40,0.45)", progress: "rgba(107,114,128,0.35)",
    regression: "rgba(245,158,11,0.7)", skip: "rgba(124,58,237,0.6)" };
  const SENTIMENT_COLORS = { positive: "#1a7f37", neutral: "#6b7280", negative: "#c62828", "": "#2457c5" };
  const PLOT_CONFIG = { responsive: true, displaylogo: false };

  const $ = (id) => document.getElementById(id);
  const state = { key: null, view: "journey", maps: [], segments: [], customer: null, busy: false, again: false, timer: null,
    kpis: null, daily: null, compare: null, journey: null, rebuilding: null, polling: false };

  // ---------- small DOM helpers (text only) ----------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "testid") node.dataset.testid = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const pct = (x) => (x === null || x === undefined ? "—" : (x * 100).toFixed(1) + "%");
  const num = (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en"));
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 90) return seconds.toFixed(0) + " s";
    if (seconds < 5400) return (seconds / 60).toFixed(0) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }
  const iso = (d) => d.toISOString().slice(0, 10);
  const segLabel = (s) => (s === null ? "All customers" : s);
  const segKey = (s) => (s === null ? "all" : s);

  // ---------- the API ----------
  class ApiError extends Error {
    constructor(status, reason, retryAfter) { super(reason); this.status = status; this.retryAfter = retryAfter; }
  }

  async function api(path, params, asBlob) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    const headers = { Authorization: "Bearer " + state.key };
    if (state.polling) headers["X-Journeys-Poll"] = "1"; // the service logs the 5-second refreshes at DEBUG only
    const response = await fetch(url, { headers, cache: "no-store" });
    if (!response.ok) {
      let reason = response.statusText;
      try { const body = await response.json(); reason = body.errors.map((e) => e.field + ": " + e.reason).join("; "); } catch (_) { /* not our JSON */ }
      if (response.status === 401 || response.status === 403) signOut("The key was refused — " + reason);
      throw new ApiError(response.status, reason, response.headers.get("Retry-After"));
    }
    return asBlob ? response.blob() : response.json();
  }

  function kpiParams(extra) {
    return { map: $("map").value, segment: $("segment").value, from: $("from").value, to: $("to").value, ...extra };
  }

  // ---------- sign in / out ----------
  async function signIn(key) {
    state.key = key;
    try {
      await api("/v1/stats");
    } catch (err) {
      if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) signOut("Could not check the key: " + err.message);
      return false;
    }
    sessionStorage.setItem(KEY_SLOT, key);
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    $("signin-error").textContent = "";
    await loadDefinitions();
    route();
    if (state.timer === null) state.timer = setInterval(() => { if (!document.hidden) poll(); }, POLL_MS);
    return true;
  }

  async function poll() {
    state.polling = true;
    try { await refresh(); } finally { state.polling = false; }
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_SLOT);
    state.key = null;
    if (state.timer !== null) { clearInterval(state.timer); state.timer = null; }
    $("app").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("freshness").textContent = "Pipeline freshness: —";
    $("signin-error").textContent = message || "";
    $("key").value = "";
    $("key").focus();
  }

  async function loadDefinitions() {
    const [maps, segments] = await Promise.all([api("/v1/maps"), api("/v1/segments")]);
    state.maps = maps.items.map((m) => m.name);
    state.segments = segments.items.map((s) => s.name);
    fillSelect($("map"), state.maps.map((m) => [m, m]), $("map").value);
    fillSelect($("segment"), [["", "All customers"], ...state.segments.map((s) => [s, s])], $("segment").value);
    if (!$("to").value) {
      const today = new Date();
      $("to").value = iso(today);
      $("from").value = iso(new Date(today.getTime() - 29 * 86400000));
    }
  }

  function fillSelect(select, options, keep) {
    select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
    if (options.some(([v]) => v === keep)) select.value = keep;
  }

  // ---------- routing and refresh ----------
  function route() {
    const wanted = location.hash.replace("#", "");
    state.view = VIEWS.includes(wanted) ? wanted : "journey";
    for (const v of VIEWS) $("view-" + v).hidden = v !== state.view;
    for (const a of document.querySelectorAll(".views a")) {
      if (a.dataset.view === state.view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    // Comparison always shows every segment; the customer view needs no segment.
    $("segment-label").hidden = state.view === "compare" || state.view === "customer";
    refresh();
  }

  async function refresh() {
    if (!state.key) return;
    // One refresh at a time; a change made meanwhile (segment, dates…) runs right after, never lost.
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    try {
      await Promise.all([refreshFreshness(), refreshView()]);
    } finally {
      state.busy = false;
    }
    if (state.again) { state.again = false; refresh(); }
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").classList.toggle("error", !!isError);
  }

  // While newer map or segment versions are being computed the API answers for the previous ones: say so.
  function noteKpis(kpis) {
    state.rebuilding = kpis.rebuilding
      ? "showing map version " + kpis.map.version + " while new map or segment versions are computed" +
        (kpis.rebuilding.since ? " (since " + new Date(kpis.rebuilding.since).toLocaleTimeString("en-GB") + ")" : "")
      : null;
    return kpis;
  }

  async function refreshView() {
    state.rebuilding = null;
    if (!$("map").value && state.view !== "customer") {
      setStatus("This project has no journey map yet: apply one (docs/maps.md) and it shows here.", false);
      return;
    }
    try {
      if (state.view === "journey") await showJourney();
      else if (state.view === "flow") await showFlow();
      else if (state.view === "compare") await showCompare();
      else await showCustomer();
      setStatus("Updated " + new Date().toLocaleTimeString("en-GB") + " · refreshes every " + POLL_MS / 1000 + " s" +
        (state.rebuilding ? " · " + state.rebuilding : ""), false);
    } catch (err) {
      if (!state.key) return;
      if (err instanceof ApiError && err.status === 503) setStatus("KPIs for this map or segment are being computed; retrying…", false);
      else setStatus("Could not load: " + err.message, true);
    }
  }

  async function refreshFreshness() {
    try {
      const stats = await api("/v1/stats");
      const node = $("freshness");
      if (!stats.newest_event_at) {
        node.textContent = "Pipeline freshness: no events yet";
        node.classList.remove("stale");
        return;
      }
      const age = Math.max(0, (Date.now() - Date.parse(stats.newest_event_at)) / 1000);
      const received = stats.newest_received_at ? Math.max(0, (Date.now() - Date.parse(stats.newest_received_at)) / 1000) : null;
      node.textContent = "Newest event " + duration(age) + " ago" + (received === null ? "" : " · last received " + duration(received) + " ago") +
        " · " + num(stats.events) + " events";
      node.dataset.newestEventAt = stats.newest_event_at;
      node.classList.toggle("stale", received !== null && received > STALE_SECONDS);
    } catch (_) { /* the view's own error says enough */ }
  }

  // ---------- journey map view ----------
  async function showJourney() {
    const params = kpiParams();
    const [kpis, daily] = await Promise.all([api("/v1/kpis", params), api("/v1/kpis/daily", params)]);
    noteKpis(kpis);
    state.kpis = kpis;
    state.daily = daily;
    const seg = kpis.segments[0];
    $("journey-sub").textContent = "· " + kpis.map.name + " v" + kpis.map.version + " · " + segLabel(seg.segment) + " · " + kpis.window.from + " to " + kpis.window.to;
    renderBottleneck(seg);
    $("stages").replaceChildren(...seg.stages.map((s) => stageColumn(s, seg.bottleneck)));
    renderDaily(daily, seg.stages);
  }

  function renderBottleneck(seg) {
    const node = $("bottleneck");
    const b = seg.bottleneck;
    node.classList.toggle("none", !b);
    if (!b) { node.textContent = "No stage is below its target."; node.dataset.stage = ""; return; }
    const stage = seg.stages.find((s) => s.id === b.stage);
    const show = b.metric === "conversion_rate" ? pct : (x) => (x === null ? "—" : x.toFixed(2) + " d");
    node.dataset.stage = b.stage;
    node.textContent = "Bottleneck: " + (stage ? stage.name : b.stage) + " — " + b.metric.replace(/_/g, " ") + " " + show(b.actual) +
      " against a target of " + show(b.target) + " (" + pct(b.shortfall) + " short)";
  }

  const STATUS_TEXT = { met: "Target met", below_target: "Below target", undecided: "Too early to tell", no_data: "No data yet", no_target: "No target" };

  function stageColumn(s, bottleneck) {
    const isBottleneck = bottleneck && bottleneck.stage === s.id;
    const id = s.id;
    const row = (label, field, value, text) =>
      [el("dt", {}, label), el("dd", { testid: "stage-" + id + "-" + field, "data-value": value === null || value === undefined ? "" : value }, text)];
    const sent = s.sentiment;
    const targets = s.targets.map((t) => {
      const show = t.metric === "conversion_rate" ? pct : (x) => (x === null ? "—" : x.toFixed(2) + " d");
      const what = t.metric === "conversion_rate" ? "Conversion ≥ " : "Median time ≤ ";
      // The final value can still end anywhere between the bounds while customers are in progress.
      const range = t.lowest !== null && t.lowest !== undefined && t.lowest !== t.highest
        ? " — will end between " + show(t.lowest) + " and " + show(t.highest) : "";
      return el("p", { class: "t " + t.status, testid: "stage-" + id + "-target-" + t.metric },
        what + show(t.target) + ": " + show(t.actual) + range + " (" + STATUS_TEXT[t.status] + ")");
    });
    const tops = (items, key) => (items.length
      ? el("ol", {}, items.map((t) => el("li", {}, t[key] || "(none)", " · ", num(t.customers))))
      : el("p", { class: "hint" }, "none"));
    return el("article", { class: "stage " + s.status + (isBottleneck ? " is-bottleneck" : ""), testid: "stage-" + id,
      "data-status": s.status, "aria-label": s.name + ": " + STATUS_TEXT[s.status] + (isBottleneck ? ", bottleneck" : "") },
      el("h3", {}, el("span", {}, s.name), isBottleneck ? el("span", { class: "flag", testid: "bottleneck-flag" }, "Bottleneck") : null),
      el("span", { class: "status-line" }, STATUS_TEXT[s.status]),
      el("dl", {},
        row("Reached", "reached", s.reached, num(s.reached)),
        row("Entered in window", "entered", s.entered, num(s.entered)),
        row("Conversion to next", "conversion", s.conversion_rate, pct(s.conversion_rate)),
        row("Drop-off", "dropoff", s.drop_off_rate, pct(s.drop_off_rate)),
        row("In progress", "in-progress", s.in_progress, num(s.in_progress)),
        row("Outcome decided for", "decided", s.decided_share, pct(s.decided_share)),
        row("Median time to convert", "median", s.time_to_next_seconds.median, duration(s.time_to_next_seconds.median)),
        row("p90 time to convert", "p90", s.time_to_next_seconds.p90, duration(s.time_to_next_seconds.p90)),
        row("Regressions into", "regressions", s.regressions_into, num(s.regressions_into)),
        row("Skipped over", "skips", s.skips_over, num(s.skips_over)),
        row("Repeat visits", "repeats", s.repeats, num(s.repeats)),
      ),
      targets,
      el("h4", {}, "Sentiment"),
      el("p", { testid: "stage-" + id + "-sentiment" },
        el("span", { class: "sent-pos" }, "positive " + num(sent.positive)), " · ",
        el("span", { class: "sent-neu" }, "neutral " + num(sent.neutral)), " · ",
        el("span", { class: "sent-neg" }, "negative " + num(sent.negative))),
      el("h4", {}, "Top touchpoints"),
      el("div", { testid: "stage-" + id + "-touchpoints" }, tops(s.top_touchpoints, "touchpoint")),
      el("h4", {}, "Top channels"),
      el("div", { testid: "stage-" + id + "-channels" }, tops(s.top_channels, "channel")),
    );
  }

  function renderDaily(daily, stages) {
    const days = daily.segments[0].days;
    const traces = stages.map((s, i) => ({
      type: "scatter", mode: "lines+markers", name: s.name,
      x: days.map((d) => d.date), y: days.map((d) => d.stages[i].entered),
    }));
    Plotly.react("daily-chart", traces, {
      margin: { t: 20, r: 10, b: 40, l: 40 }, legend: { orientation: "h" }, yaxis: { title: { text: "customers entering" }, rangemode: "tozero" },
    }, PLOT_CONFIG);
  }

  // ---------- funnel & flow view ----------
  async function showFlow() {
    const kpis = noteKpis(await api("/v1/kpis", kpiParams()));
    state.kpis = kpis;
    const seg = kpis.segments[0];
    const stages = seg.stages;
    $("flow-sub").textContent = "· " + segLabel(seg.segment) + " · " + kpis.window.from + " to " + kpis.window.to;
    Plotly.react("funnel-chart", [{
      type: "funnel", y: stages.map((s) => s.name), x: stages.map((s) => s.reached), textinfo: "value+percent initial",
      marker: { color: stages.map((s) => (s.status === "below_target" ? "#c62828" : s.status === "met" ? "#1a7f37" : "#2457c5")) },
    }], { margin: { t: 20, r: 10, b: 30, l: 90 } }, PLOT_CONFIG);
    Plotly.react("flow-chart", [sankey(stages, seg.transitions)], { margin: { t: 20, r: 10, b: 20, l: 10 } }, PLOT_CONFIG);
    const cells = (s) => [
      ["reached", s.reached], ["converted", s.converted], ["dropped", s.dropped], ["in-progress", s.in_progress],
      ["regressions", s.regressions_into], ["skips", s.skips_over], ["repeats", s.repeats],
    ];
    $("flow-table").tBodies[0].replaceChildren(...stages.map((s) => el("tr", {},
      el("th", { scope: "row" }, s.name),
      cells(s).map(([field, v]) => el("td", { class: "num", testid: "flow-" + s.id + "-" + field, "data-value": v === null ? "" : v }, num(v))))));
  }

  function sankey(stages, transitions) {
    const n = stages.length;
    const labels = [...stages.map((s) => s.name), "Dropped", "In progress"];
    const link = { source: [], target: [], value: [], color: [], label: [] };
    const add = (source, target, value, color, label) => {
      if (!value) return;
      link.source.push(source); link.target.push(target); link.value.push(value); link.color.push(color); link.label.push(label);
    };
    stages.forEach((s, i) => {
      if (i < n - 1) {
        add(i, i + 1, s.converted, COLORS.forward, "converted to " + stages[i + 1].name);
        add(i, n, s.dropped, COLORS.dropped, "dropped after " + s.name);
        add(i, n + 1, s.in_progress, COLORS.progress, "still in " + s.name);
      }
    });
    // Regressions and skips as the exact stage pairs the customers moved between.
    const index = Object.fromEntries(stages.map((s, i) => [s.id, i]));
    (transitions || []).forEach((t) => {
      if (t.kind === "regression") add(index[t.from], index[t.to], t.count, COLORS.regression, "back from " + stages[index[t.from]].name + " to " + stages[index[t.to]].name);
      if (t.kind === "skip") add(index[t.from], index[t.to], t.count, COLORS.skip, "skipped from " + stages[index[t.from]].name + " to " + stages[index[t.to]].name);
    });
    return { type: "sankey", arrangement: "snap", node: { label: labels, pad: 18, thickness: 16,
      color: [...stages.map(() => "#2457c5"), "#c62828", "#6b7280"] }, link };
  }

  // ---------- comparison view ----------
  async function showCompare() {
    const kpis = noteKpis(await api("/v1/kpis", kpiParams({ segment: "*" })));
    state.compare = kpis;
    $("compare-sub").textContent = "· " + kpis.map.name + " · " + kpis.window.from + " to " + kpis.window.to;
    const segs = kpis.segments;
    const stages = segs[0].stages;
    Plotly.react("compare-chart", segs.map((seg) => ({
      type: "bar", name: segLabel(seg.segment), x: seg.stages.slice(0, -1).map((s) => s.name),
      y: seg.stages.slice(0, -1).map((s) => s.conversion_rate),
    })), { barmode: "group", margin: { t: 20, r: 10, b: 40, l: 50 }, legend: { orientation: "h" },
      yaxis: { title: { text: "conversion to next stage" }, tickformat: ".0%", rangemode: "tozero" } }, PLOT_CONFIG);
    const head = $("compare-table").tHead;
    head.replaceChildren(
      el("tr", {}, el("th", { scope: "col", rowspan: 2 }, "Stage"), segs.map((seg) => el("th", { scope: "colgroup", colspan: 3 }, segLabel(seg.segment)))),
      el("tr", {}, segs.map(() => [el("th", { scope: "col" }, "Reached"), el("th", { scope: "col" }, "Conversion"), el("th", { scope: "col" }, "Status")])),
    );
    $("compare-table").tBodies[0].replaceChildren(...stages.map((stage, i) => el("tr", {},
      el("th", { scope: "row" }, stage.name),
      segs.map((seg) => {
        const s = seg.stages[i];
        const base = "cmp-" + segKey(seg.segment) + "-" + s.id;
        return [
          el("td", { class: "num", testid: base + "-reached", "data-value": s.reached }, num(s.reached)),
          el("td", { class: "num " + s.status, testid: base + "-conversion", "data-value": s.conversion_rate === null ? "" : s.conversion_rate }, pct(s.conversion_rate)),
          el("td", { class: s.status, testid: base + "-status" }, STATUS_TEXT[s.status] + (seg.bottleneck && seg.bottleneck.stage === s.id ? " · bottleneck" : "")),
        ];
      }))));
  }

  // ---------- customer view ----------
  async function showCustomer() {
    if (!state.customer) { setStatus("Enter a customer id (any of their ids: anonymous, user id, alias).", false); return; }
    const path = "/v1/customers/" + encodeURIComponent(state.customer);
    const [profile, journey] = await Promise.all([api(path), $("map").value ? api(path + "/journey", { map: $("map").value }) : null]);
    state.journey = { profile, journey };
    $("customer-body").hidden = false;
    const row = (label, value, testid) => [el("dt", {}, label), el("dd", { testid }, value)];
    const stageName = (id) => (journey && journey.stages.find((s) => s.id === id) || { name: id || "—" }).name;
    $("profile").replaceChildren(...[
      row("Customer", profile.customer_id, "profile-id"),
      row("Ids", profile.ids.join(", "), "profile-ids"),
      row("Segments", profile.segments.length ? profile.segments.join(", ") : "none", "profile-segments"),
      row("Current stage", journey ? stageName(journey.current_stage) : "—", "profile-stage"),
      row("Time in stage", journey ? duration(journey.time_in_current_stage_seconds) : "—", "profile-time"),
      row("Non-linear moves", journey ? "regressions " + journey.non_linear.regressions + " · skips " + journey.non_linear.skips + " · repeats " + journey.non_linear.repeats : "—", "profile-nonlinear"),
    ].flat());
    const points = timelineRows(journey);
    $("timeline").tBodies[0].replaceChildren(...points.map((p, i) => el("tr", { testid: "timeline-row-" + i },
      el("td", {}, p.time.replace("T", " ").replace("Z", "")), el("td", {}, p.channel), el("td", {}, p.event || p.type),
      el("td", {}, p.touchpoint || "—"), el("td", { testid: "timeline-stage-" + i }, p.stage ? stageName(p.stage) : "—"),
      el("td", {}, p.move + (p.repeat ? " (repeat)" : "")), el("td", { class: p.sentiment ? "sent-" + p.sentiment.slice(0, 3) : "" }, p.sentiment || "—"))));
    if (journey) {
      const staged = points.filter((p) => p.stage);
      Plotly.react("timeline-chart", [{
        type: "scatter", mode: "lines+markers", line: { shape: "hv", color: "#9aa5b8" },
        x: staged.map((p) => p.time), y: staged.map((p) => stageName(p.stage)),
        marker: { size: 11, color: staged.map((p) => SENTIMENT_COLORS[p.sentiment] || SENTIMENT_COLORS[""]) },
        text: staged.map((p) => p.channel + " · " + (p.touchpoint || p.event) + (p.sentiment ? " · " + p.sentiment : "")),
        hovertemplate: "%{x}<br>%{y}<br>%{text}<extra></extra>",
      }], { margin: { t: 20, r: 10, b: 40, l: 90 },
        yaxis: { categoryorder: "array", categoryarray: journey.stages.map((s) => s.name), type: "category" } }, PLOT_CONFIG);
    }
  }

  function timelineRows(journey) {
    if (!journey) return [];
    // Mark the touchpoints that moved the customer (the transitions share their time and touchpoint).
    const moves = new Map(journey.transitions.map((t) => [t.time + "|" + t.touchpoint, t]));
    return journey.touchpoints.map((t) => {
      const move = t.stage ? moves.get(t.time + "|" + t.touchpoint) : undefined;
      return { ...t, move: move ? move.kind : "", repeat: move ? move.repeat : "" };
    });
  }

  // ---------- CSV downloads ----------
  function save(blob, filename) {
    const a = el("a", { href: URL.createObjectURL(blob), download: filename });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function csvCell(value) {
    const text = value === null || value === undefined ? "" : String(value);
    // Quote as RFC 4180; a leading =, +, - or @ is prefixed so spreadsheets do not run it as a formula.
    const safe = /^[=+\-@\t\r]/.test(text) ? "'" + text : text;
    return /[",\n\r]/.test(safe) ? '"' + safe.replace(/"/g, '""') + '"' : safe;
  }

  async function download(kind) {
    try {
      const map = $("map").value;
      if (kind === "timeline") {
        if (!state.journey || !state.journey.journey) return;
        const header = ["time", "channel", "event", "touchpoint", "stage", "move", "repeat", "sentiment", "message_id"];
        const rows = timelineRows(state.journey.journey).map((p) => [p.time, p.channel, p.event, p.touchpoint, p.stage, p.move, p.repeat, p.sentiment, p.message_id]);
        const text = [header, ...rows].map((r) => r.map(csvCell).join(",")).join("\n") + "\n";
        save(new Blob([text], { type: "text/csv" }), "journey-" + state.journey.profile.customer_id.replace(/[^A-Za-z0-9._-]/g, "_") + ".csv");
        return;
      }
      const path = kind === "daily" ? "/v1/kpis/daily" : "/v1/kpis";
      const params = kpiParams({ format: "csv", ...(kind === "compare" ? { segment: "*" } : {}) });
      const blob = await api(path, params, true);
      save(blob, (kind === "daily" ? "kpis-daily-" : "kpis-") + map + ".csv");
    } catch (err) {
      if (state.key) setStatus("Download failed: " + err.message, true);
    }
  }

  // ---------- wiring ----------
  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (key) await signIn(key);
    });
    $("signout").addEventListener("click", () => signOut("Signed out."));
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
    for (const id of ["map", "segment", "from", "to"]) $(id).addEventListener("change", () => refresh());
    $("customer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.customer = $("customer-id").value.trim() || null;
      refresh();
    });
    for (const button of document.querySelectorAll("[data-download]")) button.addEventListener("click", () => download(button.dataset.download));
    window.addEventListener("hashchange", () => { if (state.key) route(); });
    const saved = sessionStorage.getItem(KEY_SLOT);
    if (saved) signIn(saved); else $("key").focus();
  });
})();
