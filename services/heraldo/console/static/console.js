// The job console: polls the REST API through the edge and draws what it gets. No framework and
// no build step: the page must keep working from a plain checkout.
"use strict";

const LIST_EVERY_MS = 2000;
const JOB_EVERY_MS = 1000;
const MAX_SAMPLES = 300;
// Chunks commit in bursts; a rate over a few seconds reads better than one per poll.
const RATE_WINDOW_S = 3;
const TERMINAL = new Set(["COMPLETED", "FAILED", "STOPPED"]);

const state = { token: "", selected: "", jobs: [], samples: new Map() };
const $ = (selector) => document.querySelector(selector);

// A token in the URL fragment (#token=...) never reaches a server log; keep it for this tab only
// and take it out of the address bar.
function readToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    sessionStorage.setItem("heraldo.token", params.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("heraldo.token") || "";
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, "cannot reach the edge: " + error.message);
  }
  const text = await response.text();
  let payload = null;
  try { payload = text ? JSON.parse(text) : null; } catch (_) { payload = null; }
  if (!response.ok) {
    const message = (payload && payload.message) || text.trim() || response.statusText;
    throw new ApiError(response.status, `${method} ${path}: ${response.status} ${message}`);
  }
  return payload;
}

function showStatus(text, isError) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function handleError(error) {
  if (error.status === 401 || error.status === 403) {
    $("#auth").hidden = false;
    showStatus("the edge wants a token: paste the one from credentials.json", true);
  } else {
    showStatus(error.message, true);
  }
}

const count = (job, name) => Number((job.counts || {})[name] || 0);
const statusOf = (job) => String(job.status || "").replace("JOB_STATUS_", "");
const percentOf = (job) => {
  const selected = count(job, "selected");
  return selected ? Math.min(100, 100 * count(job, "processed") / selected) : 100;
};
const fmt = (n) => Number(n).toLocaleString("en-GB");

function duration(seconds) {
  if (seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const pad = (v) => String(v).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  return td;
}

function bar(percent) {
  const outer = document.createElement("div");
  outer.className = "progress";
  const inner = document.createElement("div");
  inner.style.width = percent.toFixed(1) + "%";
  outer.appendChild(inner);
  return outer;
}

function renderJobs() {
  const body = $("#jobs tbody");
  body.replaceChildren();
  if (!state.jobs.length) {
    const row = document.createElement("tr");
    const empty = cell("No jobs yet: start one with heraldo jobs start NAME.");
    empty.colSpan = 7;
    row.appendChild(empty);
    body.appendChild(row);
    return;
  }
  for (const job of state.jobs) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.jobId;
    row.classList.toggle("selected", job.jobId === state.selected);
    const badge = document.createElement("span");
    badge.className = "badge " + statusOf(job);
    badge.textContent = statusOf(job);
    const progress = document.createElement("div");
    progress.appendChild(bar(percentOf(job)));
    row.append(cell(job.jobName), cell(badge), cell(progress),
      cell(fmt(count(job, "sent")), "num"), cell(fmt(count(job, "skipped")), "num"),
      cell(fmt(count(job, "failed")), "num"),
      cell(String(job.createTime || "").slice(11, 16)));
    row.addEventListener("click", () => select(job.jobId));
    body.appendChild(row);
  }
}

function renderBars(selector, entries, total) {
  const body = $(selector + " tbody");
  body.replaceChildren();
  if (!entries.length) {
    const row = document.createElement("tr");
    row.appendChild(cell("none", "muted"));
    body.appendChild(row);
    return;
  }
  for (const [label, value] of entries) {
    const row = document.createElement("tr");
    const share = total ? 100 * value / total : 0;
    row.append(cell(label), cell(bar(share), "bar"), cell(fmt(value), "num"),
      cell(share.toFixed(1) + "%", "num"));
    body.appendChild(row);
  }
}

function recordSample(job) {
  const samples = state.samples.get(job.jobId) || [];
  const processed = count(job, "processed");
  const last = samples[samples.length - 1];
  if (!last || last.processed !== processed || !TERMINAL.has(statusOf(job))) {
    samples.push({ t: performance.now() / 1000, processed });
  }
  if (samples.length > MAX_SAMPLES) samples.shift();
  state.samples.set(job.jobId, samples);
  return samples;
}

function drawThroughput(job, samples) {
  const canvas = $("#throughput");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#6b7785";

  const rates = [];
  let from = 0;
  for (let i = 1; i < samples.length; i++) {
    while (samples[i].t - samples[from].t > RATE_WINDOW_S && from < i - 1) from++;
    const dt = samples[i].t - samples[from].t;
    if (dt > 0) {
      rates.push({ t: samples[i].t, rate: (samples[i].processed - samples[from].processed) / dt });
    }
  }
  if (rates.length < 2) {
    const average = Number(job.ratePerSecond || 0);
    g.fillText(`average ${average.toFixed(0)}/s over the run` +
      (TERMINAL.has(statusOf(job)) ? " (it ended before this page sampled it)" : ""), 12, 24);
    return;
  }
  const pad = { left: 44, right: 10, top: 12, bottom: 22 };
  const t0 = rates[0].t, t1 = rates[rates.length - 1].t;
  const peak = Math.max(1, ...rates.map((r) => r.rate));
  const x = (t) => pad.left + (width - pad.left - pad.right) * (t - t0) / Math.max(t1 - t0, 1e-6);
  const y = (v) => height - pad.bottom - (height - pad.top - pad.bottom) * v / peak;

  g.strokeStyle = "#dde3ea";
  g.beginPath();
  for (const v of [0, peak / 2, peak]) {
    g.moveTo(pad.left, y(v)); g.lineTo(width - pad.right, y(v));
    g.fillText(v.toFixed(0), 6, y(v) + 4);
  }
  g.stroke();
  g.fillText(`${duration(t1 - t0)} sampled`, width - pad.right - 90, height - 6);

  g.strokeStyle = "#1f6feb";
  g.lineWidth = 2;
  g.beginPath();
  rates.forEach((r, i) => (i ? g.lineTo(x(r.t), y(r.rate)) : g.moveTo(x(r.t), y(r.rate))));
  g.stroke();
}

function renderJob(job) {
  $("#detail").hidden = false;
  const status = statusOf(job);
  const percent = percentOf(job);
  $("#job-name").textContent = job.jobName;
  $("#job-status").textContent = status;
  $("#job-status").className = "badge " + status;
  $("#job-id").textContent = `${job.jobId} · created ${String(job.createTime || "").replace("T", " ").slice(0, 19)} UTC`;
  $("#job-bar").style.width = percent.toFixed(1) + "%";
  $("#job-percent").textContent = `${percent.toFixed(percent === 100 ? 0 : 1)}%`;

  const numbers = [
    ["processed", `${fmt(count(job, "processed"))} / ${fmt(count(job, "selected"))}`],
    ["sent", fmt(count(job, "sent"))], ["skipped", fmt(count(job, "skipped"))],
    ["failed", fmt(count(job, "failed"))], ["already sent", fmt(count(job, "duplicate"))],
    ["rate", `${Number(job.ratePerSecond || 0).toFixed(0)}/s`],
    ["time left", TERMINAL.has(status) ? "–" : duration(Number(job.secondsLeft ?? -1))],
    ["ended", job.endTime ? String(job.endTime).slice(11, 19) : "–"],
  ];
  $("#job-numbers").replaceChildren(...numbers.map(([label, value]) => {
    const item = document.createElement("div");
    const dt = document.createElement("dt"); dt.textContent = label;
    const dd = document.createElement("dd"); dd.textContent = value;
    dd.dataset.field = label;
    item.append(dt, dd);
    return item;
  }));
  $("#job-message").hidden = !job.exitMessage;
  $("#job-message").textContent = job.exitMessage || "";

  $("#stop").disabled = !["STARTING", "STARTED"].includes(status);
  $("#restart").disabled = !["STOPPED", "FAILED"].includes(status);

  const sent = count(job, "sent");
  const replicas = Object.entries(job.sentByReplica || {}).map(([k, v]) => [k, Number(v)])
    .sort((a, b) => a[0].localeCompare(b[0]));
  renderBars("#replicas", replicas, sent);
  const reasons = Object.entries(job.reasons || {}).map(([k, v]) => [k, Number(v)])
    .sort((a, b) => b[1] - a[1]);
  renderBars("#reasons", reasons, reasons.reduce((total, [, v]) => total + v, 0));
  const notices = Object.entries(job.notices || {}).map(([k, v]) => [k, Number(v)])
    .sort((a, b) => b[1] - a[1]);
  renderBars("#notices", notices, sent);
  drawThroughput(job, recordSample(job));
}

async function refreshList() {
  try {
    const reply = await api("GET", "/v1/jobs?pageSize=25");
    state.jobs = (reply && reply.jobs) || [];
    if (!state.selected && state.jobs.length) state.selected = state.jobs[0].jobId;
    renderJobs();
    showStatus(`updated ${new Date().toLocaleTimeString("en-GB")}`);
  } catch (error) {
    handleError(error);
  }
}

async function refreshJob() {
  if (!state.selected) return;
  try {
    renderJob(await api("GET", "/v1/jobs/" + encodeURIComponent(state.selected)));
  } catch (error) {
    handleError(error);
  }
}

function select(jobId) {
  state.selected = jobId;
  renderJobs();
  refreshJob();
}

async function act(verb) {
  const button = $("#" + verb);
  button.disabled = true;
  try {
    const job = await api("POST", `/v1/jobs/${encodeURIComponent(state.selected)}:${verb}`, {});
    showStatus(`${verb} requested for ${job.jobId}`);
    state.selected = job.jobId;
  } catch (error) {
    handleError(error);
  }
  await refreshList();
  await refreshJob();
}

function start() {
  readToken();
  $("#auth").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("heraldo.token", state.token);
    $("#auth").hidden = true;
    refreshList().then(refreshJob);
  });
  $("#stop").addEventListener("click", () => act("stop"));
  $("#restart").addEventListener("click", () => act("restart"));
  refreshList().then(refreshJob);
  setInterval(refreshList, LIST_EVERY_MS);
  setInterval(refreshJob, JOB_EVERY_MS);
}

start();
