// Charts of the campaign pages, drawn with uPlot (shipped with the package, no CDN).
(function () {
  function sparkline(el) {
    var values = JSON.parse(el.dataset.values || "[]");
    var second = el.dataset.second ? JSON.parse(el.dataset.second) : null;
    if (!values.length) return;
    var xs = values.map(function (_, i) { return i; });
    var series = [{}, { stroke: "#2563eb", width: 1.5 }];
    var rows = [xs, values];
    if (second) { series.push({ stroke: "#dc2626", width: 1.5 }); rows.push(second); }
    new uPlot({ width: 140, height: 32, cursor: { show: false }, legend: { show: false },
      scales: { x: { time: false } }, axes: [{ show: false }, { show: false }], series: series }, rows, el);
  }
  function chart(el) {
    var points = JSON.parse(el.dataset.series || "[]");
    if (!points.length) { el.textContent = "No occurrence yet."; return; }
    var xs = points.map(function (p) { return Date.parse(p.at) / 1000; });
    var pick = function (k) { return points.map(function (p) { return Number(p[k]); }); };
    new uPlot({ width: Math.min(900, el.clientWidth || 900), height: 260,
      series: [{}, { label: "sent", stroke: "#16a34a", width: 2 }, { label: "failed", stroke: "#dc2626", width: 2 },
        { label: "excluded", stroke: "#94a3b8", width: 2 }, { label: "simulated", stroke: "#a855f7", width: 2 }] },
      [xs, pick("sent"), pick("failed"), pick("excluded"), pick("simulated")], el);
  }
  document.querySelectorAll(".spark").forEach(sparkline);
  document.querySelectorAll(".chart").forEach(chart);
})();
