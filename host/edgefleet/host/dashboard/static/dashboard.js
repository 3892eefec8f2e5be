// edgefleet dashboard: live updates over server-sent events (no framework, no CDN).
// The server renders every fragment; this script only puts them in place.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const MAX_FEED = 100;

  function fromHTML(html) {
    const t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  // Fleet page: the group / state filters also apply to rows that change live.
  function fleetFilter(row) {
    const g = $("f-group"), s = $("f-state");
    const group = g ? g.value : "", state = s ? s.value : "";
    const groups = (row.dataset.groups || "").split(" ");
    row.hidden = (group && !groups.includes(group)) || (state && row.dataset.state !== state);
  }

  function onDevice(d) {
    const body = $("devices");
    if (!body) return;
    const old = $("dev-" + d.id);
    // A device not on this page: only the last page of the fleet list takes new devices.
    if (!old && (document.body.dataset.page !== "fleet" || body.dataset.append !== "yes")) return;
    const row = fromHTML(d.html);
    row.classList.add("new");
    if (old) old.replaceWith(row);
    else body.appendChild(row);
    fleetFilter(row);
  }

  function onRollout(d) {
    const old = $("push-" + d.id + "-body");
    if (old) { old.replaceWith(fromHTML(d.html)); return; }
    const box = $("rollouts");
    if (!box || document.body.dataset.page !== "rollouts") return;
    const art = document.createElement("article");
    art.className = "rollout";
    art.id = "push-" + d.id;
    art.appendChild(fromHTML(d.html));
    box.prepend(art);
  }

  let statsTimer = null;
  function refreshStats() {
    const stats = $("stats");
    if (!stats || statsTimer) return;
    statsTimer = setTimeout(function () {
      statsTimer = null;
      fetch("/predictions/stats" + location.search, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.text() : null))
        .then((html) => { if (html !== null) stats.innerHTML = html; });
    }, 2000);
  }

  function onPrediction(d) {
    const feed = $("feed");
    if (!feed || feed.dataset.live === "no") return;
    const f = feed.dataset;
    if (f.device && f.device !== d.device) return;
    if (f.label && f.label !== d.label) return;
    if (f.min && d.score < parseFloat(f.min)) return;
    if (f.max && d.score > parseFloat(f.max)) return;
    if ($("pred-" + d.id)) return;
    const row = fromHTML(d.html);
    row.classList.add("new");
    feed.prepend(row);
    const none = $("no-rows"), total = $("total");
    if (none) none.remove();
    if (total) total.textContent = String(Math.max(parseInt(total.textContent, 10) || 0, d.id));
    while (feed.rows.length > MAX_FEED) feed.deleteRow(-1);
    refreshStats();
  }

  function ago(ts) {
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s >= 86400) return Math.round(s / 86400) + "d ago";
    if (s >= 3600) return Math.round(s / 3600) + "h ago";
    if (s >= 60) return Math.round(s / 60) + "m ago";
    return Math.round(s) + "s ago";
  }
  function tick() {
    document.querySelectorAll("time[data-ts]").forEach(function (t) {
      const ts = parseFloat(t.dataset.ts);
      if (!isNaN(ts) && t.closest("#devices")) t.textContent = ago(ts);
    });
  }

  function connect() {
    if (!window.EventSource) return;
    const es = new EventSource("/events");
    const live = $("live");
    const handle = (fn) => (e) => { try { fn(JSON.parse(e.data)); } catch (err) { console.error(err); } };
    es.addEventListener("device", handle(onDevice));
    es.addEventListener("rollout", handle(onRollout));
    es.addEventListener("prediction", handle(onPrediction));
    es.onopen = () => { if (live) live.classList.add("on"); };
    es.onerror = () => { if (live) live.classList.remove("on"); };  // EventSource retries itself
    // A page kept in the back/forward cache would hold its stream open, and a browser allows
    // only about six connections per server over HTTP/1.1: close it when the page goes away.
    window.addEventListener("pagehide", () => es.close(), { once: true });
  }
  window.addEventListener("pageshow", (e) => { if (e.persisted) connect(); });

  document.addEventListener("DOMContentLoaded", function () {
    ["f-group", "f-state"].forEach(function (id) {
      const el = $(id);
      if (el) el.addEventListener("change", () => document.querySelectorAll("#devices tr").forEach(fleetFilter));
    });
    connect();
    setInterval(tick, 1000);
  });
})();
