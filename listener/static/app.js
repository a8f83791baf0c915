// Safeguard dashboard: alert list pushed over server-sent events (no polling), devices, map,
// clip playback, acknowledgement. The token comes from #token=... or the login form and is
// kept in this browser's localStorage; it is sent as a bearer header, never in a URL.
"use strict";

const state = { token: "", alerts: new Map(), markers: new Map(), map: null, clipUrl: "" };
const $ = (id) => document.getElementById(id);

function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  return fetch(path, Object.assign({}, options, { headers }));
}

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
    ack.addEventListener("click", () => mark(alert.id, "ack"));
    actions.append(ack);
  } else {
    actions.append(text("span", `${h.status} by ${h.resolved_by || h.acknowledged_by}`, "meta handled"));
  }
  if (h.status !== "resolved") {
    const resolve = text("button", "Resolve", "resolve");
    resolve.addEventListener("click", () => mark(alert.id, "resolve"));
    actions.append(resolve);
  }
  if (h.has_clip) {
    const play = text("button", "Play clip", "play");
    play.addEventListener("click", () => playClip(alert.id));
    actions.append(play);
  }
  li.append(actions);
  return li;
}

function upsertAlert(alert, prepend) {
  const list = $("alerts");
  const fresh = renderAlert(alert);
  const old = list.querySelector(`li[data-id="${CSS.escape(alert.id)}"]`);
  if (old) old.replaceWith(fresh);
  else if (prepend) list.prepend(fresh);
  else list.append(fresh);
  state.alerts.set(alert.id, alert);
  placeMarker(alert);
}

function placeMarker(alert) {
  const h = alert.listener || {};
  if (!state.map || h.lat == null || h.lon == null) return;
  const label = `${alert.category} (${alert.severity}) on ${alert.device_id}`;
  let marker = state.markers.get(alert.id);
  if (!marker) {
    marker = L.circleMarker([h.lat, h.lon], { radius: 8 }).addTo(state.map);
    state.markers.set(alert.id, marker);
  }
  marker.bindTooltip(text("span", label));  // an element: Leaflet would parse a string as HTML
  marker.setStyle({ color: h.status === "new" ? "#c62828" : "#607d8b" });
}

async function mark(id, action) {
  const by = $("who").value.trim() || "dashboard";
  localStorage.setItem("safeguard.who", by);
  const response = await api(`/api/alerts/${encodeURIComponent(id)}/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ by }),
  });
  if (response.ok) upsertAlert(await response.json(), false);
}

async function playClip(id) {
  const response = await api(`/api/alerts/${encodeURIComponent(id)}/clip`);
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
  const response = await api("/api/devices");
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

function handleEvent(kind, data) {
  if (kind === "hello") setLive(true);
  else if (kind === "alert") upsertAlert(JSON.parse(data), true);
  else if (kind === "update") upsertAlert(JSON.parse(data), false);
  else if (kind === "devices") loadDevices();
}

// Server-sent events read through fetch, so that the token travels in a header.
async function follow() {
  for (;;) {
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
          handleEvent(kind, data.join("\n"));
        }
      }
    } catch (err) {
      console.warn(err);
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    await reload();  // catch up on what happened while disconnected
  }
}

async function reload() {
  const response = await api("/api/alerts?limit=200");
  if (!response.ok) return response.status;
  $("alerts").replaceChildren();
  for (const alert of await response.json()) upsertAlert(alert, false);
  await loadDevices();
  return 200;
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
  const status = await reload();
  if (status !== 200) {
    $("login").hidden = false;
    $("login-error").textContent = status === 401 ? "Wrong token." : `Error ${status}.`;
    return;
  }
  localStorage.setItem("safeguard.token", token);
  $("login").hidden = true;
  $("main").hidden = false;
  const config = await (await api("/api/config")).json();
  initMap(config);
  for (const alert of state.alerts.values()) placeMarker(alert);
  follow();
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
