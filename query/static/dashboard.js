// The marketer dashboard: plain JavaScript over the query service's read API (docs/dashboard.md).
//
// * The read key lives in sessionStorage (gone with the tab) and travels only as a Bearer header; never in
//   a URL, so it cannot leak through history, logs or Referer.
// * Every value from the API reaches the page through textContent or plotly, never innerHTML: ids,
//   touchpoints and channels are whatever customers' events said.
// * Each view refreshes itself every POLL_MS while the tab is visible; a refresh never overlaps another.
// * Alerts (GET /v1/alerts) are read with every refresh, whatever the view: a firing rule marks its stage
//   wherever the stage is shown for the rule's map and segment, and the Alerts view lists the history. When
//   the alerts cannot be read, nothing is marked and the KPIs are shown as ever.
"use strict";

(function () {
  const KEY_SLOT = "journeys.readKey";
  const POLL_MS = 5000;
  const STALE_SECONDS = 15 * 60;
  const VIEWS = ["journey", "flow", "compare", "customer", "alerts"];
  const COLORS = { forward: "rgba(36,87,197,0.45)", dropped: "rgba(198,40,40,0.45)", progress: "rgba(107,114,128,0.35)",
    regression: "rgba(245,158,11,0.7)", skip: "rgba(124,58,237,0.6)" };
  const SENTIMENT_COLORS = { positive: "#1a7f37", neutral: "#6b7280", negative: "#c62828", "": "#2457c5" };
  const PLOT_CONFIG = { responsive: true, displaylogo: false };

  const $ = (id) => document.getElementById(id);
  const state = { key: null, view: "journey", maps: [], segments: [], customer: null, busy: false, again: false, timer: null,
    kpis: null, daily: null, compare: null, journey: null, rebuilding: null, polling: false,
    list: null, listToken: 0, stageNames: {}, searchTimer: null, searchToken: 0, alerts: null, alertsError: null };
  const LIST_LIMIT = 100;
  const UNDECIDED_BANNER_BELOW = 0.5; // decided share of the range's entries under which the banner shows
  const OUTCOME_TEXT = { reached: "Reached", entered: "Entered", converted: "Converted", dropped: "Dropped", in_progress: "Still in progress" };
  const OUTCOME_COLORS = { converted: "#1a7f37", dropped: "#c62828", in_progress: "#9aa5b8" };

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
  const days = (n) => (n === 1 ? "1 day" : n + " days");
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
    state.alerts = null;
    state.alertsError = null;
    renderAlerts();
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
    // Comparison always shows every segment; the customer view needs no segment; alerts need no filter at all.
    $("segment-label").hidden = state.view === "compare" || state.view === "customer";
    $("filters").hidden = state.view === "alerts";
    $("drill").hidden = state.view === "customer" || state.view === "alerts" || !state.list;
    if (state.view === "customer" || state.view === "alerts") $("undecided-banner").hidden = true;
    refresh();
  }

  async function refresh() {
    if (!state.key) return;
    // One refresh at a time; a change made meanwhile (segment, dates…) runs right after, never lost.
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    try {
      const alerts = refreshAlerts();
      await Promise.all([refreshFreshness(), alerts, refreshView(alerts)]);
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

  async function refreshView(alerts) {
    state.rebuilding = null;
    if (state.view === "alerts") {
      // Read by refreshAlerts (every view needs them for the stage marks); this view only says how that went.
      await alerts;
      if (!state.key) return;
      if (state.alertsError) setStatus("Could not load alerts: " + state.alertsError, true);
      else setStatus("Updated " + new Date().toLocaleTimeString("en-GB") + " · refreshes every " + POLL_MS / 1000 + " s", false);
      return;
    }
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
    noteStages(seg.stages);
    renderBanner(seg, kpis);
    renderBottleneck(seg);
    $("stages").replaceChildren(...seg.stages.map((s) => stageColumn(s, seg.bottleneck, seg.segment, kpis.map.name)));
    markStages();
    renderDaily(daily, seg.stages);
  }

  function noteStages(stages) {
    state.stageNames = Object.fromEntries(stages.map((s) => [s.id, s.name]));
    state.windows = Object.fromEntries(stages.map((s) => [s.id, s.conversion_window_days]));
  }

  // Most customers who entered in the range still inside their conversion window: say so before any number,
  // and offer a range whose outcomes are decided (it ends the longest conversion window ago).
  function renderBanner(seg, kpis) {
    const open = seg.stages.slice(0, -1);
    const entered = open.reduce((n, s) => n + (s.entered || 0), 0);
    const decided = open.reduce((n, s) => n + (s.converted || 0) + (s.dropped || 0), 0);
    const banner = $("undecided-banner");
    const share = entered ? decided / entered : null;
    banner.dataset.decidedShare = share === null ? "" : String(share);
    if (share === null || share >= UNDECIDED_BANNER_BELOW) { banner.hidden = true; return; }
    const longest = Math.max(...open.map((s) => s.conversion_window_days || 0));
    const end = new Date(Date.parse(kpis.as_of) - Math.ceil(longest) * 86400000);
    const start = new Date(end.getTime() - 29 * 86400000);
    state.decidedRange = { from: iso(start), to: iso(end) };
    $("undecided-text").textContent = "Too early to tell: " + pct(1 - share) + " of the " + num(entered) +
      " stage entries between " + kpis.window.from + " and " + kpis.window.to + " are still in progress (inside a conversion window of up to " +
      longest + " days). Their conversion rates and targets can still go either way; only " + pct(share) + " are decided.";
    $("decided-range").textContent = "Show " + state.decidedRange.from + " to " + state.decidedRange.to + " (outcomes decided)";
    banner.hidden = false;
  }

  function renderBottleneck(seg) {
    const node = $("bottleneck");
    const b = seg.bottleneck;
    const undecided = seg.stages.filter((s) => s.status === "undecided").map((s) => s.name);
    node.classList.toggle("none", !b && !undecided.length);
    node.classList.toggle("pending", !b && undecided.length > 0);
    if (!b) {
      node.dataset.stage = "";
      node.textContent = undecided.length
        ? "No stage is decidedly below its target yet; too early to tell for " + undecided.join(", ") + "."
        : "No stage is below its target.";
      return;
    }
    const stage = seg.stages.find((s) => s.id === b.stage);
    const show = b.metric === "conversion_rate" ? pct : (x) => (x === null ? "—" : x.toFixed(2) + " d");
    node.dataset.stage = b.stage;
    // The certain shortfall is measured from the best the undecided customers allow: say that bound.
    const rate = b.metric === "conversion_rate";
    const best = rate ? b.highest : b.lowest;
    const bound = best !== null && best !== undefined && best !== b.actual
      ? ", " + (rate ? "at most " : "at least ") + show(best) + " once everyone in progress is decided" : "";
    node.textContent = "Bottleneck: " + (stage ? stage.name : b.stage) + " — " + b.metric.replace(/_/g, " ") + " " + show(b.actual) +
      bound + ", against a target of " + show(b.target) + " (at least " + pct(b.shortfall) + " short)";
  }

  const STATUS_TEXT = { met: "Target met", below_target: "Below target", undecided: "Too early to tell", no_data: "No data yet", no_target: "No target" };

  // A count that opens the customers behind it (GET /v1/kpis/customers): same definitions, same length.
  function countButton(value, spec) {
    if (value === null || value === undefined) return "—";
    if (!value) return num(value);
    return el("button", { type: "button", class: "count", "data-open-list": "1", "data-stage": spec.stage, "data-outcome": spec.outcome,
      "data-segment": spec.segment === null || spec.segment === undefined ? "" : spec.segment,
      "aria-label": num(value) + " customers " + OUTCOME_TEXT[spec.outcome].toLowerCase() + " — show them" }, num(value));
  }

  function outcomeBar(s, segment) {
    if (s.converted === null || !s.entered) return null;
    const part = (outcome, n) => (n ? el("span", { class: "part " + outcome, style: "flex-grow: " + n, title: OUTCOME_TEXT[outcome] + ": " + num(n) + " of " + num(s.entered) }) : null);
    return el("div", { class: "outcomes", testid: "stage-" + s.id + "-outcomes", "aria-hidden": "true", "data-segment": segment || "" },
      part("converted", s.converted), part("dropped", s.dropped), part("in_progress", s.in_progress));
  }

  function stageColumn(s, bottleneck, segment, mapName) {
    const isBottleneck = bottleneck && bottleneck.stage === s.id;
    const id = s.id;
    const row = (label, field, value, text) =>
      [el("dt", {}, label), el("dd", { testid: "stage-" + id + "-" + field, "data-value": value === null || value === undefined ? "" : value }, text)];
    const open = (outcome, value) => countButton(value, { stage: id, outcome, segment });
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
    const bounds = s.conversion_rate_bounds;
    const boundsText = !bounds ? "—" : bounds.lowest === bounds.highest ? pct(bounds.lowest) : pct(bounds.lowest) + " – " + pct(bounds.highest);
    const label = s.name + ": " + STATUS_TEXT[s.status] + (isBottleneck ? ", bottleneck" : "");
    return el("article", { class: "stage " + s.status + (isBottleneck ? " is-bottleneck" : ""), testid: "stage-" + id,
      "data-status": s.status, "aria-label": label, "data-label": label },
      el("h3", {}, el("span", {}, s.name), isBottleneck ? el("span", { class: "flag", testid: "bottleneck-flag" }, "Bottleneck") : null),
      alertSlot("div", mapName, id, segment, "stage-" + id + "-alerts"),
      el("span", { class: "status-line", testid: "stage-" + id + "-status" }, STATUS_TEXT[s.status]),
      outcomeBar(s, segment),
      el("dl", {},
        row("Reached by the end of the range", "reached", s.reached, open("reached", s.reached)),
        row("Entered in the range", "entered", s.entered, open("entered", s.entered)),
        row("· converted", "converted", s.converted, open("converted", s.converted)),
        row("· dropped", "dropped", s.dropped, open("dropped", s.dropped)),
        row("· still in progress", "in-progress", s.in_progress, open("in_progress", s.in_progress)),
        row("Outcome decided for", "decided", s.decided_share, pct(s.decided_share)),
        row("Conversion of the decided", "conversion", s.conversion_rate, pct(s.conversion_rate)),
        row("Conversion will end between", "bounds", bounds ? bounds.lowest + "," + bounds.highest : null, boundsText),
        row("Drop-off of the decided", "dropoff", s.drop_off_rate, pct(s.drop_off_rate)),
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
    noteStages(stages);
    renderBanner(seg, kpis);
    $("flow-sub").textContent = "· " + segLabel(seg.segment) + " · " + kpis.window.from + " to " + kpis.window.to;
    $("funnel-title").textContent = "Funnel: customers who entered each stage between " + kpis.window.from + " and " + kpis.window.to;
    // One group per row: the customers who entered the stage in the range (the cohort the outcomes are of).
    Plotly.react("funnel-chart", [{
      type: "funnel", y: stages.map((s) => s.name), x: stages.map((s) => s.entered), textinfo: "value",
      hovertemplate: "%{y}: %{x} entered in the range<extra></extra>",
      marker: { color: stages.map((s) => (s.status === "below_target" ? "#c62828" : s.status === "met" ? "#1a7f37" : s.status === "undecided" ? "#b45309" : "#2457c5")) },
    }], { margin: { t: 20, r: 10, b: 30, l: 90 } }, PLOT_CONFIG);
    const widens = stages.slice(1).filter((s, i) => s.entered > stages[i].entered);
    $("funnel-note").textContent = "One group per row: the customers whose first touchpoint of that stage lies in the range." +
      (widens.length ? " " + widens.map((s) => s.name).join(", ") + (widens.length > 1 ? " count" : " counts") +
        " more than the stage before: customers can start the journey at any stage, skip stages (see the skips in the flow), or have entered the earlier stage before the range." : "");
    const diagram = sankey(stages, seg.transitions);
    Plotly.react("flow-chart", [diagram.trace], { margin: { t: 20, r: 10, b: 20, l: 10 } }, PLOT_CONFIG);
    $("flow-links").replaceChildren(...diagram.explained.map((text, i) => el("li", { testid: "flow-link-" + i }, text)));
    const open = (s, outcome, value) => countButton(value, { stage: s.id, outcome, segment: seg.segment });
    const cells = (s) => [
      ["entered", s.entered, open(s, "entered", s.entered)], ["converted", s.converted, open(s, "converted", s.converted)],
      ["dropped", s.dropped, open(s, "dropped", s.dropped)], ["in-progress", s.in_progress, open(s, "in_progress", s.in_progress)],
      ["decided", s.decided_share, pct(s.decided_share)], ["reached", s.reached, open(s, "reached", s.reached)],
      ["regressions", s.regressions_into, num(s.regressions_into)], ["skips", s.skips_over, num(s.skips_over)], ["repeats", s.repeats, num(s.repeats)],
    ];
    $("flow-table").tBodies[0].replaceChildren(...stages.map((s) => el("tr", {},
      el("th", { scope: "row" }, s.name, alertSlot("span", kpis.map.name, s.id, seg.segment, "flow-" + s.id + "-alerts")),
      cells(s).map(([field, v, shown]) => el("td", { class: "num", testid: "flow-" + s.id + "-" + field, "data-value": v === null ? "" : v }, shown)))));
    markStages();
  }

  function sankey(stages, transitions) {
    const n = stages.length;
    const dropped = stages.slice(0, -1).reduce((k, s) => k + (s.dropped || 0), 0);
    const progress = stages.slice(0, -1).reduce((k, s) => k + (s.in_progress || 0), 0);
    const labels = [...stages.map((s) => s.name + " · " + num(s.entered) + " entered"), "Dropped · " + num(dropped), "Still in progress · " + num(progress)];
    const link = { source: [], target: [], value: [], color: [], label: [], hovertemplate: "%{label}<extra></extra>" };
    const explained = [];
    const add = (source, target, value, color, label, why) => {
      if (!value) return;
      link.source.push(source); link.target.push(target); link.value.push(value); link.color.push(color);
      link.label.push(label + ": " + num(value));
      explained.push(label + ": " + num(value) + (why ? " — " + why : ""));
    };
    stages.forEach((s, i) => {
      if (i < n - 1) {
        add(i, i + 1, s.converted, COLORS.forward, "converted from " + s.name, "moved on to a later stage within " + days(s.conversion_window_days) + " of entering " + s.name);
        add(i, n, s.dropped, COLORS.dropped, "dropped after " + s.name, "did not move on within " + days(s.conversion_window_days));
        add(i, n + 1, s.in_progress, COLORS.progress, "still in " + s.name, "inside their " + s.conversion_window_days + "-day window: can still convert");
      }
    });
    // Regressions and skips as the exact stage pairs the customers moved between.
    const index = Object.fromEntries(stages.map((s, i) => [s.id, i]));
    (transitions || []).forEach((t) => {
      if (t.kind === "regression") add(index[t.from], index[t.to], t.count, COLORS.regression, "back from " + stages[index[t.from]].name + " to " + stages[index[t.to]].name, "moves back to an earlier stage in the range");
      if (t.kind === "skip") {
        const over = stages.slice(index[t.from] + 1, index[t.to]).map((s) => s.name).join(", ");
        add(index[t.from], index[t.to], t.count, COLORS.skip, "skipped from " + stages[index[t.from]].name + " to " + stages[index[t.to]].name, "moves forward over " + over + " without touching it, in the range");
      }
    });
    return { trace: { type: "sankey", arrangement: "snap", node: { label: labels, pad: 18, thickness: 16,
      color: [...stages.map(() => "#2457c5"), "#c62828", "#6b7280"] }, link }, explained };
  }

  // ---------- comparison view ----------
  async function showCompare() {
    const kpis = noteKpis(await api("/v1/kpis", kpiParams({ segment: "*" })));
    state.compare = kpis;
    $("compare-sub").textContent = "· " + kpis.map.name + " · " + kpis.window.from + " to " + kpis.window.to;
    const segs = kpis.segments;
    const stages = segs[0].stages;
    noteStages(stages);
    renderBanner(segs[0], kpis);
    // Outcomes as parts of each segment's entered cohort, one stacked bar per (stage, segment): never a bare
    // rate of the decided, which reads 100 % while only the fast converters are decided.
    const open = stages.slice(0, -1);
    const bars = open.flatMap((stage, i) => segs.map((seg) => ({ stage, seg, s: seg.stages[i] })));
    const x = [bars.map((b) => b.stage.name), bars.map((b) => segLabel(b.seg.segment))];
    const traces = ["converted", "dropped", "in_progress"].map((outcome) => ({
      type: "bar", name: OUTCOME_TEXT[outcome], x, marker: { color: OUTCOME_COLORS[outcome] },
      y: bars.map((b) => (b.s.entered ? b.s[outcome] / b.s.entered : 0)),
      text: bars.map((b) => (b.s[outcome] ? num(b.s[outcome]) : "")), textposition: "inside",
      customdata: bars.map((b) => [b.seg.segment || "", b.stage.id, outcome, b.s[outcome], b.s.entered]),
      hovertemplate: "%{x}<br>" + OUTCOME_TEXT[outcome] + ": %{customdata[3]} of %{customdata[4]} entered (%{y:.1%})<br>click for the customers<extra></extra>",
    }));
    Plotly.react("compare-chart", traces, { barmode: "stack", margin: { t: 40, r: 10, b: 60, l: 50 },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", traceorder: "normal" },
      yaxis: { title: { text: "share of the customers who entered" }, tickformat: ".0%", range: [0, 1] } }, PLOT_CONFIG);
    const chart = $("compare-chart");
    if (!chart.dataset.clickable && chart.on) {
      chart.on("plotly_click", (event) => {
        const point = event && event.points && event.points[0];
        if (!point || !point.customdata || !point.customdata[3]) return;
        const [seg, stage, outcome] = point.customdata;
        openList({ segment: seg || null, stage, outcome });
      });
      chart.dataset.clickable = "1";
    }
    const head = $("compare-table").tHead;
    const columns = ["Reached", "Entered", "Converted", "Dropped", "In progress", "Conversion (decided · will end between)", "Status"];
    head.replaceChildren(
      el("tr", {}, el("th", { scope: "col", rowspan: 2 }, "Stage"), segs.map((seg) => el("th", { scope: "colgroup", colspan: columns.length }, segLabel(seg.segment)))),
      el("tr", {}, segs.map(() => columns.map((c) => el("th", { scope: "col" }, c)))),
    );
    $("compare-table").tBodies[0].replaceChildren(...stages.map((stage, i) => el("tr", {},
      el("th", { scope: "row" }, stage.name),
      segs.map((seg) => {
        const s = seg.stages[i];
        const base = "cmp-" + segKey(seg.segment) + "-" + s.id;
        const cell = (field, value, outcome) => el("td", { class: "num", testid: base + "-" + field, "data-value": value === null ? "" : value },
          countButton(value, { stage: s.id, outcome, segment: seg.segment }));
        const bounds = s.conversion_rate_bounds;
        const range = bounds && bounds.lowest !== bounds.highest ? " · " + pct(bounds.lowest) + "–" + pct(bounds.highest) : "";
        return [
          cell("reached", s.reached, "reached"), cell("entered", s.entered, "entered"), cell("converted", s.converted, "converted"),
          cell("dropped", s.dropped, "dropped"), cell("in-progress", s.in_progress, "in_progress"),
          el("td", { class: "num " + s.status, testid: base + "-conversion", "data-value": s.conversion_rate === null ? "" : s.conversion_rate }, pct(s.conversion_rate) + range),
          el("td", { class: s.status, testid: base + "-status" }, STATUS_TEXT[s.status] + (seg.bottleneck && seg.bottleneck.stage === s.id ? " · bottleneck" : ""),
            alertSlot("span", kpis.map.name, s.id, seg.segment, base + "-alerts")),
        ];
      }))));
    markStages();
  }

  // ---------- alerts ----------
  // Read with every refresh (never throws): a failure leaves nothing marked and is said on the Alerts link and
  // in the Alerts view; the KPIs do not depend on it.
  async function refreshAlerts() {
    try {
      const alerts = await api("/v1/alerts");
      if (!state.key) return;
      state.alerts = alerts;
      state.alertsError = null;
    } catch (err) {
      if (!state.key) return;
      state.alerts = null;
      state.alertsError = err.message || String(err);
    }
    renderAlerts();
    markStages();
  }

  const METRIC_TEXT = { conversion_rate: "conversion rate of the decided", drop_off_rate: "drop-off rate of the decided",
    median_days_to_convert: "median time to convert", in_progress: "customers in progress" };
  const metricText = (metric) => METRIC_TEXT[metric] || String(metric || "value").replace(/_/g, " ");
  function metricValue(metric, x) {
    if (x === null || x === undefined) return "—";
    if (metric === "conversion_rate" || metric === "drop_off_rate") return pct(x);
    if (metric === "median_days_to_convert") return Number(x).toFixed(2) + " d";
    return num(x);
  }
  const utc = (t) => (t ? t.replace("T", " ").replace("Z", "").slice(0, 19) + " UTC" : "—");
  const plural = (n, one, many) => num(n) + " " + (n === 1 ? one : many);
  const VERDICT_TEXT = { undecided: "too early to tell", too_few_decided: "too few decided", no_data: "no data",
    no_threshold: "no threshold", not_computed: "not computed yet", not_watched: "no longer watched" };

  // "conversion rate of the decided 75.0% · threshold 90.0%": what the rule saw when it was judged; with the
  // recovery threshold where it matters (a firing rule, a resolution).
  function judgedText(metric, evaluation, withRecovery, named) {
    const e = evaluation || {};
    if (e.actual === undefined && e.threshold === undefined) return e.status ? VERDICT_TEXT[e.status] || e.status.replace(/_/g, " ") : "—";
    return (named === false ? "" : metricText(metric) + " ") + metricValue(metric, e.actual) + " · threshold " + metricValue(metric, e.threshold) +
      (withRecovery && e.recover_at !== undefined && e.recover_at !== e.threshold ? " (resolves at " + metricValue(metric, e.recover_at) + ")" : "");
  }

  // The rules firing for one stage of one map, for one segment ("" is all customers, as the API's null).
  function firingFor(map, stage, segment) {
    if (!state.alerts) return [];
    const found = [];
    for (const rule of state.alerts.rules) {
      if (rule.map !== map || rule.stage !== stage) continue;
      for (const st of rule.states) if (st.state === "firing" && (st.segment || "") === segment) found.push({ rule, st });
    }
    return found;
  }

  // Where a stage is shown, a slot its firing rules' badges go into (filled by markStages, now and after each
  // read of the alerts).
  function alertSlot(tag, map, stage, segment, testid) {
    return el(tag, { class: "alert-badges", testid, "data-alert-map": map, "data-alert-stage": stage,
      "data-alert-segment": segment === null || segment === undefined ? "" : segment });
  }

  function alertBadge(rule, st) {
    const label = "alerting: " + rule.name + " — " + judgedText(rule.metric, st.evaluation, false) + " (" + segLabel(st.segment) +
      ", firing since " + utc(st.since) + "; judged on the entries of the last " + rule.window_days + " days)";
    return el("a", { href: "#alerts", class: "alert-badge", testid: "alert-badge", "data-rule": rule.name, title: label, "aria-label": label },
      "alerting: " + rule.name);
  }

  function markStages() {
    for (const slot of document.querySelectorAll("[data-alert-stage]")) {
      const firing = firingFor(slot.dataset.alertMap, slot.dataset.alertStage, slot.dataset.alertSegment);
      slot.replaceChildren(...firing.map(({ rule, st }) => alertBadge(rule, st)));
      const card = slot.closest(".stage");
      if (card) {
        card.classList.toggle("alerting", firing.length > 0);
        card.setAttribute("aria-label", card.dataset.label + (firing.length ? ", alerting: " + firing.map((f) => f.rule.name).join(", ") : ""));
      }
    }
  }

  function deliveryText(d) {
    const failed = d.failed_attempts || [];
    const last = failed.length ? failed[failed.length - 1] : null;
    const why = last ? " (last: " + (last.error || "answered " + last.status) + ")" : "";
    if (d.state === "delivered") {
      return "delivered " + utc(d.delivered_at) + (failed.length ? " after " + plural(failed.length, "failed attempt", "failed attempts") : "");
    }
    if (d.state === "gave_up") return "gave up " + utc(d.gave_up_at) + " after " + plural(d.attempts, "attempt", "attempts") + why;
    return "pending" + (failed.length ? " — " + plural(failed.length, "failed attempt", "failed attempts") + why : "") +
      (d.next_attempt_at ? "; next try " + utc(d.next_attempt_at) : "");
  }

  function renderAlerts() {
    const alerts = state.alerts;
    const firing = alerts ? alerts.rules.reduce((n, r) => n + r.states.filter((s) => s.state === "firing").length, 0) : 0;
    const pill = $("alerts-count");
    pill.textContent = state.alertsError ? "!" : firing ? num(firing) + " firing" : "";
    pill.title = state.alertsError ? "Alerts could not be loaded: " + state.alertsError : "";
    pill.hidden = !state.alertsError && !firing;
    const rulesBody = $("alerts-rules").tBodies[0];
    const historyBody = $("alerts-history").tBodies[0];
    if (!alerts) {
      rulesBody.replaceChildren();
      historyBody.replaceChildren();
      for (const id of ["alerts-rules-box", "alerts-history-box", "alerts-rules-empty", "alerts-history-empty"]) $(id).hidden = true;
      $("alerts-sub").textContent = state.alertsError ? "· could not be loaded" : "";
      return;
    }
    $("alerts-sub").textContent = "· " + plural(alerts.rules.length, "rule", "rules") + " · " + (firing ? num(firing) + " firing" : "none firing");
    const byName = Object.fromEntries(alerts.rules.map((r) => [r.name, r]));
    const where = (rule) => (rule ? rule.map + " · " + rule.stage : "—");
    const chip = (kind, text) => el("span", { class: "chip " + kind }, text);
    rulesBody.replaceChildren(...alerts.rules.flatMap((rule) => {
      const head = [el("th", { scope: "row" }, rule.name, rule.enabled ? null : el("span", { class: "sub" }, " (disabled)")),
        el("td", {}, where(rule)), el("td", {}, metricText(rule.metric))];
      if (!rule.states.length) {
        return [el("tr", { testid: "alert-rule-" + rule.name, "data-rule": rule.name },
          head, el("td", {}, "—"), el("td", {}, rule.enabled ? "not judged yet" : "disabled"), el("td", {}, "—"))];
      }
      return rule.states.map((st) => el("tr", { testid: "alert-rule-" + rule.name + "-" + (st.segment || "all"), "data-rule": rule.name,
        "data-segment": st.segment || "", "data-state": st.state },
        head.map((cell) => cell.cloneNode(true)), el("td", {}, segLabel(st.segment)),
        el("td", {}, st.state === "firing" ? chip("firing", "firing since " + utc(st.since)) : chip("ok", "ok")),
        el("td", {}, judgedText(rule.metric, st.evaluation, st.state === "firing", false),
          st.evaluation && VERDICT_TEXT[st.evaluation.status] && (st.evaluation.actual !== undefined || st.evaluation.threshold !== undefined)
            ? " (" + VERDICT_TEXT[st.evaluation.status] + ")" : null,
          el("span", { class: "sub" }, " · " + utc(st.evaluated_at)))));
    }));
    $("alerts-rules-box").hidden = !alerts.rules.length;
    $("alerts-rules-empty").hidden = alerts.rules.length > 0;
    historyBody.replaceChildren(...alerts.history.map((e, i) => {
      const rule = byName[e.rule];
      const metric = rule ? rule.metric : null;
      const resolved = e.kind === "resolved";
      const reason = e.reason && e.reason !== "below" && e.reason !== "recovered" ? " (" + e.reason + ")" : "";
      const deliveries = e.deliveries || [];
      return el("tr", { testid: "alert-event-" + i, "data-rule": e.rule, "data-kind": e.kind, "data-segment": e.segment || "" },
        el("td", {}, utc(e.at)),
        el("td", {}, e.rule + " v" + e.rule_version),
        el("td", {}, where(rule)),
        el("td", {}, segLabel(e.segment)),
        el("td", { testid: "alert-event-" + i + "-kind" }, chip(resolved ? "ok" : "firing", e.kind), reason),
        el("td", { testid: "alert-event-" + i + "-value" }, judgedText(metric, e.evaluation, resolved)),
        el("td", { testid: "alert-event-" + i + "-deliveries" }, deliveries.length
          ? el("ul", { class: "deliveries" }, deliveries.map((d, k) => el("li", { class: "delivery " + d.state, "data-state": d.state,
            testid: "alert-event-" + i + "-delivery-" + k }, d.target + " (" + d.format + "): " + deliveryText(d))))
          : el("span", { class: "sub" }, "no webhooks")));
    }));
    $("alerts-history-box").hidden = !alerts.history.length;
    $("alerts-history-empty").hidden = alerts.history.length > 0;
  }

  // ---------- the customers behind a number ----------
  async function openList(spec) {
    const params = kpiParams({ segment: spec.segment === null || spec.segment === undefined ? "" : spec.segment,
      stage: spec.stage, outcome: spec.outcome, limit: LIST_LIMIT });
    const token = ++state.listToken;
    state.list = { ...spec, params, cursor: null, rows: 0 };
    const panel = $("drill");
    panel.hidden = false;
    const stageName = state.stageNames[spec.stage] || spec.stage;
    $("drill-title").textContent = OUTCOME_TEXT[spec.outcome] + " · " + stageName + " · " + segLabel(spec.segment || null) +
      " · entered " + (spec.outcome === "reached" ? "before the end of " : "") + params.from + " to " + params.to;
    $("drill-count").textContent = "Loading…";
    $("drill-table").tBodies[0].replaceChildren();
    $("drill-dropped").hidden = true;
    $("drill-more").hidden = true;
    panel.scrollIntoView({ block: "start" });
    $("drill-title").focus({ preventScroll: true });
    try {
      const [page, dropped] = await Promise.all([
        api("/v1/kpis/customers", params),
        spec.outcome === "dropped" ? api("/v1/kpis/dropped", { ...params, outcome: null, limit: null }) : null,
      ]);
      if (token !== state.listToken) return;
      state.list.total = page.total;
      $("drill-count").textContent = num(page.total) + (page.total === 1 ? " customer" : " customers") + " · as of " +
        page.as_of.replace("T", " ").slice(0, 19) + " UTC";
      $("drill-count").dataset.total = String(page.total);
      appendRows(page);
      if (dropped) renderDropped(dropped);
    } catch (err) {
      if (token === state.listToken && state.key) $("drill-count").textContent = "Could not load: " + err.message;
    }
  }

  function appendRows(page) {
    const body = $("drill-table").tBodies[0];
    const start = state.list.rows;
    const when = (t) => (t ? t.replace("T", " ").replace("Z", "").slice(0, 19) : "—");
    body.append(...page.customers.map((c, k) => {
      const i = start + k;
      const touch = c.last_touch || {};
      return el("tr", { testid: "drill-row-" + i, "data-customer": c.customer_id },
        el("td", {}, el("button", { type: "button", class: "link", testid: "drill-open-" + i, "data-open-customer": c.customer_id }, c.customer_id)),
        el("td", {}, when(c.entered_at)), el("td", {}, c.outcome ? OUTCOME_TEXT[c.outcome] : "—"),
        el("td", {}, c.current_stage ? state.stageNames[c.current_stage] || c.current_stage : "—"),
        el("td", {}, touch.touchpoint || "—"), el("td", {}, touch.channel || "—"), el("td", {}, when(touch.at)));
    }));
    state.list.rows += page.customers.length;
    state.list.cursor = page.next_cursor;
    $("drill-more").hidden = !page.next_cursor;
  }

  async function moreRows() {
    if (!state.list || !state.list.cursor) return;
    const token = state.listToken;
    const page = await api("/v1/kpis/customers", { ...state.list.params, cursor: state.list.cursor });
    if (token === state.listToken) appendRows(page);
  }

  function renderDropped(summary) {
    const box = $("drill-dropped");
    const ranked = (items, key, testid) => (items.length
      ? el("ol", { testid }, items.map((t) => el("li", {}, (t[key] || "(none)") + " · " + num(t.customers) +
        (t.customers === 1 ? " customer" : " customers") + (t.events !== undefined ? ", " + num(t.events) + (t.events === 1 ? " event" : " events") : ""))))
      : el("p", { class: "hint", testid }, "none"));
    const window = state.windows && state.windows[summary.stage.id];
    box.replaceChildren(
      el("h3", {}, "What the " + num(summary.dropped) + " who dropped at " + summary.stage.name + " did"),
      el("div", { class: "dropped-grid" },
        el("div", {}, el("h4", {}, "Their last touchpoint"), ranked(summary.last_touchpoints, "touchpoint", "dropped-last-touchpoints")),
        el("div", {}, el("h4", {}, "Their last channel"), ranked(summary.last_channels, "channel", "dropped-last-channels")),
        el("div", {}, el("h4", {}, "After entering, within " + (window ? days(window) : "the conversion window") + " (" + num(summary.after_entry.customers) + " of them)"),
          ranked(summary.after_entry.touchpoints, "touchpoint", "dropped-after-touchpoints")),
        el("div", {}, el("h4", {}, "… on these channels"), ranked(summary.after_entry.channels, "channel", "dropped-after-channels")),
      ));
    box.hidden = false;
  }

  function closeList() {
    state.list = null;
    state.listToken++;
    $("drill").hidden = true;
  }

  function openCustomer(id) {
    state.customer = id;
    $("customer-id").value = id;
    if (location.hash !== "#customer") location.hash = "#customer"; else refresh();
  }

  // ---------- customer view ----------
  function people(listId, boxId, customers, testid) {
    const when = (t) => (t ? t.replace("T", " ").replace("Z", "").slice(0, 16) + " UTC" : "");
    $(listId).replaceChildren(...customers.map((c, i) => el("li", { testid: testid + "-" + i },
      el("button", { type: "button", class: "link", "data-open-customer": c.customer_id }, c.customer_id),
      c.matched_ids && c.matched_ids.length && !(c.matched_ids.length === 1 && c.matched_ids[0] === c.customer_id)
        ? el("span", { class: "sub" }, " (as " + c.matched_ids.join(", ") + ")") : null,
      c.last_touch ? el("span", { class: "sub" }, " · last: " + c.last_touch.touchpoint + " · " + c.last_touch.channel + " · " + when(c.last_touch.at)) : null)));
    $(boxId).hidden = !customers.length;
  }

  async function showMatches(prefix) {
    const token = ++state.searchToken;
    const found = prefix ? await api("/v1/customers", { prefix, limit: 10 }) : { customers: [] };
    if (token !== state.searchToken) return;
    $("customer-prefix").textContent = "“" + prefix + "”";
    people("customer-matches", "customer-matches-box", found.customers, "match");
  }

  async function showCustomer() {
    if (!state.customer) {
      $("customer-body").hidden = true;
      $("customer-missing").hidden = true;
      const recent = await api("/v1/customers", { recent: 1, limit: 10 });
      people("recent-customers", "recent-box", recent.customers, "recent-item");
      setStatus("Enter a customer id (any of their ids: anonymous, user id, alias) or its start, or pick a recent customer.", false);
      return;
    }
    $("recent-box").hidden = true;
    const path = "/v1/customers/" + encodeURIComponent(state.customer);
    const [asked, journeyAsked] = await Promise.allSettled([api(path), $("map").value ? api(path + "/journey", { map: $("map").value }) : null]);
    if (asked.status === "rejected" && asked.reason instanceof ApiError && asked.reason.status === 404) {
      // No event of that id in this project: say so (not an empty profile), and offer the ids that start so.
      $("customer-body").hidden = true;
      $("customer-missing").textContent = "No such customer: no event of “" + state.customer + "” in this project.";
      $("customer-missing").hidden = false;
      await showMatches(state.customer);
      return;
    }
    if (asked.status === "rejected") throw asked.reason;
    if (journeyAsked.status === "rejected") throw journeyAsked.reason;
    const profile = asked.value;
    const journey = journeyAsked.value;
    $("customer-missing").hidden = true;
    $("customer-matches-box").hidden = true;
    state.journey = { profile, journey };
    $("customer-body").hidden = false;
    const row = (label, value, testid) => [el("dt", {}, label), el("dd", { testid }, value)];
    const stageName = (id) => (journey && journey.stages.find((s) => s.id === id) || { name: id || "—" }).name;
    const traits = Object.entries(profile.traits || {});
    const show = (v) => (typeof v === "string" ? v : JSON.stringify(v));
    const touch = profile.first_touch;
    const firstTouch = touch ? [touch.first_channel, touch.first_seen && touch.first_seen.replace("T", " ").slice(0, 16) + " UTC",
      touch.first_utm_source && "utm source " + touch.first_utm_source, touch.first_utm_medium && "medium " + touch.first_utm_medium,
      touch.first_utm_campaign && "campaign " + touch.first_utm_campaign].filter(Boolean).join(" · ") : "—";
    $("profile").replaceChildren(...[
      row("Customer", profile.customer_id, "profile-id"),
      row("Ids", profile.ids.join(", "), "profile-ids"),
      row("Segments", profile.segments.length ? profile.segments.join(", ") : "none", "profile-segments"),
      row("Traits", traits.length ? el("ul", { class: "traits" }, traits.map(([k, v]) => el("li", { testid: "profile-trait-" + k }, k + ": " + show(v)))) : "none", "profile-traits"),
      row("First touch", firstTouch, "profile-first-touch"),
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
      if (kind === "list") {
        if (!state.list) return;
        const blob = await api("/v1/kpis/customers", { ...state.list.params, limit: null, format: "csv" }, true);
        save(blob, ["customers", map, state.list.stage, state.list.outcome].join("-") + ".csv");
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
    // Another map, segment or range: a list opened before no longer matches what is shown.
    for (const id of ["map", "segment", "from", "to"]) $(id).addEventListener("change", () => { closeList(); refresh(); });
    $("customer-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.customer = $("customer-id").value.trim() || null;
      refresh();
    });
    // Suggestions while typing: customers whose id starts with what is typed.
    $("customer-id").addEventListener("input", () => {
      clearTimeout(state.searchTimer);
      const prefix = $("customer-id").value.trim();
      state.searchTimer = setTimeout(() => { showMatches(prefix).catch(() => {}); }, 250);
    });
    // Every count button opens its customers; every customer button opens the customer's timeline.
    document.addEventListener("click", (event) => {
      const target = event.target instanceof Element ? event.target.closest("[data-open-list], [data-open-customer]") : null;
      if (!target) return;
      if (target.dataset.openCustomer !== undefined) { openCustomer(target.dataset.openCustomer); return; }
      openList({ segment: target.dataset.segment || null, stage: target.dataset.stage, outcome: target.dataset.outcome });
    });
    $("drill-close").addEventListener("click", closeList);
    $("drill-more").addEventListener("click", () => { moreRows().catch((err) => setStatus("Could not load: " + err.message, true)); });
    $("decided-range").addEventListener("click", () => {
      if (!state.decidedRange) return;
      $("from").value = state.decidedRange.from;
      $("to").value = state.decidedRange.to;
      closeList();
      refresh();
    });
    for (const button of document.querySelectorAll("[data-download]")) button.addEventListener("click", () => download(button.dataset.download));
    window.addEventListener("hashchange", () => { if (state.key) route(); });
    const saved = sessionStorage.getItem(KEY_SLOT);
    if (saved) signIn(saved); else $("key").focus();
  });
})();
