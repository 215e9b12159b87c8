// Vega Gateway status page: polls the admin JSON endpoints and draws small
// canvas charts. No dependencies; served from the binary.
"use strict";
(function () {
  var POLL_MS = 2000, POINTS = 150;
  var KEY_STORE = "vega-admin-key";
  var key = sessionStorage.getItem(KEY_STORE) || "";
  var asked = false, stopped = false; // asked: the current key came from a prompt and is unproven
  var prev = null; // previous stats sample, for rates
  var series = { pool: {}, rps: {}, lat: {}, tps: {} };
  var colors = { max: "#8a96a3", active: "#f0883e", idle: "#3fb950", waiting: "#f85149",
    rps: "#58a6ff", errors: "#f85149", p50: "#3fb950", p99: "#d29922", ttfb50: "#58a6ff", ttfb99: "#bc8cff", tps: "#bc8cff" };

  function $(id) { return document.getElementById(id); }
  function status(msg) { $("status").textContent = msg; }

  function fetchJSON(path) {
    var headers = {};
    if (key) headers["X-API-Key"] = key;
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      if (r.status === 401) { var e = new Error("unauthorized"); e.unauthorized = true; throw e; }
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  }

  function push(group, name, v) {
    var s = series[group][name] || (series[group][name] = []);
    s.push(v);
    if (s.length > POINTS) s.shift();
  }

  function draw(canvasID, group, legendID) {
    var c = $(canvasID), ctx = c.getContext("2d");
    var dpr = window.devicePixelRatio || 1, w = c.clientWidth || c.width, h = c.clientHeight || c.height;
    if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var names = Object.keys(series[group]), top = 0;
    names.forEach(function (n) { series[group][n].forEach(function (v) { if (v > top) top = v; }); });
    top = niceCeil(top || 1);
    var padL = 44, padB = 14, cw = w - padL - 6, ch = h - padB - 8;
    ctx.strokeStyle = "#24303c"; ctx.fillStyle = "#8a96a3"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
    for (var i = 0; i <= 4; i++) {
      var y = 8 + ch - ch * i / 4;
      ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(w - 6, y); ctx.stroke();
      ctx.fillText(fmt(top * i / 4), 2, y + 4);
    }
    var legend = $(legendID);
    legend.textContent = "";
    names.forEach(function (n) {
      var s = series[group][n];
      ctx.strokeStyle = colors[n] || "#d8dee6"; ctx.lineWidth = n === "max" ? 1 : 2;
      ctx.setLineDash(n === "max" ? [4, 4] : []);
      ctx.beginPath();
      s.forEach(function (v, j) {
        var x = padL + cw * (j + POINTS - s.length) / (POINTS - 1), y = 8 + ch - ch * v / top;
        if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      if (s.length) { // mark the latest value: a chart with few samples is otherwise a speck
        var lx = padL + cw, ly = 8 + ch - ch * s[s.length - 1] / top;
        ctx.setLineDash([]); ctx.fillStyle = colors[n] || "#d8dee6";
        ctx.beginPath(); ctx.arc(lx, ly, 3, 0, 2 * Math.PI); ctx.fill();
      }
      var item = document.createElement("span"), swatch = document.createElement("i");
      swatch.style.background = colors[n] || "#d8dee6"; // CSSOM, allowed by the CSP
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(n + " " + fmt(s[s.length - 1] || 0)));
      legend.appendChild(item);
    });
    ctx.setLineDash([]);
    // For tests and curious operators: how many samples the chart plots.
    c.dataset.points = String(names.reduce(function (n, k) { return Math.max(n, series[group][k].length); }, 0));
  }

  function niceCeil(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  function fmt(v) {
    if (v >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return Math.abs(v - Math.round(v)) < 1e-9 ? String(Math.round(v)) : v.toFixed(1);
  }
  function bytes(v) { return v == null ? "n/a" : fmt(v) + "B"; }
  function dur(s) {
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }

  // sum adds one pool field over every backend.
  function sum(backends, field) {
    return backends.reduce(function (n, b) { return n + (b[field] || 0); }, 0);
  }

  function healthText(b) {
    var h = b.health || {};
    if (b.http_client_closed) return ["closed", "bad"];
    if (h.healthy) return ["healthy", "ok"];
    if (h.down) return ["down", "bad"];
    return [h.probed ? "not ready" : "not probed yet", "warn"];
  }

  function breakerText(br) {
    if (!br || br.state !== "open") return ["closed", "ok", br && br.opens ? br.opens + " opens" : ""];
    var until = br.open_until ? " until " + new Date(br.open_until).toLocaleTimeString() : "";
    return ["open" + until, "bad", br.consecutive_failures + " failures, " + br.opens + " opens"];
  }

  // renderFleet fills the backends table: one row per backend.
  function renderFleet(backends, routing) {
    var section = $("fleet-section");
    if (!routing) { section.hidden = true; return; }
    section.hidden = false;
    $("routing").textContent = "policy " + routing.policy + " · no backend " + fmt(routing.no_backend || 0) +
      " · model missing " + fmt(routing.model_missing || 0) +
      (routing.discovery || []).map(function (d) {
        return " · dns " + d.name + ": " + fmt(d.backends.length) + " serving, " + fmt(d.joining.length) + " joining, " +
          fmt(d.draining.length) + " draining, " + fmt(d.lookup_failures) + " failed lookups" + (d.last_error ? " (failing)" : "");
      }).join("");
    var rows = backends.map(function (b) {
      var h = healthText(b), br = breakerText(b.breaker), models = b.models || {}, cat = b.catalogue || {};
      var out = b.outstanding || {}, byModel = out.by_model || {};
      var picks = Object.keys(b.picks || {}).filter(function (r) { return b.picks[r] > 0; }).sort()
        .map(function (r) { return esc(r) + " " + fmt(b.picks[r]); });
      var installed = cat.known ? String((models.installed || []).length) : "unknown";
      if (cat.error) installed += " (refresh failing)";
      return "<tr data-backend=\"" + esc(b.name) + "\"><td>" + esc(b.name) + "<span class=\"url\">" + esc(b.url) + "</span></td>" +
        "<td class=\"" + h[1] + "\">" + h[0] + "</td>" +
        "<td class=\"" + br[1] + "\" title=\"" + esc(br[2]) + "\">" + esc(br[0]) + "</td>" +
        "<td>" + ((models.loaded || []).map(esc).join(", ") || "–") + "</td>" +
        "<td title=\"" + esc((models.installed || []).join(", ")) + "\">" + esc(installed) + "</td>" +
        "<td title=\"" + esc(Object.keys(byModel).sort().map(function (m) { return m + " " + byModel[m]; }).join(", ")) + "\">" + fmt(out.total || 0) + "</td>" +
        "<td>" + fmt(b.connections_active || 0) + " / " + fmt(b.max_connections || 0) + "</td>" +
        "<td>" + (picks.join(" · ") || "–") + "</td>" +
        "<td>" + fmt(b.cold_loads || 0) + "</td><td>" + fmt(b.busy || 0) + "</td><td>" + fmt(b.failures || 0) + "</td></tr>";
    });
    $("fleet").querySelector("tbody").innerHTML = rows.join("");
  }

  function pct(r) { return (100 * (r || 0)).toFixed(1) + "%"; }

  // renderCache shows the response cache's section (hidden when it is off).
  function renderCache(c) {
    $("cache-section").hidden = !c;
    if (!c) { return; }
    var held = c.store === "redis" ? "in Redis, " + fmt(c.store_errors) + " store errors" :
      bytes(c.bytes) + " of " + bytes(c.max_bytes) + ", " + fmt(c.entries) + " entries, " + fmt(c.evictions) + " evictions";
    $("cache-summary").textContent = "hit rate " + pct(c.hit_rate) + " · " + held;
    $("cache").querySelector("tbody").innerHTML = (c.routes || []).map(function (r) {
      return "<tr><td>" + esc(r.route) + "</td><td>" + esc(r.model) + "</td><td>" + fmt(r.hits) + "</td><td>" + fmt(r.misses) +
        "</td><td>" + fmt(r.bypasses) + "</td><td>" + pct(r.hit_rate) + "</td></tr>";
    }).join("");
  }

  function render(pools, st) {
    var p = pools || {};
    var backends = p.pools && p.pools.length ? p.pools : [p];
    push("pool", "max", sum(backends, "max_connections"));
    push("pool", "active", sum(backends, "connections_active"));
    push("pool", "idle", sum(backends, "connections_idle"));
    push("pool", "waiting", sum(backends, "requests_waiting"));
    // Rates use the server's clock: the interval between the two counter
    // readings, not between two timers of a possibly throttled tab.
    var now = st.uptime_seconds != null ? st.uptime_seconds * 1000 : performance.now();
    var errs = (st.requests_by_status_class || {})["5xx"] || 0;
    if (prev && now > prev.at) {
      var dt = (now - prev.at) / 1000;
      push("rps", "rps", Math.max(0, (st.requests_total - prev.total) / dt));
      push("rps", "errors", Math.max(0, (errs - prev.errs) / dt));
      push("tps", "tps", Math.max(0, (st.completion_tokens - prev.completion) / dt));
    }
    prev = { at: now, total: st.requests_total, errs: errs, completion: st.completion_tokens };
    push("lat", "p50", (st.duration_ms || {}).p50 || 0);
    push("lat", "p99", (st.duration_ms || {}).p99 || 0);
    push("lat", "ttfb50", (st.ttfb_ms || {}).p50 || 0);
    push("lat", "ttfb99", (st.ttfb_ms || {}).p99 || 0);
    draw("c-pool", "pool", "l-pool"); draw("c-rps", "rps", "l-rps");
    draw("c-lat", "lat", "l-lat"); draw("c-tps", "tps", "l-tps");

    $("version").textContent = (st.version || "") + " · " + (st.go_version || "");
    var badge = $("health");
    if (backends.length > 1) {
      var healthy = backends.filter(function (b) { return (b.health || {}).healthy && !b.http_client_closed; }).length;
      badge.textContent = healthy + "/" + backends.length + " backends healthy";
      badge.className = "badge " + (healthy === backends.length ? "ok" : healthy ? "warn" : "bad");
    } else {
      var h = p.health || {};
      badge.textContent = h.healthy ? "upstream healthy" : h.down ? "upstream down" : "upstream not ready";
      badge.className = "badge " + (h.healthy ? "ok" : "bad");
    }
    $("t-uptime").textContent = dur(st.uptime_seconds || 0);
    $("t-requests").textContent = fmt(st.requests_total || 0);
    $("t-inflight").textContent = fmt(st.requests_in_flight || 0) + " / " + fmt(sum(backends, "max_connections"));
    $("t-tokens").textContent = fmt(st.prompt_tokens || 0) + " / " + fmt(st.completion_tokens || 0);
    $("t-disconnects").textContent = fmt(st.client_disconnects || 0);
    $("t-errors").textContent = fmt(st.upstream_errors || 0);
    $("t-mem").textContent = bytes(st.heap_alloc_bytes) + " / " + bytes(st.rss_bytes);
    $("t-goroutines").textContent = fmt(st.goroutines || 0);
    var rows = Object.keys(st.models || {}).sort().map(function (name) {
      var m = st.models[name];
      return "<tr><td>" + esc(name) + "</td><td>" + fmt(m.requests) + "</td><td>" + fmt(m.prompt_tokens) + "</td><td>" +
        fmt(m.completion_tokens) + "</td><td>" + (m.avg_tokens_per_second || 0).toFixed(1) + "</td><td>" + (m.ttft_p50_ms || 0).toFixed(1) + "</td></tr>";
    });
    $("models").querySelector("tbody").innerHTML = rows.join("");
    renderFleet(backends, p.routing);
    renderCache(st.cache);
    document.body.dataset.samples = String(series.pool.max.length);
  }

  function schedule(ms) { if (!stopped) setTimeout(poll, ms); }

  function poll() {
    Promise.all([fetchJSON("/admin/resources/pools"), fetchJSON("/admin/resources/stats")]).then(function (r) {
      asked = false;
      render(r[0], r[1]);
      status("updated " + new Date().toLocaleTimeString());
      schedule(POLL_MS);
    }).catch(function (e) {
      if (!e.unauthorized) { status("error: " + e.message); schedule(POLL_MS); return; }
      // Ask once; ask again only if the key given was refused.
      if (asked) sessionStorage.removeItem(KEY_STORE);
      var k = window.prompt(asked ? "That admin API key was refused. Admin API key:" : "Admin API key:");
      if (!k) { stopped = true; status("stopped: an admin API key is required (reload to retry)"); return; }
      key = k; asked = true;
      sessionStorage.setItem(KEY_STORE, k);
      schedule(0);
    });
  }
  poll();
})();
