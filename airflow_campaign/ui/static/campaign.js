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
    // one occurrence: a day either side of it, not a range of zero width
    var scales = xs.length === 1 ? { x: { time: true, range: [xs[0] - 86400, xs[0] + 86400] } } : {};
    new uPlot({ width: Math.min(900, el.clientWidth || 900), height: 260, scales: scales,
      series: [{}, { label: "sent", stroke: "#16a34a", width: 2 }, { label: "failed", stroke: "#dc2626", width: 2 },
        { label: "excluded", stroke: "#94a3b8", width: 2 }, { label: "simulated", stroke: "#a855f7", width: 2 }] },
      [xs, pick("sent"), pick("failed"), pick("excluded"), pick("simulated")], el);
  }
  // Inside the Airflow UI the pages are in an iframe (same origin, no top navigation): a link to an
  // Airflow page (a DAG, a DAG run) would open the whole UI inside the frame. Such a link is
  // followed by the Airflow UI itself instead: its router is told of the new location, as on
  // the browser's back and forward buttons. Links between campaign pages stay in the frame.
  function airflowPage(a) {
    var url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.indexOf("/campaign/") === 0) return null;
    return url.pathname + url.search + url.hash;
  }
  document.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest("a[href]") : null;
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    var target = airflowPage(a), top;
    if (target === null) return;
    try {
      top = window.top;
      if (top === window || top.location.origin !== location.origin) return;
    } catch (err) { return; }
    e.preventDefault();
    var state = top.history.state || {};
    top.history.pushState({ usr: null, key: Math.random().toString(36).slice(2, 10), idx: (state.idx || 0) + 1 }, "", target);
    top.dispatchEvent(new PopStateEvent("popstate", { state: top.history.state }));
  });
  document.querySelectorAll(".spark").forEach(sparkline);
  document.querySelectorAll(".chart").forEach(chart);
})();
