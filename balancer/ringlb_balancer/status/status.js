// ringlb status page: polls status/data once a second and draws it; no dependencies.
// Charts are hand-drawn SVG polylines (a few dozen lines) rather than a vendored charting
// library: 60 points per member need no axes, zoom or legends, and this keeps the page one
// self-contained document with nothing to licence, update or load from elsewhere.
"use strict";
(function () {
  const POLL_MS = 1000;
  // URLs relative to the page: /status -> /status/data, also behind a port-forward or prefix.
  const base = location.pathname.replace(/\/+$/, "") + "/";
  const $ = (id) => document.getElementById(id);
  let last = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  const pct = (f) => (f === null || f === undefined ? "–" : (100 * f).toFixed(1) + " %");
  const num = (x, digits) => (x === null || x === undefined ? "–" : x.toFixed(digits));

  function hue(name) {  // FNV-1a plus a final mix: names one character apart get distant hues
    let h = 0x811c9dc5;
    for (const ch of name) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193);
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    return ((h ^ (h >>> 16)) >>> 0) % 360;
  }
  const color = (name) => `hsl(${hue(name)} 60% 45%)`;

  // One sparkline: values over the last `window` seconds, x by timestamp, y from 0 to `max`.
  const SVG = "http://www.w3.org/2000/svg";
  function sparkline(at, values, now, windowS, max, cls) {
    const w = 120, h = 24;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "spark " + cls);
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    let d = "", pen = false, points = 0;
    for (let i = 0; i < at.length; i++) {
      const v = values[i];
      if (v === null) { pen = false; continue; }
      const x = Math.max(0, w - ((now - at[i]) / windowS) * w);
      const y = h - 1 - (max > 0 ? (v / max) * (h - 2) : 0);
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      pen = true;
      points++;
    }
    const base = document.createElementNS(SVG, "line");
    base.setAttribute("x1", 0); base.setAttribute("x2", w);
    base.setAttribute("y1", h - 0.5); base.setAttribute("y2", h - 0.5);
    base.setAttribute("class", "axis");
    svg.append(base);
    if (d) {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d);
      svg.append(path);
    }
    svg.dataset.points = points;
    return svg;
  }

  function render(doc) {
    last = doc;
    $("revision").textContent = doc.revision;
    const hs = doc.hashing || {};
    const detail = doc.strategy === "maglev" ? `table ${hs.tableSize}`
      : doc.strategy === "ring" ? `${hs.vnodes} points/member` : `${hs.seedFormulas} formulas`;
    $("strategy").textContent = `${doc.strategy} (${detail})`;
    $("key").textContent = doc.key.source === "client-ip" ? "client IP" : `${doc.key.source} ${doc.key.name}`;
    $("lookup-label").textContent = doc.key.source === "client-ip" ? "client IP" : `${doc.key.name} value`;
    $("bounded").textContent = doc.boundedLoad ? `c = ${doc.boundedLoad}` : "off";
    $("count").textContent = doc.members.length;

    let maxRps = 0, maxErr = 0.05, total = 0, inflight = 0, rps = 0;
    for (const m of doc.members) {
      for (const v of m.series.rps) if (v !== null && v > maxRps) maxRps = v;
      for (const v of m.series.errorRate) if (v !== null && v > maxErr) maxErr = v;
    }
    // A warm-up in progress: how far the keys have moved, and each member's share once it ends.
    const ramp = doc.transition;
    $("warmup").hidden = !ramp;
    if (ramp) {
      const joining = ramp.to.filter((n) => !ramp.from.includes(n));
      const leaving = ramp.from.filter((n) => !ramp.to.includes(n));
      $("warmup-progress").value = ramp.fraction;
      $("warmup-progress").dataset.fraction = ramp.fraction;
      $("warmup-text").textContent = [
        joining.length ? "joining " + joining.join(", ") : "",
        leaving.length ? "leaving " + leaving.join(", ") : "",
        `${pct(ramp.fraction)} of the way`,
        `${pct(ramp.remaining)} of keys still to move`,
      ].filter(Boolean).join(" · ");
    }
    const body = $("members").tBodies[0];
    const rows = [];
    const bar = $("sharebar");
    bar.replaceChildren();
    doc.members.forEach((m, i) => {
      total += m.share;
      inflight += m.inflight;
      rps += m.rps || 0;
      const health = el("td", { class: "health", "data-health": m.health },
        el("span", { class: "badge " + m.health }, m.health));
      if (m.health === "ejected" && m.reason) health.append(el("span", { class: "reason" }, m.reason));
      const rpsCell = el("td", { class: "rps" },
        sparkline(m.series.at, m.series.rps, doc.now, doc.window, maxRps, "rps"),
        el("span", { class: "value" }, num(m.rps, 1)));
      const errCell = el("td", { class: "errors" },
        sparkline(m.series.at, m.series.errorRate, doc.now, doc.window, maxErr, "err"),
        el("span", { class: "value" }, pct(m.errorRate)));
      const share = el("td", { class: "share num", "data-share": m.share },
        el("span", { class: "track" },
          el("span", { class: "fill", style: `width:${(100 * m.share).toFixed(2)}%;background:${color(m.name)}` })),
        el("span", { class: "value" }, pct(m.share)));
      if (ramp) {
        const final = ramp.finalShares[m.name];
        share.append(el("span", { class: "final", "data-final": final, title: "share once the warm-up ends" }, "→ " + pct(final)));
      }
      const row = el("tr", { "data-name": m.name, class: m.health },
        el("td", { class: "idx" }, i + 1),
        el("td", { class: "name" }, el("span", { class: "dot", style: `background:${color(m.name)}` }), m.name),
        el("td", { class: "address" }, m.address),
        share, health,
        el("td", { class: "inflight num" }, m.inflight),
        rpsCell, errCell);
      rows.push(row);
      bar.append(el("span", { title: `${m.name}: ${pct(m.share)}`, style: `flex-grow:${m.share};background:${color(m.name)}` }));
    });
    body.replaceChildren(...rows);
    $("share-total").textContent = doc.members.length ? pct(total) : "–";
    $("inflight-total").textContent = inflight;
    $("rps-total").textContent = num(rps, 1) + " req/s";

    const hot = $("hot").tBodies[0];
    if (doc.hotKeys && doc.hotKeys.length) {
      hot.replaceChildren(...doc.hotKeys.map((h) => el("tr", { "data-key": h.key },
        el("td", { class: "key" }, h.key),
        el("td", { class: "num", title: `between ${num(h.rps - h.error, 1)} and ${num(h.rps, 1)} req/s` }, num(h.rps, 1)),
        el("td", {}, h.owner === null ? "–" : el("span", { class: "dot", style: `background:${color(h.owner)}` }), h.owner ?? ""))));
    } else {
      hot.replaceChildren(el("tr", {}, el("td", { colspan: "3", class: "empty" }, "none yet (counted over 10 s windows)")));
    }

    const log = $("changes");
    if (doc.changes.length) {
      log.replaceChildren(...doc.changes.map((c) => {
        const when = new Date(c.at * 1000).toLocaleTimeString();
        const item = el("li", { "data-revision": c.revision },
          el("span", { class: "rev" }, `rev ${c.revision}`), " ", el("time", {}, when), " ");
        for (const name of c.added) item.append(el("span", { class: "added" }, "+" + name), " ");
        for (const name of c.removed) item.append(el("span", { class: "removed" }, "−" + name), " ");
        if (!c.added.length && !c.removed.length) item.append(el("span", {}, "settings"), " ");
        item.append(el("span", { class: "moved", "data-moved": c.moved },
          `moved ${c.exact === false ? "≈" : ""}${pct(c.moved)} of keys`));
        return item;
      }));
    } else {
      log.replaceChildren(el("li", { class: "empty" }, "none yet"));
    }
  }

  function setState(state, text) {
    const node = $("state");
    node.dataset.state = state;
    node.textContent = text;
  }

  async function poll() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 3000);
    try {
      const reply = await fetch(base + "data", { cache: "no-store", signal: ctl.signal });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      render(await reply.json());
      setState("live", "live · updated " + new Date().toLocaleTimeString());
    } catch (err) {
      setState("stale", `not updating: ${err.message || err}` + (last ? ` (showing revision ${last.revision})` : ""));
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  $("lookup").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("lookup-key").value;
    const out = $("lookup-result");
    out.replaceChildren(el("p", { class: "hint" }, "looking up…"));
    try {
      const reply = await fetch(base + "lookup?key=" + encodeURIComponent(key), { cache: "no-store" });
      const doc = await reply.json();
      if (!reply.ok) throw new Error(doc.error || `HTTP ${reply.status}`);
      if (doc.owner === null) {
        out.replaceChildren(el("p", { class: "hint" }, "no members: nothing to route to"));
        return;
      }
      const pos = Object.entries(doc.position || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      const order = el("ol", { class: "preference" }, ...doc.preference.map((name) =>
        el("li", { class: doc.ejected.includes(name) ? "ejected" : "" },
          el("span", { class: "dot", style: `background:${color(name)}` }), name,
          doc.ejected.includes(name) ? " (ejected)" : "")));
      out.replaceChildren(
        el("p", {}, "owner ", el("strong", { id: "lookup-owner", "data-owner": doc.owner }, doc.owner)),
        el("p", {}, "a request now goes to ", el("strong", { id: "lookup-route", "data-route": doc.route }, doc.route),
          doc.route !== doc.owner ? " (owner ejected or over its bounded load)" : ""),
        el("p", { class: "hint" }, pos),
        el("p", {}, "preference order:"),
        order);
      out.dataset.key = doc.key;
    } catch (err) {
      out.replaceChildren(el("p", { class: "error" }, `lookup failed: ${err.message || err}`));
    }
  });

  poll();
})();
