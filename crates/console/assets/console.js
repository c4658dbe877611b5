// Nightshift console: the little the pages need a script for. Everything else is plain HTML
// (forms work without it). No framework: times in the browser's zone, the live run timeline
// and the live event tail over Server-Sent Events.
"use strict";

// <time datetime="…Z" title="… UTC">: shown in the browser's zone, UTC on hover.
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) t.textContent = d.toLocaleString();
  }
}

// A running run's page: the server sends the run's section whenever it changes, then "end".
function liveRun(el) {
  const es = new EventSource(el.dataset.liveRun);
  es.addEventListener("run", (e) => { el.innerHTML = e.data; localTimes(el); });
  es.addEventListener("end", () => { es.close(); el.removeAttribute("data-live-run"); });
  es.addEventListener("error", (e) => { if (e.data) { es.close(); } });
}

// The event tail: newest rows on top, at most MAX_ROWS; "Pause" holds new rows back (counted)
// and "Resume" shows them. EventSource reconnects by itself, resuming after the last cursor.
const MAX_ROWS = 500;
function liveEvents(table) {
  const body = table.tBodies[0];
  const state = document.getElementById("tail-state");
  const button = document.getElementById("tail-pause");
  let paused = false;
  let held = [];
  const say = (text) => { if (state) state.textContent = text; };
  const show = (html) => {
    body.insertAdjacentHTML("afterbegin", html);
    localTimes(body.rows[0]);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  };
  const es = new EventSource(table.dataset.liveEvents);
  es.addEventListener("ready", () => say("Live"));
  es.addEventListener("open", () => say("Live"));
  es.addEventListener("event", (e) => {
    if (paused) { held.push(e.data); say("Paused: " + held.length + " new"); } else { show(e.data); }
  });
  es.addEventListener("error", (e) => say(e.data ? "Interrupted: " + e.data + " (reconnecting)" : "Reconnecting…"));
  if (button) {
    button.addEventListener("click", () => {
      paused = !paused;
      button.setAttribute("aria-pressed", String(paused));
      button.textContent = paused ? "Resume" : "Pause";
      if (!paused) { held.forEach(show); held = []; say("Live"); } else { say("Paused"); }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const run = document.querySelector("[data-live-run]");
  if (run) liveRun(run);
  const events = document.querySelector("table[data-live-events]");
  if (events) liveEvents(events);
});
