// Safeguard dashboard: alert list pushed over server-sent events (no polling), devices, map,
// clip playback, acknowledgement. The token comes from #token=... or the login form and is
// kept in this browser's localStorage; it is sent as a bearer header, never in a URL.
"use strict";

const state = {
  token: "", alerts: new Map(), markers: new Map(), map: null, clipUrl: "",
  run: 0,  // one follow() loop per successful log-in; an older loop stops
};
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

// Every call carries the token; a 401 (e.g. the token was rotated) asks for a new one.
async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    showLogin(state.alerts.size ? "The token was refused (changed?). Enter the new one." : "Wrong token.");
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

// One alert is (device_id, id): two devices may use the same id.
const keyOf = (alert) => `${alert.device_id}/${alert.id}`;
const alertPath = (alert, tail = "") =>
  `/api/alerts/${encodeURIComponent(alert.id)}${tail}?device=${encodeURIComponent(alert.device_id)}`;

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

function renderAlert(alert) {
  const h = alert.listener || {};
  const li = document.createElement("li");
  li.dataset.id = alert.id;
  li.dataset.device = alert.device_id;
  li.dataset.status = h.status;
  li.className = `alert sev-${alert.severity} status-${h.status}`;
  li.append(text("span", alert.category, "category"));
  li.append(text("span", alert.device_id, "device"));
  li.append(text("span", `${alert.severity} · ${Number(alert.score).toFixed(2)} · ${alert.event}`, "meta"));
  li.append(text("time", alert.started_at, "meta"));
  const actions = document.createElement("span");
  actions.className = "actions";
  if (h.status === "new") {
    const ack = text("button", "Acknowledge", "ack");
    ack.addEventListener("click", () => mark(alert, "ack"));
    actions.append(ack);
  } else {
    actions.append(text("span", `${h.status} by ${h.resolved_by || h.acknowledged_by}`, "meta handled"));
  }
  if (h.status !== "resolved") {
    const resolve = text("button", "Resolve", "resolve");
    resolve.addEventListener("click", () => mark(alert, "resolve"));
    actions.append(resolve);
  }
  if (h.has_clip) {
    const play = text("button", "Play clip", "play");
    play.addEventListener("click", () => playClip(alert));
    actions.append(play);
  }
  li.append(actions);
  return li;
}

function upsertAlert(alert, prepend) {
  const list = $("alerts");
  const fresh = renderAlert(alert);
  const old = list.querySelector(
    `li[data-id="${CSS.escape(alert.id)}"][data-device="${CSS.escape(alert.device_id)}"]`);
  if (old) old.replaceWith(fresh);
  else if (prepend) list.prepend(fresh);
  else list.append(fresh);
  state.alerts.set(keyOf(alert), alert);
  placeMarker(alert);
}

function placeMarker(alert) {
  const h = alert.listener || {};
  if (!state.map || h.lat == null || h.lon == null) return;
  const label = `${alert.category} (${alert.severity}) on ${alert.device_id}`;
  let marker = state.markers.get(keyOf(alert));
  if (!marker) {
    marker = L.circleMarker([h.lat, h.lon], { radius: 8 }).addTo(state.map);
    state.markers.set(keyOf(alert), marker);
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
    upsertAlert(await response.json(), false);
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

async function loadDevices() {
  let response;
  try {
    response = await api("/api/devices");
  } catch (err) {
    return;  // a 401 shows the login; a network error: the live loop reconnects
  }
  if (!response.ok) return;
  const list = $("devices");
  list.replaceChildren();
  for (const device of await response.json()) {
    const li = text("li", `${device.device_id}: ${device.status || "unknown"}`, device.status || "");
    li.dataset.device = device.device_id;
    if (device.health) li.title = JSON.stringify(device.health);
    list.append(li);
  }
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
    upsertAlert(JSON.parse(data), kind === "alert");
  } else if (kind === "devices") loadDevices();
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

async function reload() {
  const response = await api("/api/alerts?limit=200");
  if (!response.ok) {
    notice(`Could not load the alerts: ${await failure(response)}`);
    return;
  }
  const alerts = await response.json();
  $("alerts").replaceChildren();
  state.alerts.clear();
  for (const alert of alerts) upsertAlert(alert, false);
  notice("");
  await loadDevices();
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
