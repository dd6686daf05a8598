// neve console: small enhancements over server-rendered pages (copy buttons, live log tail,
// metrics plots, Ctrl+Enter in the worksheet). Pages work without it where they can.
(function () {
  "use strict";

  function copyButtons(root) {
    root.querySelectorAll("button.copy[data-copy]").forEach(function (btn) {
      if (btn.dataset.bound) return;
      btn.dataset.bound = "1";
      btn.addEventListener("click", function () {
        var el = document.querySelector(btn.dataset.copy);
        if (!el) return;
        var text = el.textContent;
        var done = function () { btn.textContent = "Copied"; setTimeout(function () { btn.textContent = "Copy"; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () {});
        } else {
          var range = document.createRange();
          range.selectNodeContents(el);
          var sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          try { document.execCommand("copy"); done(); } catch (e) { /* selected: the user copies */ }
        }
      });
    });
  }

  // Follow a log: ask for what was appended since the last offset, append it, keep scrolled.
  var MAX_LOG_CHARS = 500000;
  function followLog() {
    var pre = document.getElementById("log");
    if (!pre || !pre.dataset.follow) return;
    var offset = parseInt(pre.dataset.offset, 10);
    var live = document.getElementById("live");
    function poll() {
      fetch(pre.dataset.follow + "&offset=" + offset, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (body) {
          if (body.replace) {
            if (body.text !== pre.textContent) pre.textContent = body.text;
          } else if (body.text) {
            var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
            var text = pre.textContent + body.text;
            if (text.length > MAX_LOG_CHARS) text = text.slice(text.length - MAX_LOG_CHARS);
            pre.textContent = text;
            if (atBottom) pre.scrollTop = pre.scrollHeight;
          }
          offset = body.offset;
          pre.dataset.offset = String(offset);
          if (live) live.classList.remove("stalled");
        })
        .catch(function () { if (live) live.classList.add("stalled"); })
        .finally(function () { setTimeout(poll, 1000); });
    }
    pre.scrollTop = pre.scrollHeight;
    setTimeout(poll, 1000);
  }

  // Metrics: one uPlot chart per series, one line per instance, refreshed every few seconds.
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
  function plots() {
    var box = document.getElementById("charts");
    if (!box || !window.uPlot) return;
    var charts = {};
    function build(fig, key, body) {
      var width = Math.max(fig.clientWidth - 8, 280);
      var series = [{}].concat(body.instances.map(function (inst, i) {
        return { label: "instance " + inst, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false, points: { show: true, size: 4 } };
      }));
      var opts = {
        width: width, height: 200, series: series, axes: [{}, { size: 60 }], legend: { live: true },
        // rates, latencies and depths start at zero: a flat line is not magnified into noise
        scales: { y: { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; } } }
      };
      fig.querySelectorAll(".uplot").forEach(function (el) { el.remove(); });
      return new uPlot(opts, data(key, body), fig);
    }
    function data(key, body) {
      return [body.t].concat(body.instances.map(function (inst) { return body.series[key][inst]; }));
    }
    function refresh() {
      fetch(box.dataset.source, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (body) {
          document.getElementById("points").textContent = body.t.length + " samples";
          box.dataset.points = String(body.t.length);
          box.querySelectorAll("figure.chart").forEach(function (fig) {
            var key = fig.dataset.series;
            var ids = body.instances.join(",");
            var existing = charts[key];
            if (!existing || existing.ids !== ids) {
              charts[key] = { plot: build(fig, key, body), ids: ids };
            } else {
              existing.plot.setData(data(key, body));
            }
          });
        })
        .catch(function () {})
        .finally(function () { setTimeout(refresh, 3000); });
    }
    refresh();
  }

  function worksheetKeys() {
    var area = document.getElementById("sql");
    if (!area) return;
    area.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        area.form.requestSubmit();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    copyButtons(document);
    followLog();
    plots();
    worksheetKeys();
    document.body.addEventListener("htmx:afterSwap", function (ev) { copyButtons(ev.target); });
  });
})();
