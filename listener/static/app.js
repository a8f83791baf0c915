// Safeguard dashboard: alert list pushed over server-sent events (no polling), devices, map,
// clip playback, acknowledgement. The token comes from #token=... or the login form and is
// kept in this browser's localStorage; it is sent as a bearer header, never in a URL.
"use strict";

const state = {
  token: "", events: new Map(), markers: new Map(), map: null, clipUrl: "",
  cursor: null,  // {at, id}: "Show older" loads what was received before (id: or at `at`, lower ids)
  keep: 0,  // the most entries the list holds (see trim)
  summaryTimer: 0,
  run: 0,  // one follow() loop per successful log-in; an older loop stops
};
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

// Every call carries the token; a 401 (e.g. the token was rotated) asks for a new one.
async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    showLogin(state.events.size ? "The token was refused (changed?). Enter the new one." : "Wrong token.");
    throw new Unauthorized();
  }
  return response;
}

function showLogin(message) {
  state.run += 1;  // stops the live loop
  localStorage.removeItem("safeguard.token");
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  setLive(false);
}

function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

// One alert is (device_id, id): two devices may use the same id. One event is its start and
// the updates and end that carry the start's id as event_id; the page shows one entry per event.
const keyOf = (alert) => `${alert.device_id}/${alert.id}`;
const eventIdOf = (alert) => alert.event_id || alert.id;
const eventKeyOf = (alert) => `${alert.device_id}/${eventIdOf(alert)}`;
const alertPath = (alert, tail = "") =>
  `/api/alerts/${encodeURIComponent(alert.id)}${tail}?device=${encodeURIComponent(alert.device_id)}`;
const RANK = { new: 0, acknowledged: 1, resolved: 2 };
const SEVERITY = { info: 0, warning: 1, critical: 2 };
const PAGE = 200;  // messages per page; also the entries a list fed live keeps (see trim)

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

// "2026-11-21T23:55:40.523Z" as this browser's local time (the raw value in the tooltip)
function timeEl(value) {
  const when = new Date(value);
  const el = text("time", isNaN(when) ? value : when.toLocaleString(), "meta");
  el.dateTime = el.title = value;
  return el;
}

// What one entry shows: the highest severity and score of its messages (the start's peak),
// the most advanced handling (a message stored after an acknowledgement is part of a handled
// event), the clip of whichever message has one, ongoing until its end arrives.
function summarize(event) {
  const messages = [...event.messages.values()];
  const lead = messages.find((m) => m.id === event.id) || messages[0];
  let top = lead;
  let score = -Infinity;
  for (const m of messages) {
    const rank = (x) => RANK[(x.listener || {}).status] || 0;
    if (rank(m) > rank(top)) top = m;
    score = Math.max(score, Number(m.score));
  }
  const severity = messages.reduce(
    (a, m) => ((SEVERITY[m.severity] || 0) > (SEVERITY[a] || 0) ? m.severity : a), lead.severity);
  const ended = messages.some((m) => m.event === "end");
  const started = messages.some((m) => m.event === "start" || m.event === "update");
  return {
    lead, severity, score, handling: top.listener || {},
    clip: messages.find((m) => (m.listener || {}).has_clip),
    phase: ended ? "ended" : started ? "ongoing" : lead.event,
  };
}

function renderEvent(event) {
  const { lead, severity, score, handling: h, clip, phase } = summarize(event);
  const li = document.createElement("li");
  li.dataset.id = event.id;
  li.dataset.device = lead.device_id;
  li.dataset.status = h.status;
  li.dataset.phase = phase;
  li.dataset.messages = String(event.messages.size);
  li.className = `alert sev-${severity} status-${h.status}`;
  li.append(text("span", lead.category, "category"));
  li.append(text("span", lead.device_id, "device"));
  li.append(text("span", `${severity} · ${score.toFixed(2)} · ${phase}`, "meta"));
  li.append(timeEl(lead.started_at));
  const actions = document.createElement("span");
  actions.className = "actions";
  if (h.status === "new") {
    const ack = text("button", "Acknowledge", "ack");
    ack.addEventListener("click", () => mark(lead, "ack"));
    actions.append(ack);
  } else {
    actions.append(text("span", `${h.status} by ${h.resolved_by || h.acknowledged_by}`, "meta handled"));
  }
  if (h.status !== "resolved") {
    const resolve = text("button", "Resolve", "resolve");
    resolve.addEventListener("click", () => mark(lead, "resolve"));
    actions.append(resolve);
  }
  if (clip) {
    const play = text("button", "Play clip", "play");
    play.addEventListener("click", () => playClip(clip));
    actions.append(play);
  }
  li.append(actions);
  return li;
}

// Adds or updates a message in its event's entry: a new entry goes on top ("top", live), at
// the bottom ("bottom", an older page) or nowhere ("known": only events already shown).
function upsertAlert(alert, where) {
  const key = eventKeyOf(alert);
  let event = state.events.get(key);
  if (!event) {
    if (where === "known") return;
    event = { id: eventIdOf(alert), messages: new Map(), fetched: false };
    state.events.set(key, event);
  }
  event.messages.set(keyOf(alert), alert);
  const list = $("alerts");
  const fresh = renderEvent(event);
  const old = list.querySelector(
    `li[data-id="${CSS.escape(event.id)}"][data-device="${CSS.escape(alert.device_id)}"]`);
  if (old) old.replaceWith(fresh);
  else if (where === "top") {
    list.prepend(fresh);
    trim();
  } else list.append(fresh);
  $("empty").hidden = true;
  placeMarker(key, event);
  if (alert.event_id && !event.fetched && !event.messages.has(`${alert.device_id}/${event.id}`)) {
    event.fetched = true;  // its start is older than what is loaded: fetch the whole event
    completeEvent(alert.device_id, event.id);
  }
}

// A listener time (microseconds) in milliseconds, rounded down.
const msOf = (iso) => Date.parse(String(iso).replace(/(\.\d{3})\d+/, "$1"));

// A tab left open for days must not grow without end: the list keeps its newest
// `state.keep` entries (one page, plus what "Show older" brought in), the oldest go with their
// markers, and "Show older" goes on from just after the newest message they held, so that
// paging loads them (and everything older) again. Messages stored with them in one batch
// (one time) come again too; they update their entries in place.
function trim() {
  const list = $("alerts");
  let newest = -Infinity;
  const keep = Math.max(PAGE, state.keep);
  while (list.children.length > keep) {
    const li = list.lastElementChild;
    const key = `${li.dataset.device}/${li.dataset.id}`;
    for (const m of (state.events.get(key) || { messages: new Map() }).messages.values()) {
      newest = Math.max(newest, msOf((m.listener || {}).received_at) || -Infinity);
    }
    state.events.delete(key);
    const marker = state.markers.get(key);
    if (marker) marker.remove();
    state.markers.delete(key);
    li.remove();
  }
  if (newest > -Infinity) {
    // received_at has microseconds, a Date milliseconds: the next millisecond is after it
    const after = new Date(newest + 1).toISOString();
    if (!state.cursor || !(msOf(state.cursor.at) >= newest + 1)) {
      state.cursor = { at: after, id: "" };
    }
    $("older").hidden = false;
  }
}

async function completeEvent(device, eventId) {
  try {
    const response = await api(`/api/alerts?event_id=${encodeURIComponent(eventId)}` +
      `&device=${encodeURIComponent(device)}&limit=1000`);
    if (response.ok) for (const alert of await response.json()) upsertAlert(alert, "known");
  } catch (err) {
    // a 401 shows the login; otherwise the entry shows what it has
  }
}

function placeMarker(key, event) {
  const { lead, severity, handling: h } = summarize(event);
  const at = [...event.messages.values()].map((m) => m.listener || {}).find((l) => l.lat != null);
  if (!state.map || !at || at.lon == null) return;
  const label = `${lead.category} (${severity}) on ${lead.device_id}`;
  let marker = state.markers.get(key);
  if (!marker) {
    marker = L.circleMarker([at.lat, at.lon], { radius: 8 }).addTo(state.map);
    state.markers.set(key, marker);
  }
  marker.bindTooltip(text("span", label));  // an element: Leaflet would parse a string as HTML
  marker.setStyle({ color: h.status === "new" ? "#c62828" : "#607d8b" });
}

async function failure(response) {
  let detail = "";
  try {
    detail = (await response.json()).detail;
  } catch (err) {
    detail = response.statusText;
  }
  return `${response.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
}

async function mark(alert, action) {
  const by = $("who").value.trim() || "dashboard";
  localStorage.setItem("safeguard.who", by);
  const doing = action === "ack" ? "acknowledge" : "resolve";
  try {
    const response = await api(alertPath(alert, "/" + action), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ by }),
    });
    if (!response.ok) {
      notice(`Could not ${doing} ${alert.category} on ${alert.device_id}: ${await failure(response)}`);
      return;
    }
    notice("");
    upsertAlert(await response.json(), "known");
    scheduleSummary();
  } catch (err) {
    if (!(err instanceof Unauthorized)) notice(`Could not ${doing}: ${err.message || err}`);
  }
}

async function playClip(alert) {
  const id = alert.id;
  let response;
  try {
    response = await api(alertPath(alert, "/clip"));
  } catch (err) {
    if (!(err instanceof Unauthorized)) notice(`Could not fetch the clip: ${err.message || err}`);
    return;
  }
  if (!response.ok) {
    showPlayer(text("p", `Clip not available (${response.status}).`, "clip-error"));
    return;
  }
  const blob = await response.blob();
  const media = document.createElement(blob.type.startsWith("video/") ? "video" : "audio");
  media.controls = true;
  if (state.clipUrl) URL.revokeObjectURL(state.clipUrl);  // the previous clip's memory
  state.clipUrl = media.src = URL.createObjectURL(blob);
  const save = text("a", "Download clip", "clip-download");
  save.href = state.clipUrl;
  save.download = `${id}.${blob.type.split("/")[1] || "bin"}`;
  // e.g. an MPEG-4 part 2 video (written where ffmpeg lacks H.264) that browsers cannot decode
  media.addEventListener("error", () => {
    media.replaceWith(text("p", `This browser cannot play this clip (${blob.type}).`, "clip-error"));
  });
  showPlayer(media, save);
  media.play().catch(() => {});
}

function showPlayer(...children) {
  $("player-body").replaceChildren(...children);
  $("player").hidden = false;
}

function renderDevice(device) {
  const li = text("li", `${device.device_id}: ${device.status || "unknown"}`, device.status || "");
  li.dataset.device = device.device_id;
  if (device.health) li.title = JSON.stringify(device.health);
  return li;
}

async function loadDevices() {
  let response;
  try {
    response = await api("/api/devices");
  } catch (err) {
    return;  // a 401 shows the login; a network error: the live loop reconnects
  }
  if (!response.ok) return;
  $("devices").replaceChildren(...(await response.json()).map(renderDevice));
}

// A `devices` event carries the device's new status and health: only its line changes.
function upsertDevice(device) {
  const list = $("devices");
  const old = list.querySelector(`li[data-device="${CSS.escape(device.device_id)}"]`);
  const fresh = renderDevice(device);
  if (old) old.replaceWith(fresh);
  else {
    const after = [...list.children].find((li) => li.dataset.device > device.device_id);
    list.insertBefore(fresh, after || null);
  }
}

// How many events wait for a person (also those not loaded on this page).
async function loadSummary() {
  let response;
  try {
    response = await api("/api/summary");
  } catch (err) {
    return;
  }
  if (!response.ok) return;
  const counts = await response.json();
  const el = $("summary");
  el.dataset.new = String(counts.new_events);
  el.dataset.critical = String(counts.new_critical_events);
  el.textContent = counts.new_events
    ? `${counts.new_events} unacknowledged (${counts.new_critical_events} critical)`
    : "all acknowledged";
  el.className = counts.new_critical_events ? "critical" : "";
}

function scheduleSummary() {
  clearTimeout(state.summaryTimer);
  state.summaryTimer = setTimeout(loadSummary, 300);
}

function setLive(live) {
  $("live-state").dataset.state = live ? "live" : "offline";
  $("live-state").textContent = live ? "live" : "offline";
}

async function handleEvent(kind, data) {
  if (kind === "hello") {
    // The stream is open: whatever is stored from now on arrives on it (and waits in the
    // stream while the list loads), so the list loaded now misses nothing.
    await reload();
    setLive(true);
  } else if (kind === "alert" || kind === "update") {
    upsertAlert(JSON.parse(data), kind === "alert" ? "top" : "known");
    scheduleSummary();
  } else if (kind === "devices") {
    const device = JSON.parse(data);
    if ("status" in device) upsertDevice(device);
    else loadDevices();  // an older listener sends the id alone
  }
}

// Server-sent events read through fetch, so that the token travels in a header.
async function follow(run) {
  while (run === state.run) {
    try {
      const response = await api("/api/live", { headers: { Accept: "text/event-stream" } });
      if (!response.ok || !response.body) throw new Error("live stream: " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data.push(line.slice(6));
          }
          if (run !== state.run) break;
          await handleEvent(kind, data.join("\n"));
        }
        if (run !== state.run) break;
      }
      reader.cancel().catch(() => {});
    } catch (err) {
      if (err instanceof Unauthorized) return;
      console.warn(err);
    }
    if (run !== state.run) return;
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// One page of messages, newest first; with `older`, the page after the oldest one loaded.
async function loadPage(older) {
  let query = `/api/alerts?limit=${PAGE}`;
  if (older && state.cursor) {
    query += `&before=${encodeURIComponent(state.cursor.at)}`;
    if (state.cursor.id) query += `&before_id=${encodeURIComponent(state.cursor.id)}`;
  }
  const response = await api(query);
  if (!response.ok) {
    notice(`Could not load the alerts: ${await failure(response)}`);
    return null;
  }
  const alerts = await response.json();
  const last = alerts[alerts.length - 1];
  if (last) state.cursor = { at: last.listener.received_at, id: last.id };
  $("older").hidden = alerts.length < PAGE;
  return alerts;
}

async function reload() {
  const alerts = await loadPage(false);
  if (alerts === null) return;
  $("alerts").replaceChildren();
  state.keep = PAGE;
  state.events.clear();
  for (const marker of state.markers.values()) marker.remove();
  state.markers.clear();
  for (const alert of alerts) upsertAlert(alert, "bottom");
  $("empty").hidden = alerts.length > 0;
  notice("");
  await Promise.all([loadDevices(), loadSummary()]);
}

async function showOlder() {
  try {
    const alerts = await loadPage(true);
    if (alerts) for (const alert of alerts) upsertAlert(alert, "bottom");
    state.keep = Math.max(state.keep, $("alerts").children.length);  // what was asked for stays
  } catch (err) {
    if (!(err instanceof Unauthorized)) notice(`Could not load older alerts: ${err.message || err}`);
  }
}

function initMap(config) {
  if (typeof L === "undefined") return;
  state.map = L.map("map", { worldCopyJump: true }).setView([20, 0], 2);
  if (config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: 19 }).addTo(state.map);
  }
}

async function start(token) {
  state.token = token;
  let config;
  try {
    const response = await api("/api/config");
    if (!response.ok) {
      showLogin(`Error ${response.status}.`);
      return;
    }
    config = await response.json();
  } catch (err) {
    if (!(err instanceof Unauthorized)) showLogin(`Cannot reach the listener: ${err.message || err}`);
    return;
  }
  localStorage.setItem("safeguard.token", token);
  $("login").hidden = true;
  $("main").hidden = false;
  if (!state.map) initMap(config);
  state.run += 1;
  follow(state.run);
}

window.addEventListener("DOMContentLoaded", () => {
  $("who").value = localStorage.getItem("safeguard.who") || "";
  $("older").addEventListener("click", showOlder);
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) history.replaceState(null, "", location.pathname);
  const token = fromHash || localStorage.getItem("safeguard.token");
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("token").value.trim());
  });
  if (token) start(token);
  else $("login").hidden = false;
});
