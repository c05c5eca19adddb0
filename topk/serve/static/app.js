/* topk live leaderboard: plain JavaScript, no build step, no dependencies.
 *
 * Polls GET /v1/windows/latest (every 2 s, or ?refresh_ms=N) for the chosen
 * window spec, event type and method, and shows the top-K with rank changes
 * against the previous pane shown, bounds for approximate methods, the age
 * of the data and a per-item sparkline (GET /v1/items/{id}/series over the
 * window, or its last hour, by minute: fetched for the shown rows only, at
 * most every ?spark_ms=N ms per item (default 10 s), and once more when the
 * window moves). The range form calls GET /v1/topk. Every value from the API is
 * put into the page as text (textContent / attributes), never as HTML.
 *
 * Query parameters: refresh_ms, spark_ms, spec, event_type, method, k.
 */
(function () {
  "use strict";

  var params = new URLSearchParams(window.location.search);

  function intParam(name, dflt, min) {
    var v = parseInt(params.get(name) || "", 10);
    return isFinite(v) && v >= min ? v : dflt;
  }

  var REFRESH_MS = intParam("refresh_ms", 2000, 100);
  var SPARK_MS = intParam("spark_ms", 10000, 1000);
  var COVERAGE_MS = Math.max(REFRESH_MS * 5, 15000);
  var MINUTE = 60000;
  var SPARK_W = 120, SPARK_H = 28;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var ALL = "*";

  var state = {
    coverage: null,
    want: {  // the selection asked for by the URL, applied once options exist
      spec: params.get("spec"),
      event_type: params.get("event_type"),
      method: params.get("method")
    },
    pane: null,         // last /v1/windows/latest response shown
    paneKey: null,      // identity of that pane
    fetchedAt: 0,       // Date.now() when it arrived
    ranks: new Map(),   // item -> rank in the pane shown
    counts: new Map(),  // item -> count in the pane shown
    changes: new Map(), // item -> {kind, places, countChanged}
    selectionKey: null,
    pollSeq: 0,
    pollTimer: null,
    coverageTimer: null,
    coverageAt: 0,      // Date.now() of the last coverage request
    online: true
  };

  // item|event_type -> {fetchedAt, start, end, points, error, inflight}
  var sparks = new Map();
  var sparkQueue = [];
  var sparkActive = 0;
  var SPARK_CONCURRENCY = 4;

  function $(id) { return document.getElementById(id); }

  // --- The API -----------------------------------------------------------

  function ApiError(message, status) {
    this.message = message;
    this.status = status;
  }

  function api(path, query) {
    var qs = query ? "?" + new URLSearchParams(query).toString() : "";
    return fetch(path + qs, {headers: {"Accept": "application/json"},
                             cache: "no-store"})
      .then(function (resp) {
        return resp.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (!resp.ok) {
            var msg = body && typeof body.error === "string" ? body.error
              : body && body.detail ? (typeof body.detail === "string"
                                       ? body.detail : JSON.stringify(body.detail))
              : "HTTP " + resp.status + " " + (resp.statusText || "");
            throw new ApiError(msg, resp.status);
          }
          if (body === null) throw new ApiError("the server sent no JSON", resp.status);
          return body;
        });
      }, function (err) {
        throw new ApiError("cannot reach the server (" + (err && err.message || err) + ")", 0);
      });
  }

  // --- Formatting --------------------------------------------------------

  function fmtTime(s) {
    if (!s) return "–";
    var d = new Date(s);
    if (isNaN(d.getTime())) return String(s);
    var iso = d.toISOString();  // YYYY-MM-DDTHH:MM:SS.sssZ
    var text = iso.slice(0, 10) + " " + iso.slice(11, 16);
    if (iso.slice(17, 19) !== "00") text += ":" + iso.slice(17, 19);
    return text;
  }

  function fmtAge(sec) {
    if (sec === null || sec === undefined || !isFinite(sec)) return "–";
    if (sec < 0) sec = 0;
    if (sec < 1) return "<1 s";
    if (sec < 60) return Math.floor(sec) + " s";
    if (sec < 3600) return Math.floor(sec / 60) + " min " + Math.floor(sec % 60) + " s";
    if (sec < 86400) return Math.floor(sec / 3600) + " h " + Math.floor((sec % 3600) / 60) + " min";
    return Math.floor(sec / 86400) + " d " + Math.floor((sec % 86400) / 3600) + " h";
  }

  function fmtCount(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : String(n);
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, String(attrs[k]));
      });
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(id, text, attrs) {
    var node = $(id);
    node.textContent = text;
    if (attrs) Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
  }

  function showError(id, message) {
    var node = $(id);
    if (message) {
      node.textContent = message;
      node.hidden = false;
    } else {
      node.textContent = "";
      node.hidden = true;
    }
  }

  // --- Controls ------------------------------------------------------------

  function eventTypeLabel(t) { return t === ALL ? "* (all types)" : t; }

  function fillSelect(select, values, keep, label) {
    var previous = keep !== undefined && keep !== null ? keep : select.value;
    var same = select.options.length === values.length &&
      values.every(function (v, i) { return select.options[i].value === v; });
    if (!same) {
      while (select.firstChild) select.removeChild(select.firstChild);
      values.forEach(function (v) {
        select.appendChild(el("option", {value: v}, label ? label(v) : v));
      });
    }
    if (values.indexOf(previous) >= 0) select.value = previous;
    else if (values.length) select.value = values[0];
  }

  function withAllFirst(types) {
    var out = (types || []).slice();
    var i = out.indexOf(ALL);
    if (i > 0) out.splice(i, 1);
    if (i !== 0) out.unshift(ALL);
    return out;
  }

  function specInfo(name) {
    var specs = state.coverage && state.coverage.specs || [];
    for (var i = 0; i < specs.length; i++) if (specs[i].spec === name) return specs[i];
    return null;
  }

  function applyCoverage(cov) {
    state.coverage = cov;
    var specNames = (cov.specs || []).map(function (s) { return s.spec; });
    fillSelect($("spec"), specNames, state.want.spec || $("spec").value);
    refillSpecOptions();
    fillSelect($("range-event-type"), withAllFirst(cov.event_types),
               null, eventTypeLabel);
    var methods = (cov.methods || []).slice();
    if (methods.indexOf("exact") < 0) methods.unshift("exact");
    fillSelect($("range-method"), methods, null);
    state.want.spec = null;

    var parts = [];
    parts.push("snapshot #" + cov.snapshot_seq);
    if (cov.committed_at) parts.push("committed " + fmtTime(cov.committed_at) + " UTC");
    if (cov.newest_event_time) parts.push("newest event " + fmtTime(cov.newest_event_time) + " UTC");
    if (cov.stream_lag_s !== null && cov.stream_lag_s !== undefined) parts.push("stream lag " + fmtAge(cov.stream_lag_s));
    if (cov.slices && cov.slices.first) parts.push("slices " + fmtTime(cov.slices.first) + " → " + fmtTime(cov.slices.last));
    setText("coverage", parts.join(" · "));
    if (!specNames.length) {
      showEmpty("The output holds no ranked windows yet.");
    }
  }

  function refillSpecOptions() {
    var info = specInfo($("spec").value);
    var types = withAllFirst(info ? info.event_types : []);
    var methods = info && info.methods && info.methods.length ? info.methods : ["exact"];
    fillSelect($("event-type"), types, state.want.event_type || $("event-type").value, eventTypeLabel);
    fillSelect($("method"), methods, state.want.method || $("method").value);
    state.want.event_type = null;
    state.want.method = null;
  }

  function selection() {
    var k = parseInt($("k").value, 10);
    return {spec: $("spec").value, event_type: $("event-type").value || ALL,
            method: $("method").value || "exact", k: isFinite(k) && k > 0 ? k : 10};
  }

  function rememberSelection(sel) {
    var p = new URLSearchParams(window.location.search);
    p.set("spec", sel.spec); p.set("event_type", sel.event_type);
    p.set("method", sel.method); p.set("k", String(sel.k));
    try { history.replaceState(null, "", "?" + p.toString()); } catch (e) { /* file: */ }
  }

  function loadCoverage() {
    clearTimeout(state.coverageTimer);
    state.coverageAt = Date.now();
    return api("/v1/coverage").then(function (cov) {
      var before = state.selectionKey;
      applyCoverage(cov);
      showError("error", null);
      state.coverageTimer = setTimeout(loadCoverage, COVERAGE_MS);
      var sel = selection();
      if (sel.spec && selectionKey(sel) !== before) poll();
    }, function (err) {
      showError("error", "Coverage: " + err.message);
      state.coverageTimer = setTimeout(loadCoverage, Math.min(COVERAGE_MS, REFRESH_MS * 2));
    });
  }

  // --- The leaderboard -------------------------------------------------------

  function selectionKey(sel) {
    return [sel.spec, sel.event_type, sel.method, sel.k].join("\u0000");
  }

  function paneKeyOf(sel, pane) {
    return [sel.spec, sel.event_type, sel.method, pane.window_start,
            pane.pane_index, pane.emitted_at, pane.source].join("\u0000");
  }

  function poll() {
    clearTimeout(state.pollTimer);
    var seq = ++state.pollSeq;
    var sel = selection();
    if (!sel.spec) {  // coverage not loaded yet (or no windows at all)
      state.pollTimer = setTimeout(poll, REFRESH_MS);
      return;
    }
    if (document.hidden && state.pane) {  // background tab: wait
      state.pollTimer = setTimeout(poll, REFRESH_MS);
      return;
    }
    var key = selectionKey(sel);
    if (key !== state.selectionKey) {
      state.selectionKey = key;
      state.pane = null;
      state.paneKey = null;
      state.ranks = new Map();
      state.counts = new Map();
      state.changes = new Map();
      rememberSelection(sel);
    }
    api("/v1/windows/latest", {spec: sel.spec, k: String(sel.k),
                               event_type: sel.event_type, method: sel.method})
      .then(function (pane) {
        if (seq !== state.pollSeq) return;
        setOnline(true);
        showError("error", null);
        showPane(sel, pane);
      }, function (err) {
        if (seq !== state.pollSeq) return;
        if (err.status === 404) {
          setOnline(true);
          showError("error", null);
          state.pane = null;
          state.paneKey = null;
          clearRows();
          showEmpty("No window yet for " + sel.spec + ", " + eventTypeLabel(sel.event_type) +
                    ", " + sel.method + ": " + err.message);
        } else {
          setOnline(err.status !== 0);
          showError("error", "Leaderboard: " + err.message);
          if (!state.pane) clearRows();  // nothing of this selection to show
        }
      })
      .then(function () {
        if (seq === state.pollSeq) state.pollTimer = setTimeout(poll, REFRESH_MS);
      });
  }

  function setOnline(ok) {
    state.online = ok;
    var live = $("live");
    live.classList.toggle("offline", !ok);
    live.setAttribute("data-state", ok ? "live" : "offline");
    $("live-text").textContent = ok
      ? "live · every " + (REFRESH_MS >= 1000 ? (REFRESH_MS / 1000) + " s" : REFRESH_MS + " ms")
      : "offline, retrying";
  }

  function showEmpty(message) {
    var p = $("leaderboard-empty");
    p.textContent = message;
    p.hidden = false;
  }

  function clearRows() {
    var body = $("leaderboard-body");
    while (body.firstChild) body.removeChild(body.firstChild);
    ["age", "pane-index", "window-start", "window-end", "source", "window-total"].forEach(function (id) {
      $(id).textContent = "–";
    });
    $("pane-index").textContent = "";
    var timing = $("pane-timing");
    timing.textContent = "–";
    timing.className = "badge";
    timing.removeAttribute("data-timing");
  }

  function showPane(sel, pane) {
    var key = paneKeyOf(sel, pane);
    var rows = pane.rows || [];
    if (key !== state.paneKey) {
      // A new pane: rank changes are relative to the pane shown before it.
      var first = state.paneKey === null;
      var changes = new Map();
      rows.forEach(function (r) {
        var before = state.ranks.get(r.item_id);
        var kind, places = 0;
        if (first) kind = "none";
        else if (before === undefined) kind = "new";
        else if (before > r.rank) { kind = "up"; places = before - r.rank; }
        else if (before < r.rank) { kind = "down"; places = r.rank - before; }
        else kind = "same";
        var oldCount = state.counts.get(r.item_id);
        changes.set(r.item_id, {kind: kind, places: places,
                                countChanged: !first && oldCount !== undefined && oldCount !== r.count});
      });
      state.changes = changes;
      state.ranks = new Map(rows.map(function (r) { return [r.item_id, r.rank]; }));
      state.counts = new Map(rows.map(function (r) { return [r.item_id, r.count]; }));
      state.paneKey = key;
      renderRows(sel, pane);
    }
    state.pane = pane;
    state.fetchedAt = Date.now();
    renderPaneInfo(pane);
    requestSparks(sel, pane);
  }

  function renderPaneInfo(pane) {
    var timing = $("pane-timing");
    timing.textContent = pane.pane_timing || "–";
    timing.className = "badge timing-" + String(pane.pane_timing || "none").replace(/[^a-z_]/g, "");
    timing.setAttribute("data-timing", pane.pane_timing || "");
    $("pane-index").textContent = pane.pane_index !== undefined && pane.pane_index !== null
      ? "#" + pane.pane_index : "";
    setText("window-start", fmtTime(pane.window_start), {"data-value": pane.window_start || ""});
    setText("window-end", fmtTime(pane.window_end), {"data-value": pane.window_end || ""});
    $("source").textContent = pane.source || "–";
    $("window-total").textContent = pane.window_total !== undefined && pane.window_total !== null
      ? fmtCount(pane.window_total) : "–";
    var f = pane.freshness || {};
    // A newer commit may bring new specs or event types: re-read the
    // coverage then (not more often than every 2 s).
    if (state.coverage && typeof f.snapshot_seq === "number" &&
        f.snapshot_seq > state.coverage.snapshot_seq && Date.now() - state.coverageAt > 2000) {
      loadCoverage();
    }
    tickAge();
    fillRangeDefaults(pane);
  }

  function tickAge() {
    var pane = state.pane;
    var node = $("age");
    if (!pane) return;
    var since = (Date.now() - state.fetchedAt) / 1000;
    var f = pane.freshness || {};
    var fr = [];
    if (f.snapshot_seq !== undefined && f.snapshot_seq !== null) fr.push("snapshot #" + f.snapshot_seq);
    if (typeof f.age_s === "number") fr.push("committed " + fmtAge(f.age_s + since) + " ago");
    else if (f.committed_at) fr.push("committed " + fmtTime(f.committed_at) + " UTC");
    $("freshness").textContent = fr.join(" · ");
    var base = typeof pane.age_s === "number" ? pane.age_s
      : (Date.now() - new Date(pane.emitted_at).getTime()) / 1000;
    var age = base + since;
    node.textContent = fmtAge(age) + " ago";
    node.setAttribute("data-age-s", String(Math.round(age)));
    node.title = "emitted at " + fmtTime(pane.emitted_at) + " UTC";
    var slideMs = specStepMs(pane);
    node.classList.toggle("stale", age * 1000 > Math.max(3 * slideMs, 120000));
  }

  function specStepMs(pane) {
    var ws = new Date(pane.window_start).getTime();
    var we = new Date(pane.window_end).getTime();
    var spec = String(pane.spec || "");
    var slide = spec.indexOf("/") >= 0 ? durationMs(spec.split("/")[1]) : null;
    return slide || (we - ws) || MINUTE;
  }

  function durationMs(text) {
    var m = /^(\d+)([mhd])$/.exec(String(text).trim());
    if (!m) return null;
    return parseInt(m[1], 10) * {m: MINUTE, h: 60 * MINUTE, d: 1440 * MINUTE}[m[2]];
  }

  function isApproximate(sel, rows) {
    if (sel.method !== "exact") return true;
    return rows.some(function (r) { return r.lower_bound !== r.upper_bound; });
  }

  function renderRows(sel, pane) {
    var body = $("leaderboard-body");
    var rows = pane.rows || [];
    var approx = isApproximate(sel, rows);
    $("leaderboard").classList.toggle("no-bounds", !approx);
    $("leaderboard").setAttribute("data-method", sel.method);
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) {
      var change = state.changes.get(r.item_id) || {kind: "none", places: 0};
      var tr = el("tr", {"data-testid": "leaderboard-row", "data-item": r.item_id,
                         "data-rank": r.rank, "data-count": r.count});
      tr.appendChild(el("td", {"class": "num rank", "data-testid": "rank"}, r.rank));
      tr.appendChild(changeCell(change));
      var item = el("td", {"class": "item", "data-testid": "item", title: r.item_id}, r.item_id);
      tr.appendChild(item);
      tr.appendChild(el("td", {"class": "num count" + (change.countChanged ? " changed" : ""),
                               "data-testid": "count"}, fmtCount(r.count)));
      tr.appendChild(boundsCell(r, approx));
      var spark = el("td", {"class": "spark-col"});
      spark.appendChild(sparkSvg(sel, r.item_id));
      tr.appendChild(spark);
      frag.appendChild(tr);
    });
    while (body.firstChild) body.removeChild(body.firstChild);
    body.appendChild(frag);
    var empty = $("leaderboard-empty");
    if (rows.length) {
      empty.hidden = true;
      empty.textContent = "";
    } else {
      showEmpty("The latest window of " + sel.spec + " has no items.");
    }
  }

  function changeCell(change) {
    var td = el("td", {"class": "delta delta-" + change.kind, "data-testid": "rank-change",
                       "data-change": change.kind, "data-places": change.places});
    if (change.kind === "new") {
      td.textContent = "new";
      td.title = "entered the top-K since the previous pane";
    } else if (change.kind === "up") {
      td.textContent = "▲" + change.places;
      td.title = "up " + change.places + (change.places === 1 ? " place" : " places");
    } else if (change.kind === "down") {
      td.textContent = "▼" + change.places;
      td.title = "down " + change.places + (change.places === 1 ? " place" : " places");
    } else if (change.kind === "same") {
      td.textContent = "=";
      td.title = "same rank as in the previous pane";
    } else {
      td.textContent = "";
    }
    return td;
  }

  function boundsCell(r, approx) {
    var td = el("td", {"class": "bounds-col bounds", "data-testid": "bounds",
                       "data-lower": r.lower_bound, "data-upper": r.upper_bound,
                       "data-guaranteed": r.guaranteed ? "true" : "false"});
    if (!approx || r.lower_bound === undefined) return td;
    td.appendChild(el("span", {"class": "range", "data-testid": "bounds-range"},
                      fmtCount(r.lower_bound) + ".." + fmtCount(r.upper_bound)));
    if (r.guaranteed) {
      td.appendChild(el("span", {"class": "guaranteed", "data-testid": "guaranteed",
                                 title: "certainly in the true top-K",
                                 "aria-label": "guaranteed"}, "✓"));
    } else {
      td.appendChild(el("span", {"class": "maybe", title: "may not be in the true top-K",
                                 "aria-label": "not guaranteed"}, "?"));
    }
    return td;
  }

  // --- Sparklines ---------------------------------------------------------------

  function sparkRange(pane) {
    var ws = new Date(pane.window_start).getTime();
    var we = new Date(pane.window_end).getTime();
    if (!isFinite(ws) || !isFinite(we) || we <= ws) return null;
    var start = we - ws <= 6 * 60 * MINUTE ? ws : we - 60 * MINUTE;
    start -= start % MINUTE;
    var end = we - we % MINUTE;
    return end > start ? {start: start, end: end} : null;
  }

  function rfc3339(ms) { return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z"); }

  function sparkKey(sel, item) { return item + "\u0000" + sel.event_type; }

  function requestSparks(sel, pane) {
    var range = sparkRange(pane);
    if (!range) return;
    var now = Date.now();
    (pane.rows || []).forEach(function (r) {
      var key = sparkKey(sel, r.item_id);
      var entry = sparks.get(key);
      // At most every SPARK_MS per item, except when the window moved
      // (once per slide): then the sparkline follows it at once.
      var moved = entry && entry.points && (entry.start !== range.start || entry.end !== range.end);
      if (entry && (entry.inflight ||
                    now - entry.fetchedAt < (moved ? 1000 : SPARK_MS))) return;
      entry = entry || {fetchedAt: 0, points: null};
      entry.inflight = true;
      sparks.set(key, entry);
      sparkQueue.push({key: key, sel: sel, item: r.item_id, range: range});
    });
    pumpSparks();
  }

  function pumpSparks() {
    while (sparkActive < SPARK_CONCURRENCY && sparkQueue.length) {
      var job = sparkQueue.shift();
      var shown = state.ranks.has(job.item) && sparkKey(selection(), job.item) === job.key;
      if (!shown) {  // scrolled out of the top-K meanwhile
        var stale = sparks.get(job.key);
        if (stale) stale.inflight = false;
        continue;
      }
      sparkActive++;
      fetchSpark(job);
    }
  }

  function fetchSpark(job) {
    api("/v1/items/" + encodeURIComponent(job.item) + "/series", {
      start: rfc3339(job.range.start), end: rfc3339(job.range.end),
      step: "1m", event_type: job.sel.event_type
    }).then(function (series) {
      sparks.set(job.key, {fetchedAt: Date.now(), inflight: false, start: job.range.start,
                           end: job.range.end, points: series.points || [], error: null});
    }, function (err) {
      sparks.set(job.key, {fetchedAt: Date.now(), inflight: false, start: job.range.start,
                           end: job.range.end, points: null, error: err.message});
    }).then(function () {
      sparkActive--;
      redrawSpark(job.sel, job.item);
      pumpSparks();
    });
  }

  function redrawSpark(sel, item) {
    var rows = $("leaderboard-body").querySelectorAll("tr[data-testid=leaderboard-row]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-item") === item) {
        var cell = rows[i].lastChild;
        while (cell.firstChild) cell.removeChild(cell.firstChild);
        cell.appendChild(sparkSvg(sel, item));
      }
    }
  }

  function sparkSvg(sel, item) {
    var entry = sparks.get(sparkKey(sel, item));
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("data-testid", "sparkline");
    svg.setAttribute("data-item", item);
    svg.setAttribute("width", SPARK_W);
    svg.setAttribute("height", SPARK_H);
    svg.setAttribute("viewBox", "0 0 " + SPARK_W + " " + SPARK_H);
    svg.setAttribute("role", "img");
    var title = document.createElementNS(SVG_NS, "title");
    svg.appendChild(title);
    if (!entry || (!entry.points && !entry.error)) {
      svg.setAttribute("data-state", "loading");
      title.textContent = "loading…";
      return svg;
    }
    if (entry.error) {
      svg.setAttribute("data-state", "error");
      svg.setAttribute("class", "spark spark-error");
      title.textContent = "series: " + entry.error;
      var t = document.createElementNS(SVG_NS, "text");
      t.setAttribute("x", "2"); t.setAttribute("y", String(SPARK_H - 9));
      t.textContent = "no series";
      svg.appendChild(t);
      return svg;
    }
    var n = Math.max(1, Math.round((entry.end - entry.start) / MINUTE));
    var values = new Array(n);
    for (var i = 0; i < n; i++) values[i] = 0;
    var total = 0;
    entry.points.forEach(function (p) {
      var idx = Math.floor((new Date(p.t).getTime() - entry.start) / MINUTE);
      if (idx >= 0 && idx < n) { values[idx] += Number(p.count) || 0; total += Number(p.count) || 0; }
    });
    var max = Math.max.apply(null, values.concat([1]));
    var pad = 2;
    var pts = values.map(function (v, j) {
      var x = n === 1 ? SPARK_W / 2 : pad + j * (SPARK_W - 2 * pad) / (n - 1);
      var y = SPARK_H - pad - v / max * (SPARK_H - 2 * pad);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var area = document.createElementNS(SVG_NS, "polygon");
    area.setAttribute("class", "spark-area");
    area.setAttribute("points", pts.join(" ") + " " + (SPARK_W - pad) + "," + (SPARK_H - pad) +
                      " " + pad + "," + (SPARK_H - pad));
    svg.appendChild(area);
    var line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("class", "spark-line");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
    var last = pts[pts.length - 1].split(",");
    var dot = document.createElementNS(SVG_NS, "circle");
    dot.setAttribute("class", "spark-dot");
    dot.setAttribute("cx", last[0]); dot.setAttribute("cy", last[1]); dot.setAttribute("r", "1.8");
    svg.appendChild(dot);
    svg.setAttribute("data-state", "ok");
    svg.setAttribute("data-points", String(entry.points.length));
    svg.setAttribute("data-total", String(total));
    title.textContent = fmtCount(total) + " in " + fmtTime(rfc3339(entry.start)) + " → " +
      fmtTime(rfc3339(entry.end)) + " UTC, max " + fmtCount(max) + "/min";
    return svg;
  }

  // --- The range form -------------------------------------------------------------

  function toLocalInput(s) {  // RFC 3339 -> "YYYY-MM-DDTHH:MM" (UTC)
    var d = new Date(s);
    return isNaN(d.getTime()) ? "" : d.toISOString().slice(0, 16);
  }

  function fromLocalInput(v) {  // "YYYY-MM-DDTHH:MM[:SS]" read as UTC
    if (!v) return "";
    return v.length === 16 ? v + ":00Z" : v.replace(/\.\d+$/, "") + "Z";
  }

  function fillRangeDefaults(pane) {
    var s = $("range-start"), e = $("range-end");
    if (s.value || e.value || s.dataset.touched || e.dataset.touched) return;
    s.value = toLocalInput(pane.window_start);
    e.value = toLocalInput(pane.window_end);
  }

  function submitRange(ev) {
    ev.preventDefault();
    var query = {
      k: $("range-k").value,
      start: fromLocalInput($("range-start").value),
      end: fromLocalInput($("range-end").value),
      event_type: $("range-event-type").value || ALL,
      method: $("range-method").value || "exact"
    };
    var button = $("range-submit");
    button.disabled = true;
    $("range-results").setAttribute("aria-busy", "true");
    $("range-summary").textContent = "Querying…";
    api("/v1/topk", query).then(function (res) {
      showError("range-error", null);
      showRange(res);
    }, function (err) {
      showError("range-error", err.message);
      $("range-summary").textContent = "";
      $("range-results").hidden = true;
      var body = $("range-body");
      while (body.firstChild) body.removeChild(body.firstChild);
    }).then(function () {
      button.disabled = false;
      $("range-results").removeAttribute("aria-busy");
    });
  }

  function showRange(res) {
    var rows = res.rows || [];
    var approx = rows.some(function (r) { return r.lower_bound !== undefined && r.lower_bound !== null; });
    var table = $("range-results");
    table.classList.toggle("no-bounds", !approx);
    var body = $("range-body");
    while (body.firstChild) body.removeChild(body.firstChild);
    rows.forEach(function (r) {
      var tr = el("tr", {"data-testid": "range-result-row", "data-item": r.item_id,
                         "data-rank": r.rank, "data-count": r.count});
      tr.appendChild(el("td", {"class": "num rank"}, r.rank));
      tr.appendChild(el("td", {"class": "item", "data-testid": "item", title: r.item_id}, r.item_id));
      tr.appendChild(el("td", {"class": "num count", "data-testid": "count"}, fmtCount(r.count)));
      tr.appendChild(boundsCell(r, approx));
      body.appendChild(tr);
    });
    table.hidden = false;
    var f = res.freshness || {};
    $("range-summary").textContent = (rows.length ? "Top " + rows.length : "No items") +
      " of " + eventTypeLabel(res.event_type || ALL) + ", " + fmtTime(res.start) + " → " +
      fmtTime(res.end) + " UTC, " + (res.method || "exact") +
      (f.snapshot_seq !== undefined ? " (snapshot #" + f.snapshot_seq + ")" : "");
  }

  // --- Start -------------------------------------------------------------------------

  function init() {
    var k = parseInt(params.get("k") || "", 10);
    if (isFinite(k) && k > 0) $("k").value = String(k);
    $("controls").addEventListener("submit", function (ev) { ev.preventDefault(); poll(); });
    $("spec").addEventListener("change", function () { refillSpecOptions(); poll(); });
    $("event-type").addEventListener("change", poll);
    $("method").addEventListener("change", poll);
    $("k").addEventListener("change", poll);
    $("range-form").addEventListener("submit", submitRange);
    ["range-start", "range-end"].forEach(function (id) {
      $(id).addEventListener("input", function () { $(id).dataset.touched = "1"; });
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    setInterval(tickAge, 1000);
    loadCoverage();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
}());
