/* mlip-zoo leaderboard. Runs from file:// with no network: all data comes from
   <script type="application/json"> tags in the page (file:// forbids fetch of local files).
   The combined score here must match site.py's combined(): clamp((v - worst) / (best - worst), 0, 1),
   times the model's coverage for terms that declare one, weighted mean over the terms a model has,
   terms with weight 0 left out; with the "verified only" switch, the terms of results no re-run
   has verified count as missing (combined(..., only=verified) in ranking.py). */
(function () {
  "use strict";
  var THEME_KEY = "mlipzoo-theme";

  // ---- theme: stored choice (localStorage may be blocked on file://), else the OS preference
  function storedTheme() {
    try { return window.localStorage.getItem(THEME_KEY); } catch (e) { return null; }
  }
  function currentTheme() {
    var t = document.documentElement.getAttribute("data-theme");
    if (t) return t;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  var initial = storedTheme();
  if (initial === "light" || initial === "dark") document.documentElement.setAttribute("data-theme", initial);

  function readJSON(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  // ---- index: sorting, filtering, weights
  function num(text) {
    if (text === null || text === undefined || text === "") return null;
    var v = parseFloat(text);
    return isFinite(v) ? v : null;
  }

  function combined(values, terms, weights, coverage) {
    var sum = 0, den = 0, k = 0, n = 0;
    Object.keys(terms).forEach(function (task) {
      var spec = terms[task], w = weights[task];
      if (!(w > 0)) return;
      n += 1;
      var v = values[task];
      if (v === null || v === undefined) return;
      k += 1;
      if (spec.best === spec.worst) return;
      var term = Math.min(1, Math.max(0, (v - spec.worst) / (spec.best - spec.worst)));
      if (spec.coverage) term *= Math.min(1, Math.max(0, (coverage || {})[task] || 0));
      sum += w * term;
      den += w;
    });
    return { score: den > 0 ? sum / den : null, k: k, n: n };
  }

  // The combined score's uncertainty, as site.py's combined_uncertainty() computes it: the score of
  // every bootstrap resample from the terms' resampled values, its percentile interval (None when
  // fewer than half the resamples give a score), the rank range across models per resample, and
  // the models whose score difference has an interval containing 0.
  function percentile(sorted, p, method) {
    var pos = (sorted.length - 1) * p / 100, lo = Math.floor(pos), hi = Math.ceil(pos);
    if (method === "lower") return sorted[lo];
    if (method === "higher") return sorted[hi];
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }
  function interval(values, confidence) {
    var finite = values.filter(function (v) { return v !== null && isFinite(v); });
    if (!finite.length || 2 * finite.length < values.length) return null;
    finite.sort(function (a, b) { return a - b; });
    var tail = 50 * (1 - confidence);
    return [percentile(finite, tail), percentile(finite, 100 - tail)];
  }
  function combinedUncertainty(models, terms, weights, confidence) {
    var withReps = models.filter(function (m) { return Object.keys(m.replicates || {}).length > 0; });
    if (!withReps.length) return {};
    var size = Infinity;
    withReps.forEach(function (m) {
      Object.keys(m.replicates).forEach(function (t) { size = Math.min(size, m.replicates[t].length); });
    });
    var scores = withReps.map(function (m) {
      var out = [];
      for (var b = 0; b < size; b++) {
        var values = {};
        Object.keys(m.replicates).forEach(function (t) { values[t] = m.replicates[t][b]; });
        out.push(combined(values, terms, weights, m.coverage).score);
      }
      return out;
    });
    var tail = 50 * (1 - confidence), result = {};
    withReps.forEach(function (m, i) {
      var ranks = [];
      for (var b = 0; b < size; b++) {
        var s = scores[i][b];
        if (s === null) continue;
        var rank = 1;
        scores.forEach(function (other, j) { if (j !== i && other[b] !== null && other[b] > s) rank += 1; });
        ranks.push(rank);
      }
      ranks.sort(function (a, b) { return a - b; });
      var same = [];
      withReps.forEach(function (o, j) {
        if (j === i) return;
        var diff = scores[i].map(function (v, b) {
          return v === null || scores[j][b] === null ? null : v - scores[j][b];
        });
        var ci = interval(diff, confidence);
        if (ci && ci[0] <= 0 && 0 <= ci[1]) same.push(o.name);
      });
      same.sort();
      result[m.key] = { interval: interval(scores[i], confidence),
        range: ranks.length ? [percentile(ranks, tail, "lower"), percentile(ranks, 100 - tail, "higher")] : null,
        indistinct: same };
    });
    return result;
  }

  function initBoard(table) {
    var data = readJSON("leaderboard-data");
    if (!data) return;
    var tbody = table.tBodies[0];
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var byKey = {};
    data.models.forEach(function (m) { byKey[m.key] = m; });
    var inputs = Array.prototype.slice.call(document.querySelectorAll("#weights input[data-task]"));
    var verifiedOnly = document.getElementById("verified-only");
    // A model's values and replicates restricted to its re-run verified tasks (when the switch is on).
    function restrict(obj, m) {
      if (!verifiedOnly || !verifiedOnly.checked) return obj;
      var out = {};
      (m.verified || []).forEach(function (t) { if (Object.prototype.hasOwnProperty.call(obj || {}, t)) out[t] = obj[t]; });
      return out;
    }
    var state = { col: 1, dir: "descending" };

    function cellValue(row, col, type) {
      var cell = row.cells[col];
      var raw = cell ? cell.getAttribute("data-value") : null;
      return type === "text" ? (raw || "") : num(raw);
    }

    function sortRows() {
      var button = headers[state.col].querySelector("button.sort");
      var type = button.getAttribute("data-type");
      var sign = state.dir === "ascending" ? 1 : -1;
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.sort(function (a, b) {
        var va = cellValue(a, state.col, type), vb = cellValue(b, state.col, type);
        if (va === null && vb !== null) return 1;   // missing values sink, whatever the direction
        if (vb === null && va !== null) return -1;
        var c = 0;
        if (va !== null && vb !== null) c = type === "text" ? va.localeCompare(vb) : va - vb;
        if (c !== 0) return sign * c;
        return a.getAttribute("data-model") < b.getAttribute("data-model") ? -1 : 1;
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
      headers.forEach(function (th, i) { th.setAttribute("aria-sort", i === state.col ? state.dir : "none"); });
    }

    headers.forEach(function (th, i) {
      var button = th.querySelector("button.sort");
      if (!button) return;
      button.addEventListener("click", function () {
        if (state.col === i) {
          state.dir = state.dir === "ascending" ? "descending" : "ascending";
        } else {
          // first click puts the best first
          state.col = i;
          state.dir = button.getAttribute("data-higher") === "true" ? "descending" : "ascending";
        }
        sortRows();
      });
    });

    // filter
    var filter = document.getElementById("filter"), noMatch = document.getElementById("no-match");
    if (filter) filter.addEventListener("input", function () {
      var q = filter.value.trim().toLowerCase(), shown = 0;
      Array.prototype.forEach.call(tbody.rows, function (r) {
        var hit = !q || (r.getAttribute("data-search") || "").indexOf(q) !== -1;
        r.hidden = !hit;
        if (hit) shown += 1;
      });
      if (noMatch) noMatch.hidden = shown > 0 || tbody.rows.length === 0;
    });

    // weights <-> URL hash (#w=task:0.4,task:0.3): reloading or sharing the link keeps them
    function readInputs() {
      var w = {};
      inputs.forEach(function (inp) {
        var v = parseFloat(inp.value);
        w[inp.getAttribute("data-task")] = isFinite(v) && v > 0 ? v : 0;
      });
      return w;
    }
    function hashWeights() {
      if (verifiedOnly) verifiedOnly.checked = /(?:^#|&)verified=1(?:&|$)/.test(window.location.hash);
      var m = /(?:^#|&)w=([^&]*)/.exec(window.location.hash);
      if (!m) return null;
      var out = {};
      decodeURIComponent(m[1]).split(",").forEach(function (part) {
        var i = part.lastIndexOf(":");
        if (i <= 0) return;
        var v = parseFloat(part.slice(i + 1));
        if (isFinite(v) && v >= 0) out[part.slice(0, i)] = v;
      });
      return out;
    }
    function writeHash(w) {
      var text = "#w=" + inputs.map(function (inp) {
        var t = inp.getAttribute("data-task");
        return t + ":" + String(Math.round(w[t] * 1e6) / 1e6);
      }).join(",") + (verifiedOnly && verifiedOnly.checked ? "&verified=1" : "");
      if (window.location.hash === text) return;
      try { window.history.replaceState(null, "", text); } catch (e) { window.location.hash = text; }
    }
    function recompute() {
      var w = readInputs();
      var models = data.models.map(function (m) {
        return { key: m.key, name: m.name, coverage: m.coverage, replicates: restrict(m.replicates, m) };
      });
      var unc = combinedUncertainty(models, data.terms, w, data.confidence || 0.95);
      Array.prototype.forEach.call(tbody.rows, function (r) {
        var m = byKey[r.getAttribute("data-model")];
        var cell = r.querySelector("td.combined");
        if (!m || !cell) return;
        var c = combined(restrict(m.values, m), data.terms, w, m.coverage);
        cell.setAttribute("data-value", c.score === null ? "" : String(c.score));
        cell.querySelector(".num").textContent = c.score === null ? "—" : c.score.toFixed(3);
        var p = cell.querySelector(".partial");
        p.textContent = "partial (" + c.k + " of " + c.n + " tasks)";
        p.hidden = !(c.score !== null && c.k < c.n);
        var u = unc[m.key] || {}, ci = cell.querySelector(".ci"), rk = cell.querySelector(".rank"),
          ns = cell.querySelector(".ns");
        if (ci) {
          ci.hidden = !(u.interval && c.score !== null);
          ci.textContent = u.interval ? "[" + u.interval[0].toFixed(3) + ", " + u.interval[1].toFixed(3) + "]" : "";
        }
        if (rk) {
          rk.hidden = !(u.range && c.score !== null);
          rk.textContent = u.range ? "rank " + u.range[0] + (u.range[1] !== u.range[0] ? "–" + u.range[1] : "") : "";
        }
        if (ns) {
          var same = u.indistinct || [];
          ns.hidden = !(same.length && c.score !== null);
          ns.textContent = "≈ " + same.length;
          ns.title = "score not significantly different from " + same.join(", ");
        }
      });
      if (state.col === 1) sortRows();
      return w;
    }
    function applyHash() {
      var w = hashWeights();
      if (!w) { if (verifiedOnly && verifiedOnly.checked) recompute(); return; }
      inputs.forEach(function (inp) {
        var t = inp.getAttribute("data-task");
        if (Object.prototype.hasOwnProperty.call(w, t)) inp.value = String(w[t]);
      });
      recompute();
    }
    inputs.forEach(function (inp) {
      inp.addEventListener("input", function () { writeHash(recompute()); });
    });
    if (verifiedOnly) verifiedOnly.addEventListener("change", function () { writeHash(recompute()); });
    var reset = document.getElementById("weights-reset");
    if (reset) reset.addEventListener("click", function () {
      inputs.forEach(function (inp) { inp.value = inp.getAttribute("data-default"); });
      writeHash(recompute());
    });
    window.addEventListener("hashchange", applyHash);
    applyHash();
  }

  // ---- task pages: plots from the embedded predictions summary
  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  function themedLayout(extra) {
    var fg = cssVar("--fg") || "#222", line = cssVar("--line") || "#ccc";
    var base = {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { color: fg, size: 12 },
      margin: { l: 60, r: 20, t: 40, b: 90 }, showlegend: true, hovermode: "closest",
      legend: { orientation: "h", x: 0, y: -0.22, yanchor: "top" }
    };
    Object.keys(extra).forEach(function (k) { base[k] = extra[k]; });
    ["xaxis", "yaxis"].forEach(function (ax) {
      base[ax] = base[ax] || {};
      base[ax].gridcolor = line; base[ax].zerolinecolor = line; base[ax].linecolor = line;
    });
    return base;
  }

  function plotSpec(kind, el, data) {
    var models = data.models || {}, traces = [], title = el.getAttribute("data-title") || "";
    var unit = el.getAttribute("data-unit") || "";
    var keys = Object.keys(models);
    if (kind === "energy" || kind === "forces") {
      var lo = Infinity, hi = -Infinity;
      keys.forEach(function (k) {
        var d = models[k][kind];
        if (!d || !d.x || !d.x.length) return;
        d.x.concat(d.y).forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
        traces.push({ type: "scatter", mode: "markers", name: esc(models[k].name), x: d.x, y: d.y,
          marker: { size: 5, opacity: 0.6 }, hovertemplate: "true %{x:.4g}<br>pred %{y:.4g}" });
      });
      if (!traces.length) return null;
      if (lo === hi) { lo -= 1; hi += 1; }
      traces.push({ type: "scatter", mode: "lines", name: "y = x", x: [lo, hi], y: [lo, hi],
        line: { dash: "dash", width: 1, color: "#888" }, hoverinfo: "skip" });
      var u = unit ? " (" + unit + ")" : "";
      return { traces: traces, layout: { title: { text: title }, xaxis: { title: { text: "reference" + u } },
        yaxis: { title: { text: "predicted" + u }, scaleanchor: "x" } } };
    }
    if (kind === "adwt") {
      keys.forEach(function (k) {
        var d = models[k].adwt;
        if (!d || !d.x || !d.x.length) return;
        traces.push({ type: "scatter", mode: "lines", name: esc(models[k].name), x: d.x, y: d.y,
          hovertemplate: "threshold %{x:.3f} Å<br>fraction below %{y:.3f}" });
      });
      if (!traces.length) return null;
      return { traces: traces, layout: { title: { text: title }, xaxis: { title: { text: "threshold (Å)" } },
        yaxis: { title: { text: "fraction of systems below" }, range: [-0.02, 1.02] } } };
    }
    if (kind === "shift") {
      var axis = el.getAttribute("data-axis");
      keys.forEach(function (k) {
        var d = (models[k].shift || {})[axis];
        if (!d || !d.x || !d.x.length) return;
        traces.push({ type: "scatter", mode: "lines+markers", name: esc(models[k].name), x: d.x, y: d.y,
          customdata: d.n, hovertemplate: "shift %{x}<br>force MAE %{y:.4g} eV/Å<br>%{customdata} structures" });
      });
      if (!traces.length) return null;
      return { traces: traces, layout: { title: { text: title },
        xaxis: { title: { text: el.getAttribute("data-xlabel") || axis }, type: "category" },
        yaxis: { title: { text: "force MAE (eV/Å)" }, rangemode: "tozero" } } };
    }
    if (kind === "speed") {
      var allPositive = true;
      keys.forEach(function (k) {
        var m = models[k];
        if (m.seconds === null || m.seconds === undefined || m.headline === null || m.headline === undefined) return;
        if (!(m.seconds > 0)) allPositive = false;
        traces.push({ type: "scatter", mode: "markers", name: esc(m.name), x: [m.seconds], y: [m.headline],
          marker: { size: 12 }, hovertemplate: "%{x:.3g} s/structure<br>%{y:.4g}" });
      });
      if (!traces.length) return null;
      return { traces: traces, layout: { title: { text: title },
        xaxis: { title: { text: "mean seconds per structure" }, type: allPositive ? "log" : "linear" },
        yaxis: { title: { text: el.getAttribute("data-ylabel") || data.headline } } } };
    }
    return null;
  }

  function drawPlots() {
    var data = readJSON("plot-data");
    var els = document.querySelectorAll(".plot[data-kind]");
    if (!data || !els.length) return;
    Array.prototype.forEach.call(els, function (el) {
      var spec = plotSpec(el.getAttribute("data-kind"), el, data);
      if (!spec || typeof window.Plotly === "undefined") {
        el.innerHTML = "";
        var msg = document.createElement("div");
        msg.className = "no-data";
        msg.textContent = (el.getAttribute("data-title") || "Plot") + ": " +
          (typeof window.Plotly === "undefined" ? "plotly.min.js did not load" : "no data to plot");
        el.appendChild(msg);
        return;
      }
      window.Plotly.newPlot(el, spec.traces, themedLayout(spec.layout), { responsive: true, displaylogo: false });
    });
  }
  function rethemePlots() {
    if (typeof window.Plotly === "undefined") return;
    var fg = cssVar("--fg"), line = cssVar("--line");
    Array.prototype.forEach.call(document.querySelectorAll(".plot.js-plotly-plot"), function (el) {
      window.Plotly.relayout(el, { "font.color": fg, "xaxis.gridcolor": line, "yaxis.gridcolor": line,
        "xaxis.zerolinecolor": line, "yaxis.zerolinecolor": line, "xaxis.linecolor": line, "yaxis.linecolor": line });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) {
      toggle.setAttribute("aria-pressed", currentTheme() === "dark" ? "true" : "false");
      toggle.addEventListener("click", function () {
        var next = currentTheme() === "dark" ? "light" : "dark";
        document.documentElement.setAttribute("data-theme", next);
        toggle.setAttribute("aria-pressed", next === "dark" ? "true" : "false");
        try { window.localStorage.setItem(THEME_KEY, next); } catch (e) { /* file:// may forbid storage */ }
        rethemePlots();
      });
    }
    var table = document.getElementById("leaderboard");
    if (table && table.tBodies.length) initBoard(table);
    drawPlots();
  });
})();
