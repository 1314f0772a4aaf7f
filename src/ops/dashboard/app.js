"use strict";
// palisade operations dashboard: polls `<this page>/data` and updates the panels in place.
// Plain JavaScript, no dependencies; every value is written with textContent (never as HTML).
(function () {
  var errors = document.getElementById("js-errors");
  function reportError(msg) {
    var li = document.createElement("li");
    li.textContent = String(msg).slice(0, 500);
    if (errors.children.length < 20) errors.appendChild(li);
    errors.dataset.count = String(Number(errors.dataset.count || 0) + 1);
    document.getElementById("js-errors-box").hidden = false;
  }
  window.addEventListener("error", function (e) { reportError("error: " + (e.message || e)); });
  window.addEventListener("unhandledrejection", function (e) { reportError("unhandled rejection: " + (e.reason && e.reason.message || e.reason)); });
  var consoleError = console.error.bind(console);
  console.error = function () { reportError("console.error: " + Array.prototype.join.call(arguments, " ")); consoleError.apply(null, arguments); };

  var base = location.pathname.replace(/\/+$/, "");
  var dataUrl = base + "/data";
  var interval = 1000;
  var lastOk = 0;
  var lastData = null;
  var updates = 0;
  var inFlight = false;
  var SVGNS = "http://www.w3.org/2000/svg";

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(e, text) { var t = String(text); if (e.textContent !== t) e.textContent = t; }
  function fmt(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return "—";
    if (typeof n !== "number") return String(n);
    if (digits === undefined) digits = Math.abs(n) >= 100 || Number.isInteger(n) ? 0 : 2;
    return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }
  function pct(r) { return r === null || r === undefined ? "—" : (r * 100).toFixed(1) + " %"; }
  function dur(ms) {
    if (ms === null || ms === undefined || ms < 0) return "—";
    var s = Math.floor(ms / 1000);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    var h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function badge(e, state) {
    var s = String(state === null || state === undefined ? "—" : state).toLowerCase();
    setText(e, s.replace("_", " "));
    var cls = "badge st-" + s.replace(/[^a-z_]/g, "");
    if (e.className !== cls) e.className = cls;
    e.dataset.state = s;
  }

  // Keyed children: the element for `key` under `parent`, created once with `make`; the others go.
  function keyed(parent, items, keyOf, make, update) {
    var seen = {};
    items.forEach(function (item, i) {
      var key = keyOf(item);
      seen[key] = true;
      var node = null;
      for (var c = parent.firstElementChild; c; c = c.nextElementSibling) {
        if (c.dataset.key === key) { node = c; break; }
      }
      if (!node) { node = make(item); node.dataset.key = key; }
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
      update(node, item);
    });
    Array.prototype.slice.call(parent.children).forEach(function (c) { if (!seen[c.dataset.key]) parent.removeChild(c); });
  }
  function showPanel(id, on) { var p = $(id); if (p.hidden === on) p.hidden = !on; }

  // A line chart of aligned series (arrays with nulls for gaps) into an <svg>, fixed size.
  function chart(svg, series, opts) {
    opts = opts || {};
    var W = 300, H = 60, P = 2;
    var max = opts.max || 0;
    series.forEach(function (s) { (s || []).forEach(function (v) { if (v !== null && v > max) max = v; }); });
    if (opts.threshold && opts.threshold > max) max = opts.threshold;
    if (!(max > 0)) max = 1;
    var n = 0;
    series.forEach(function (s) { if (s && s.length > n) n = s.length; });
    // The time axis is right-aligned: the newest sample at the right edge, at least 30 slots wide.
    var cap = Math.max(n, Math.min((lastData && lastData.history_points) || n, 30));
    var paths = series.map(function (s) {
      var d = "", pen = false;
      (s || []).forEach(function (v, i) {
        if (v === null) { pen = false; return; }
        var x = P + (W - 2 * P) * (cap <= 1 ? 1 : (i + (cap - n)) / (cap - 1));
        var y = H - P - (H - 2 * P) * (v / max);
        // A segment starts with a dot (a tiny stroke with round caps), so a lone sample shows.
        d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1) + (pen ? "" : "h0.01");
        pen = true;
      });
      return d;
    });
    if (!svg.firstChild) {
      svg.setAttribute("viewBox", "0 0 " + W + " " + H);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("class", "chart");
      svg.setAttribute("role", "img");
      [H * 0.25, H * 0.5, H * 0.75].forEach(function (y) {
        var l = document.createElementNS(SVGNS, "line");
        l.setAttribute("class", "gl"); l.setAttribute("x1", "0"); l.setAttribute("x2", String(W));
        l.setAttribute("y1", String(y)); l.setAttribute("y2", String(y));
        svg.appendChild(l);
      });
      var thr = document.createElementNS(SVGNS, "line");
      thr.setAttribute("class", "thr"); thr.setAttribute("x1", "0"); thr.setAttribute("x2", String(W));
      thr.style.display = "none";
      svg.appendChild(thr);
      for (var i = 0; i < 3; i++) {
        var p = document.createElementNS(SVGNS, "path");
        p.setAttribute("class", "s" + i);
        svg.appendChild(p);
      }
      var t = document.createElementNS(SVGNS, "text");
      t.setAttribute("x", "4"); t.setAttribute("y", "10");
      svg.appendChild(t);
    }
    var ps = svg.querySelectorAll("path");
    for (var j = 0; j < ps.length; j++) ps[j].setAttribute("d", paths[j] || "");
    var thrLine = svg.querySelector(".thr");
    if (opts.threshold) {
      var ty = (H - P - (H - 2 * P) * (opts.threshold / max)).toFixed(1);
      thrLine.setAttribute("y1", ty); thrLine.setAttribute("y2", ty); thrLine.style.display = "";
    } else thrLine.style.display = "none";
    setText(svg.querySelector("text"), "max " + (opts.pct ? pct(max) : fmt(max) + (opts.unit || "")));
    var last = series.map(function (s) { return s && s.length ? s[s.length - 1] : null; });
    svg.setAttribute("aria-label", (opts.label || "chart") + ": latest " + last.map(function (v) { return opts.pct ? pct(v) : fmt(v); }).join(", "));
  }
  function svgEl() { return document.createElementNS(SVGNS, "svg"); }
  function legend(names, thr) {
    var d = el("div", "legend");
    names.forEach(function (n, i) { var s = el("span"); s.appendChild(el("i", "l" + i)); s.appendChild(document.createTextNode(n)); d.appendChild(s); });
    if (thr) { var s = el("span"); s.appendChild(el("i", "lt")); s.appendChild(document.createTextNode(thr)); d.appendChild(s); }
    return d;
  }
  // A 3-column grid of labelled values; returns the map of value elements by name.
  function stats(card, names) {
    var g = el("div", "stats");
    card._v = {};
    names.forEach(function (n) {
      var d = el("div");
      d.appendChild(el("span", "k", n + " "));
      var v = el("span", "v", "—");
      d.appendChild(v);
      g.appendChild(d);
      card._v[n] = v;
    });
    card.appendChild(g);
  }

  function act(params, label) {
    if (!lastData || !lastData.actions) return;
    var q = Object.keys(params).map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]); }).join("&");
    fetch(lastData.actions.url + "?" + q, { method: "POST", headers: { "x-palisade-action": "dashboard" }, cache: "no-store" })
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (rj) { setText($("action-result"), rj[1].ok ? label + ": done" : label + ": " + (rj[1].error || ("HTTP " + rj[0]))); poll(); })
      .catch(function (e) { setText($("action-result"), label + ": failed (" + e.message + ")"); });
  }

  function renderHealth(d) {
    var h = d.health;
    showPanel("panel-health", !!h);
    if (!h) return;
    badge($("health-live"), h.liveness);
    badge($("health-ready"), h.readiness);
    var now = Date.now();
    keyed($("health-rows"), h.components, function (c) { return c.name; }, function () {
      var tr = el("tr");
      ["name", "kind", "state", "reason", "since"].forEach(function (k) { var td = el("td"); td.dataset.f = k; tr.appendChild(td); });
      tr.querySelector('[data-f="state"]').appendChild(el("span", "badge"));
      return tr;
    }, function (tr, c) {
      tr.dataset.component = c.name;
      setText(tr.querySelector('[data-f="name"]'), c.name);
      setText(tr.querySelector('[data-f="kind"]'), c.kind);
      badge(tr.querySelector('[data-f="state"] span'), c.state);
      var r = tr.querySelector('[data-f="reason"]'); setText(r, c.reason || ""); r.title = c.reason || "";
      var since = Date.parse(c.since);
      var s = tr.querySelector('[data-f="since"]'); setText(s, isNaN(since) ? "—" : dur(now - since)); s.title = c.since || "";
    });
    var more = $("health-more");
    more.hidden = !h.components_truncated;
    setText(more, "… and " + h.components_truncated + " more components");
  }

  function renderBreakers(d) {
    showPanel("panel-breakers", d.breakers.length > 0);
    keyed($("breaker-list"), d.breakers, function (b) { return b.stack; }, function (b) {
      var c = el("div", "card");
      var h = el("h3"); h.appendChild(el("span", "", b.stack)); h.appendChild(el("span", "badge"));
      c.appendChild(h);
      stats(c, ["mode", "probe in", "trips", "calls", "failures", "slow", "fail rate", "slow rate", "rejected"]);
      c._svg = svgEl(); c.appendChild(c._svg);
      c.appendChild(legend(["failure rate", "slow-call rate"], "threshold"));
      if (d.actions) {
        var a = el("div", "actions");
        [["force_open", "Force open"], ["force_closed", "Force closed"], ["reset", "Reset"]].forEach(function (op) {
          var btn = el("button", "", op[1]); btn.type = "button";
          btn.addEventListener("click", function () { act({ action: "breaker." + op[0], stack: b.stack }, b.stack + " breaker " + op[1].toLowerCase()); });
          a.appendChild(btn);
        });
        c.appendChild(a);
      }
      return c;
    }, function (c, b) {
      c.dataset.breaker = b.stack;
      c.dataset.state = b.state;
      badge(c.querySelector("h3 .badge"), b.state);
      var v = c._v, t = b.thresholds || {};
      setText(v["mode"], b.mode.replace("forcedopen", "forced open").replace("metricsonly", "metrics only"));
      c._retryAt = b.retry_after_ms === null || b.retry_after_ms === undefined ? null : Date.now() + b.retry_after_ms;
      setText(v["trips"], fmt(b.trips));
      setText(v["calls"], fmt(b.window_calls));
      setText(v["failures"], fmt(b.window_failures));
      setText(v["slow"], fmt(b.window_slow));
      setText(v["fail rate"], pct(b.failure_rate) + (t.failure_rate ? " / " + pct(t.failure_rate) : ""));
      setText(v["slow rate"], pct(b.slow_rate) + (t.slow_call_rate ? " / " + pct(t.slow_call_rate) : ""));
      setText(v["rejected"], fmt(b.rejected));
      chart(c._svg, [b.history.failure_rate, b.history.slow_rate], { max: 1, pct: true, threshold: t.failure_rate, label: b.stack + " breaker failure and slow-call rates" });
    });
    tickBreakers();
  }
  function tickBreakers() {
    var cards = $("breaker-list").children;
    for (var i = 0; i < cards.length; i++) {
      var c = cards[i];
      if (!c._v) continue;
      setText(c._v["probe in"], c._retryAt === null ? "—" : (Math.max(0, c._retryAt - Date.now()) / 1000).toFixed(1) + " s");
    }
  }

  function renderRateLimits(d) {
    showPanel("panel-rate-limits", d.rate_limits.length > 0 || !!d.refused_tenants);
    var cards = [];
    d.rate_limits.forEach(function (rl) {
      rl.tiers.forEach(function (t) { cards.push({ rl: rl, t: t, key: rl.stack + "/" + t.name }); });
    });
    keyed($("rl-list"), cards, function (x) { return x.key; }, function (x) {
      var c = el("div", "card");
      var h = el("h3"); h.appendChild(el("span", "", x.rl.stack + " · tier " + x.t.name)); h.appendChild(el("span", "muted rate"));
      c.appendChild(h);
      stats(c, ["admitted", "refused", "admit/s", "refuse/s", "tenants", "overflow"]);
      c._svg = svgEl(); c.appendChild(c._svg);
      c.appendChild(legend(["admitted / s", "refused / s"]));
      return c;
    }, function (c, x) {
      var t = x.t, rl = x.rl, v = c._v;
      c.dataset.tier = t.name;
      setText(c.querySelector(".rate"), fmt(t.limit) + " per " + fmt(t.period_ms / 1000) + " s, burst " + fmt(t.burst));
      setText(v["admitted"], fmt(t.admitted));
      setText(v["refused"], fmt(t.rejected));
      var la = t.history.admitted_per_s, lr = t.history.rejected_per_s;
      setText(v["admit/s"], fmt(la.length ? la[la.length - 1] : null, 1));
      setText(v["refuse/s"], fmt(lr.length ? lr[lr.length - 1] : null, 1));
      setText(v["tenants"], fmt(rl.tracked_tenants));
      setText(v["overflow"], fmt(rl.overflowed));
      chart(c._svg, [la, lr], { unit: "/s", label: rl.stack + " tier " + t.name + " admitted and refused per second" });
    });
    var r = d.refused_tenants;
    $("refused").hidden = !r;
    if (!r) return;
    setText($("refused-total"), "(" + fmt(r.total) + " refusals, " + r.tracked + " of at most " + r.capacity + " tenants tracked; top " + r.tenants.length + " shown)");
    var empty = r.tenants.length ? [] : [{ tenant: "", refused: null, error: 0, empty: true }];
    keyed($("refused-rows"), r.tenants.length ? r.tenants : empty, function (t) { return t.tenant; }, function () {
      var tr = el("tr"); tr.appendChild(el("td")); tr.appendChild(el("td", "num")); tr.appendChild(el("td", "num")); return tr;
    }, function (tr, t) {
      if (t.empty) { setText(tr.children[0], "none refused yet"); setText(tr.children[1], ""); setText(tr.children[2], ""); return; }
      tr.dataset.tenant = t.tenant;
      setText(tr.children[0], t.tenant); tr.children[0].title = t.tenant;
      setText(tr.children[1], fmt(t.refused));
      setText(tr.children[2], t.error ? "≤ " + fmt(t.error) : "0");
    });
  }

  function renderBulkheads(d) {
    showPanel("panel-bulkheads", d.bulkheads.length > 0);
    keyed($("bh-list"), d.bulkheads, function (b) { return b.stack; }, function (b) {
      var c = el("div", "card");
      var h = el("h3"); h.appendChild(el("span", "", b.stack + " · " + b.name)); h.appendChild(el("span", "badge"));
      c.appendChild(h);
      var m = el("div", "meter"); m.setAttribute("role", "meter"); m.setAttribute("aria-label", "slots in use"); m.appendChild(el("span")); c.appendChild(m);
      stats(c, ["in flight", "limit", "queued", "available", "rejected", "refused/s"]);
      c._svg = svgEl(); c.appendChild(c._svg);
      c.appendChild(legend(["in flight", "queued", "limit"]));
      return c;
    }, function (c, b) {
      var v = c._v;
      c.dataset.bulkhead = b.stack;
      badge(c.querySelector("h3 .badge"), b.saturated ? "saturated" : "ok");
      c.querySelector("h3 .badge").className = "badge " + (b.saturated ? "st-warn" : "st-ok");
      var m = c.querySelector(".meter");
      m.setAttribute("aria-valuenow", String(b.in_flight)); m.setAttribute("aria-valuemax", String(b.limit));
      m.firstChild.style.width = (b.limit > 0 ? Math.min(100, 100 * b.in_flight / b.limit) : 0) + "%";
      setText(v["in flight"], fmt(b.in_flight)); setText(v["limit"], fmt(b.limit));
      setText(v["queued"], fmt(b.queued)); setText(v["available"], fmt(b.available));
      setText(v["rejected"], fmt(b.rejected));
      var rr = b.history.rejected_per_s; setText(v["refused/s"], fmt(rr.length ? rr[rr.length - 1] : null, 1));
      chart(c._svg, [b.history.in_flight, b.history.queued, b.history.limit], { label: b.stack + " bulkhead in flight, queued and limit" });
    });
  }

  function renderGates(d) {
    showPanel("panel-gates", d.gates.length > 0);
    keyed($("gate-list"), d.gates, function (g) { return g.stack; }, function (g) {
      var c = el("div", "card");
      var h = el("h3"); h.appendChild(el("span", "", g.stack + " · " + g.name)); h.appendChild(el("span", "badge"));
      c.appendChild(h);
      stats(c, ["level", "for", "control", "read-only", "shed", "writes refused", "load", "shed/s"]);
      c._svg = svgEl(); c.appendChild(c._svg);
      c.appendChild(legend(["level (0 normal … 4 maintenance)", "shed / s"]));
      if (d.actions) {
        var a = el("div", "actions");
        var id = "gate-level-" + g.stack.replace(/[^A-Za-z0-9_-]/g, "_");
        var lab = el("label", "", "set level "); lab.htmlFor = id;
        var sel = el("select"); sel.id = id;
        (d.actions.gate_levels || g.levels).forEach(function (l) { var o = el("option", "", l.replace("_", " ")); o.value = l; sel.appendChild(o); });
        var btn = el("button", "", "Apply"); btn.type = "button";
        btn.addEventListener("click", function () { act({ action: "gate.set_level", stack: g.stack, level: sel.value }, g.stack + " gate → " + sel.value); });
        var auto = el("button", "", "Back to automatic"); auto.type = "button";
        auto.addEventListener("click", function () { act({ action: "gate.clear", stack: g.stack }, g.stack + " gate automatic"); });
        a.appendChild(lab); a.appendChild(sel); a.appendChild(btn); a.appendChild(auto);
        c.appendChild(a);
      }
      return c;
    }, function (c, g) {
      var v = c._v;
      c.dataset.gate = g.stack;
      c.dataset.level = g.level;
      badge(c.querySelector("h3 .badge"), g.level);
      setText(v["level"], g.level.replace("_", " "));
      c._since = g.since_ms;
      setText(v["control"], g.auto ? (g.manual_level ? "manual override" : "automatic") : "operator");
      setText(v["read-only"], g.read_only ? "yes" : "no");
      setText(v["shed"], fmt(g.shed));
      setText(v["writes refused"], fmt(g.read_only_refused));
      setText(v["load"], fmt(g.load, 2));
      var sh = g.history.shed_per_s; setText(v["shed/s"], fmt(sh.length ? sh[sh.length - 1] : null, 1));
      chart(c._svg, [g.history.level, sh], { max: 4, label: g.stack + " gate level and shed per second" });
    });
    tickGates();
  }
  function tickGates() {
    var cards = $("gate-list").children;
    for (var i = 0; i < cards.length; i++) {
      var c = cards[i];
      if (c._v) setText(c._v["for"], c._since ? "≥ " + dur(Date.now() - c._since) : "—");
    }
  }

  function renderLatency(d) {
    showPanel("panel-latency", d.latency.length > 0);
    keyed($("lat-list"), d.latency, function (l) { return l.signal; }, function (l) {
      var c = el("div", "card");
      var h = el("h3"); h.appendChild(el("span", "", l.signal)); h.appendChild(el("span", "muted win"));
      c.appendChild(h);
      var tbl = el("table", "tbl lat");
      var thead = el("thead"); var tr = el("tr");
      ["last", "calls", "errors", "p50", "p95", "p99"].forEach(function (n, i) { var th = el("th", i ? "num" : "", n); th.scope = "col"; tr.appendChild(th); });
      thead.appendChild(tr); tbl.appendChild(thead); tbl.appendChild(el("tbody"));
      c.appendChild(tbl);
      c._svg = svgEl(); c.appendChild(c._svg);
      c.appendChild(legend(["p50", "p99", "p95"]));
      return c;
    }, function (c, l) {
      c.dataset.signal = l.signal;
      keyed(c.querySelector("tbody"), l.windows, function (w) { return String(w.window_ms); }, function () {
        var tr = el("tr"); for (var i = 0; i < 6; i++) tr.appendChild(el("td", i ? "num" : "")); return tr;
      }, function (tr, w) {
        var cells = [win(w.window_ms), fmt(w.count), fmt(w.errors), ms(w.p50_ms), ms(w.p95_ms), ms(w.p99_ms)];
        cells.forEach(function (t, i) { setText(tr.children[i], t); });
      });
      chart(c._svg, [l.history.p50, l.history.p99, l.history.p95], { unit: " ms", label: l.signal + " latency p50, p99, p95 in milliseconds" });
    });
    var more = $("lat-more");
    more.hidden = !d.latency_truncated;
    setText(more, "… and " + d.latency_truncated + " more signals");
  }
  function ms(v) {
    if (v === null || v === undefined) return "—";
    if (v < 1) return Math.round(v * 1000) + " µs";
    return fmt(v, v < 10 ? 2 : 0) + " ms";
  }
  function win(w) { return w % 60000 === 0 ? (w / 60000) + " min" : fmt(w / 1000) + " s"; }

  function renderAudit(d) {
    var a = d.audit;
    showPanel("panel-audit", !!a && a.enabled);
    if (!a || !a.enabled) return;
    setText($("audit-appended"), fmt(a.appended));
    setText($("audit-dropped"), fmt(a.dropped));
    var headText = a.head || "—";
    setText($("audit-head"), headText.length > 24 ? headText.slice(0, 24) + "…" : headText);
    $("audit-head").title = headText;
    var t = a.tail;
    if (t) {
      badge($("audit-verified"), a.failed ? "failed" : (t.verified ? "verified" : "broken"));
      $("audit-verified").className = "badge " + (a.failed || !t.verified ? "st-bad" : "st-ok");
      var vh = t.verified_head || "—";
      setText($("audit-vhead"), vh.length > 24 ? vh.slice(0, 24) + "…" : vh);
      $("audit-vhead").title = t.error ? t.error : vh;
      keyed($("audit-rows"), t.recent, function (r) { return String(r.seq); }, function () {
        var tr = el("tr"); tr.appendChild(el("td", "num")); tr.appendChild(el("td")); tr.appendChild(el("td")); tr.appendChild(el("td")); return tr;
      }, function (tr, r) {
        setText(tr.children[0], r.seq);
        setText(tr.children[1], new Date(r.ts_ms).toISOString().slice(11, 23));
        setText(tr.children[2], r.kind);
        setText(tr.children[3], r.tenant || "");
      });
    } else {
      badge($("audit-verified"), a.failed ? "failed" : "not checked");
      $("audit-verified").className = "badge " + (a.failed ? "st-bad" : "");
    }
    $("audit-table").hidden = !t;
  }

  function render(d) {
    lastData = d;
    interval = Math.max(250, d.interval_ms || 1000);
    setText($("title"), d.title);
    document.title = d.title + " · operations";
    setText($("mode"), d.actions ? "operator actions on" : "read-only");
    setText($("interval"), "every " + (interval / 1000) + " s, " + d.history_points + " samples kept");
    renderHealth(d);
    renderBreakers(d);
    renderRateLimits(d);
    renderBulkheads(d);
    renderGates(d);
    renderLatency(d);
    renderAudit(d);
    showPanel("panel-status", !!d.status);
    if (d.status) {
      var details = $("panel-status").querySelector("details");
      if (!details.open) setText($("status-raw"), "(open to see the snapshot)");
      else setText($("status-raw"), JSON.stringify(d.status, null, 2));
    }
    updates += 1;
    document.body.dataset.updates = String(updates);
    document.body.dataset.ready = "true";
    setText($("updated"), new Date(d.generated_ms).toISOString().slice(11, 19) + "Z");
  }

  function markStale() {
    var age = Date.now() - lastOk;
    var stale = lastOk === 0 ? false : age > Math.max(3 * interval, 3000);
    if (lastOk === 0 && updates === 0 && document.body.dataset.failed === "true") stale = true;
    var conn = $("conn");
    if (stale) {
      if (document.body.dataset.stale !== "true") document.body.dataset.stale = "true";
      $("stale-banner").hidden = false;
      setText($("stale-for"), lastOk ? dur(age) : "ever");
      setText(conn, "stale"); conn.className = "pill pill-stale";
    } else if (lastOk) {
      if (document.body.dataset.stale !== "false") document.body.dataset.stale = "false";
      $("stale-banner").hidden = true;
      setText(conn, "live"); conn.className = "pill pill-live";
    }
    tickBreakers();
    tickGates();
  }

  function poll() {
    if (inFlight) return;
    inFlight = true;
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctl) ctl.abort(); }, Math.max(2000, 2 * interval));
    fetch(dataUrl, { cache: "no-store", headers: { accept: "application/json" }, signal: ctl ? ctl.signal : undefined })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (d) { lastOk = Date.now(); document.body.dataset.failed = "false"; render(d); })
      .catch(function () { document.body.dataset.failed = "true"; })
      .then(function () { clearTimeout(timer); inFlight = false; markStale(); });
  }

  setText($("data-url"), dataUrl);
  $("panel-status").querySelector("details").addEventListener("toggle", function () { if (lastData) render(lastData); });
  poll();
  (function loop() { setTimeout(function () { poll(); loop(); }, interval); })();
  setInterval(markStale, 500);
})();
