// Draws the usage dashboard's charts from the JSON the page embeds (#usage-data), with the vendored Chart.js.
(function () {
  "use strict";
  const embedded = document.getElementById("usage-data");
  if (!embedded) return;  // a staff user who may not view usage sees the console's home without it
  const data = JSON.parse(embedded.textContent);
  const palette = ["#417690", "#e07a1f", "#2e9e5b", "#c0392b", "#8e44ad", "#16a085", "#d4ac0d", "#5d6d7e",
                   "#a04000", "#1f618d", "#7d3c98", "#117864"];
  const color = (i) => palette[i % palette.length];
  const style = getComputedStyle(document.documentElement);
  const text = style.getPropertyValue("--body-fg").trim() || "#333";
  Chart.defaults.color = text;
  Chart.defaults.animation = false;  // draw at once: also makes screenshots deterministic

  function perDay(canvasId, field, title) {
    const canvas = document.getElementById(canvasId);
    if (!canvas) return;
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.daily.labels,
        datasets: data.daily.series.map((s, i) => ({ label: s.model, data: s[field], backgroundColor: color(i) })),
      },
      options: {
        maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: title } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  // Each bar is a percent of its OWN limit: RPM (tens) and TPM (a million) never share one axis.
  function quota() {
    const canvas = document.getElementById("chart-quota");
    if (!canvas) return;
    const rows = data.quota.slice().sort((a, b) => b.percent - a.percent);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: rows.map((r) => r.label),
        datasets: [{
          label: "% of the limit used",
          data: rows.map((r) => r.percent),
          backgroundColor: rows.map((r) => (r.percent >= 100 ? "#c0392b" : r.percent >= 80 ? "#e07a1f" : "#2e9e5b")),
        }],
      },
      options: {
        indexAxis: "y",
        maintainAspectRatio: false,
        scales: {
          x: { beginAtZero: true, max: 100, title: { display: true, text: "% of the limit" } },
          y: { ticks: { autoSkip: false } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (ctx) => rows[ctx.dataIndex].used + " of " + rows[ctx.dataIndex].limit + " (" + rows[ctx.dataIndex].percent + "%)" } },
        },
      },
    });
  }

  perDay("chart-requests", "requests", "requests");
  perDay("chart-tokens", "tokens", "tokens");
  quota();
})();
