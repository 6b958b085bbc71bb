// The live quota board: draws the embedded JSON at once, then polls the same data from /api/quota/ (the
// operator's session) every few seconds and redraws in place; no page reload. Built with DOM calls (no HTML
// strings): provider messages are shown as text.
(function () {
  "use strict";
  const REFRESH_MS = 5000;
  const table = document.getElementById("quota-board");
  const body = table.querySelector("tbody");
  const sortBox = document.getElementById("board-sort");
  let board = JSON.parse(document.getElementById("board-data").textContent);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  // A moment in the viewer's own time zone, e.g. "Sat 09:00 CET".
  function viewerTime(iso) {
    return new Date(iso).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
  }

  function duration(seconds) {
    const s = Math.max(Math.round(seconds), 0), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? h + "h" + m + "m" : m ? m + "m" + (s % 60) + "s" : s + "s";
  }

  function limitCell(limit) {
    const level = limit.percent >= 100 ? "full" : limit.percent >= 80 ? "warn" : "ok";
    const bar = el("div", { class: "qbar " + level, role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
                            "aria-valuenow": String(limit.percent), "data-percent": String(limit.percent) },
                   el("span", { style: "width:" + limit.percent + "%" }));
    let reset = null;
    if (limit.period === "minute") {
      if (limit.used) reset = "frees within a minute";
    } else if (limit.resets_at) {
      reset = "resets " + limit.resets_provider_tz + " · " + viewerTime(limit.resets_at) + " yours";
    }
    const name = limit.name + (limit.pool ? " (pool " + limit.pool + ")" : "");
    return el("div", { class: "qlimit", "data-limit": limit.name, "data-scope": limit.scope },
      el("div", { class: "qlimit-head" }, el("strong", {}, name), " ",
         el("span", { class: "qlimit-used" }, limit.used.toLocaleString() + " / " + limit.limit.toLocaleString()),
         el("span", { class: "qlimit-pct" }, limit.percent + "%")),
      bar,
      reset ? el("div", { class: "quiet-small" }, reset) : null);
  }

  function stateCell(row) {
    if (!row.parked) return el("td", { class: "qstate" }, el("span", { class: "state-on" }, "in rotation"));
    const p = row.parked;
    return el("td", { class: "qstate parked" },
      el("span", { class: "state-off" }, "parked until " + p.until_provider_tz),
      el("div", { class: "quiet-small" }, viewerTime(p.until) + " yours · in " + duration(p.seconds_left)),
      el("div", { class: "qreason", title: p.reason }, p.reason));
  }

  function row(r) {
    const limits = r.limits.length ? r.limits.map(limitCell) : [el("span", { class: "quiet-small" }, "no limits")];
    return el("tr", { "data-deployment": String(r.id), "data-model": r.model },
      el("td", { class: "qname" }, el("a", { href: r.admin_url }, r.model),
         el("div", { class: "quiet-small" }, r.provider + " · " + r.upstream_model)),
      el("td", {}, el("div", { class: "qlimits" }, ...limits)),
      stateCell(r),
      el("td", { class: "num" }, r.success_rate === null ? "–" : r.success_rate + "%",
         el("div", { class: "quiet-small" }, r.requests + " req")),
      el("td", { class: "num" }, r.p50_ms === null ? "–" : Math.round(r.p50_ms).toLocaleString() + " ms"));
  }

  function sorted(rows) {
    const by = sortBox.value;
    const copy = rows.slice();
    if (by === "model") copy.sort((a, b) => a.model.localeCompare(b.model) || a.priority - b.priority);
    else if (by === "provider") copy.sort((a, b) => a.provider.localeCompare(b.provider) || a.model.localeCompare(b.model));
    else copy.sort((a, b) => b.pressure - a.pressure || a.model.localeCompare(b.model));
    return copy;
  }

  function draw() {
    body.replaceChildren(...sorted(board.deployments).map(row));
    document.getElementById("board-empty").hidden = board.deployments.length > 0;
    const updated = document.getElementById("board-updated");
    updated.setAttribute("datetime", board.generated_at);
    updated.textContent = new Date(board.generated_at).toLocaleTimeString();
  }

  async function refresh() {
    try {
      const response = await fetch(table.dataset.api, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      board = await response.json();
      draw();
      document.getElementById("board-error").hidden = true;
    } catch (e) {
      const note = document.getElementById("board-error");
      note.textContent = "refresh failed (" + e.message + "); retrying";
      note.hidden = false;
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  sortBox.addEventListener("change", draw);
  draw();
  setTimeout(refresh, REFRESH_MS);
})();
