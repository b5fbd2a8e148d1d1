// jarvis-monitor console: live rows and charts from the server's event stream (SSE).
// Row HTML comes escaped from the server's templates; this script adds no text of its own.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const live = document.getElementById("live");
  const charts = new Map();

  function setLive(state, text) {
    if (!live) return;
    live.className = "live " + state;
    live.textContent = text;
  }

  function fromHtml(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  // Keep each table sorted by data-order (worst first), as the server sorts it.
  function place(body, row) {
    const order = row.dataset.order || "";
    for (const other of body.children) {
      if (other === row) continue;
      if ((other.dataset.order || "") > order) {
        if (other.previousElementSibling !== row) body.insertBefore(row, other);
        return;
      }
    }
    if (body.lastElementChild !== row) body.appendChild(row);
  }

  function applyRow(message) {
    for (const bodyId of message.bodies) {
      const body = document.getElementById(bodyId);
      if (!body) continue;
      const existing = body.querySelector("#" + CSS.escape(message.id));
      if (message.html === null) {
        if (existing) existing.remove();
        continue;
      }
      const row = fromHtml(message.html);
      if (!row) continue;
      for (const empty of body.querySelectorAll("tr.empty")) empty.remove();
      if (existing) existing.replaceWith(row);
      place(body, row);
    }
  }

  function applyHtml(message) {
    const target = document.getElementById(message.target);
    if (!target) return;
    const element = fromHtml(message.html);
    if (element) target.replaceWith(element);
  }

  function applyPoint(message) {
    for (const [seriesKey, value] of Object.entries(message.values)) {
      const entry = charts.get(seriesKey);
      if (!entry) continue;
      const { plot, data, index } = entry;
      const xs = data[0];
      const t = message.t;
      if (xs.length && t <= xs[xs.length - 1]) {
        const at = xs.length - 1;
        if (xs[at] === t) data[index][at] = value;
      } else {
        xs.push(t);
        for (let i = 1; i < data.length; i++) data[i].push(i === index ? value : null);
      }
      plot.setData(data);
    }
  }

  function apply(message) {
    if (message.op === "row") applyRow(message);
    else if (message.op === "html") applyHtml(message);
    else if (message.op === "point") applyPoint(message);
    else if (message.op === "reload") window.location.reload();
  }

  function connect() {
    const source = new EventSource("/events?page=" + encodeURIComponent(page));
    source.onopen = () => setLive("on", "live");
    source.onerror = () => setLive("off", "reconnecting…");
    source.onmessage = (event) => {
      for (const message of JSON.parse(event.data)) apply(message);
      setLive("on", "live");
    };
  }

  function aligned(series) {
    const times = new Set();
    for (const s of series) for (const p of s.points) times.add(p[0]);
    const xs = Array.from(times).sort((a, b) => a - b);
    const where = new Map(xs.map((t, i) => [t, i]));
    const data = [xs];
    for (const s of series) {
      const ys = new Array(xs.length).fill(null);
      for (const p of s.points) ys[where.get(p[0])] = p[1];
      data.push(ys);
    }
    return data;
  }

  const palette = ["#1e88e5", "#e53935", "#43a047", "#8e24aa", "#fb8c00", "#6d4c41", "#d81b60", "#00acc1"];

  function drawCharts() {
    const holder = document.getElementById("charts");
    const source = document.getElementById("chart-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    for (const spec of JSON.parse(source.textContent)) {
      const box = document.createElement("div");
      box.className = "chart";
      const title = document.createElement("h3");
      title.textContent = spec.title + " (" + spec.unit + ")";
      box.appendChild(title);
      holder.appendChild(box);
      if (!spec.series.length) {
        const none = document.createElement("div");
        none.className = "nodata";
        none.textContent = "no data in this range yet";
        box.appendChild(none);
        continue;
      }
      const data = aligned(spec.series);
      const options = {
        width: 620,
        height: 220,
        spanGaps: true,
        series: [{}].concat(spec.series.map((s, i) => ({
          label: s.label,
          stroke: palette[i % palette.length],
          width: 1.5,
          points: { show: data[0].length < 3, size: 6 },
        }))),
        axes: [{}, { size: 60 }],
        scales: { x: { time: true } },
      };
      const plot = new uPlot(options, data, box);
      spec.series.forEach((s, i) => {
        if (s.key) charts.set(s.key, { plot, data, index: i + 1 });
      });
    }
  }

  drawCharts();
  connect();
})();
