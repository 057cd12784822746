// dnsvr review page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, token: null, doc: null, ref: null, selected: -1, current: null, verdicts: new Map() };

// -- token: from the URL fragment (#token=…, printed by `dnsvr serve`) or typed in ---------------
function initToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("dnsvr-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("dnsvr-token");
  $("#token-state").textContent = state.token ? "token set" : "no token: verdicts cannot be saved";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function api(path, opts) {
  opts = opts || {};
  opts.headers = headers(opts.headers);
  const res = await fetch(path, opts);
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = text; }
  if (!res.ok) {
    const msg = body && body.error ? body.error.message : res.status + " " + res.statusText;
    throw new Error(msg);
  }
  return body;
}

// media URLs: <img>/<video> cannot send headers; beyond loopback the token rides in the query
function mediaUrl(kind, ref, params) {
  const q = new URLSearchParams(Object.assign({ ref: ref }, params || {}));
  if (state.info && state.info.token_for_reads && state.token) q.set("token", state.token);
  return "/api/media/" + kind + "?" + q.toString();
}

function status(msg, isError) {
  const el = $("#status");
  el.textContent = msg;
  el.classList.toggle("error", !!isError);
}

function el(tag, attrs, children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children || []) e.append(c);
  return e;
}

// -- index info and the id picker ------------------------------------------------------------
async function loadInfo() {
  try {
    state.info = await api("/api/info");
    $("#index-info").textContent = state.info.videos + " videos indexed · bundle " +
      ((state.info.bundle && state.info.bundle.name) || "?");
    $("#path-form").hidden = !state.info.media_roots;
    const list = await api("/api/videos?limit=1000");
    const dl = $("#video-ids");
    dl.replaceChildren(...list.videos.map((v) => el("option", { value: v.video_id })));
  } catch (e) {
    status("Cannot reach the index: " + e.message, true);
  }
}

// -- searching ---------------------------------------------------------------------------------
function searchOptions() {
  const o = { top_k: parseInt($("#opt-topk").value || "20", 10) };
  const b = $("#opt-budget").value.trim();
  if (b) o.budget = b;
  const p = $("#opt-precision").value;
  if (p) o.precision = p;
  return o;
}

async function runSearch(promise, label) {
  status("Searching " + label + "…");
  $("#result-list").replaceChildren();
  try {
    const doc = await promise;
    showResults(doc);
    status("Search done: " + doc.queries[0].results.length + " results for " + doc.queries[0].query + ".");
  } catch (e) {
    status("Search failed: " + e.message, true);
  }
}

function onUpload(ev) {
  ev.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file) return;
  if (state.info && file.size > state.info.max_upload_bytes) {
    status("The file is larger than this server accepts (" + state.info.max_upload_bytes + " bytes).", true);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  for (const [k, v] of Object.entries(searchOptions())) form.append(k, String(v));
  runSearch(api("/api/search/upload", { method: "POST", body: form }), file.name);
}

function onSearchJson(field, input) {
  return (ev) => {
    ev.preventDefault();
    const value = $(input).value.trim();
    if (!value) return;
    const body = Object.assign({ [field]: value }, searchOptions());
    runSearch(api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) }), value);
  };
}

// -- the ranked list -----------------------------------------------------------------------------
function spans(bar, segments, startKey, endKey, duration) {
  for (const s of segments) {
    const left = Math.max(0, Math.min(1, s[startKey] / duration));
    const right = Math.max(left, Math.min(1, s[endKey] / duration));
    const span = el("span", { title: s[startKey].toFixed(1) + "–" + s[endKey].toFixed(1) + " s" });
    span.style.left = (left * 100).toFixed(2) + "%";
    span.style.width = Math.max(0.8, (right - left) * 100).toFixed(2) + "%";
    bar.append(span);
  }
}

const durations = new Map();

// a video's duration in seconds (the index's record, or the file's header); `fallback` if unknown
function durationOf(ref, fallback) {
  if (!durations.has(ref)) {
    const url = ref.startsWith("video:") ? "/api/videos/" + ref.slice(6).split("/").map(encodeURIComponent).join("/") :
      "/api/media/info?ref=" + encodeURIComponent(ref);
    durations.set(ref, api(url).then((d) => d.duration || null).catch(() => null));
  }
  return durations.get(ref).then((d) => Math.max(d || 0, fallback));
}

function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }

function showResults(doc) {
  state.doc = doc;
  state.ref = doc.query_ref;
  state.selected = -1;
  const q = doc.queries[0];
  $("#results-meta").textContent = "· query " + q.query + " · " + q.candidates + " candidates · " + q.fine_pairs +
    " re-ranked · " + Math.round((q.timings.total || 0) * 1000) + " ms";
  // timelines span each video's whole duration (asked once per video, drawn when known)
  const segEnd = (key) => Math.max(1, ...q.results.flatMap((r) => r.segments.map((s) => s[key])));
  const qDurP = durationOf(state.ref, segEnd("query_end"));
  const list = $("#result-list");
  list.replaceChildren();
  q.results.forEach((r, i) => {
    const seg = r.segments[0];
    const thumbT = seg ? seg.target_start : 0;
    const img = el("img", { class: "thumb", alt: "frame of " + r.video_id + " at " + thumbT.toFixed(1) + " s",
      src: mediaUrl("frame", "video:" + r.video_id, { t: thumbT, w: 176 }), loading: "lazy" });
    const bar = el("div", { class: "scorebar", role: "img", "aria-label": "score " + fmt(r.score) }, [el("span")]);
    bar.firstChild.style.width = (Math.max(0, Math.min(1, r.score)) * 100).toFixed(1) + "%";
    const qBar = el("div", { class: "timeline q", role: "img", "aria-label": "matched part of the query" });
    const tBar = el("div", { class: "timeline t", role: "img", "aria-label": "matched part of the result" });
    const tFallback = Math.max(1, ...r.segments.map((s) => s.target_end));
    Promise.all([qDurP, durationOf("video:" + r.video_id, tFallback)]).then(([qDur, tDur]) => {
      spans(qBar, r.segments, "query_start", "query_end", qDur);
      spans(tBar, r.segments, "target_start", "target_end", tDur);
    });
    const cov = [];
    if (r.query_coverage !== undefined) cov.push("query coverage " + (100 * r.query_coverage).toFixed(0) + "%");
    if (r.target_coverage !== undefined) cov.push("result coverage " + (100 * r.target_coverage).toFixed(0) + "%");
    if (r.coverage !== undefined && typeof r.coverage === "number") cov.push("coverage " + (100 * r.coverage).toFixed(0) + "%");
    const segText = seg ? "match q " + seg.query_start.toFixed(1) + "–" + seg.query_end.toFixed(1) + " s ↔ r " +
      seg.target_start.toFixed(1) + "–" + seg.target_end.toFixed(1) + " s" : "no aligned segment";
    const badge = el("span", { class: "badge-slot" });
    const body = el("div", {}, [
      el("div", {}, [el("span", { class: "vid", text: r.video_id }), " ", badge]),
      el("div", { class: "muted", text: "score " + fmt(r.score) + " · fine " + fmt(r.fine_score) + " · coarse " +
        fmt(r.coarse_score) + " · " + r.stage + (cov.length ? " · " + cov.join(" · ") : "") }),
      bar, qBar, tBar, el("div", { class: "muted", text: segText }),
    ]);
    const btn = el("button", { type: "button", class: "compare-btn", text: "Compare",
      "aria-label": "Compare " + q.query + " with " + r.video_id });
    btn.addEventListener("click", () => openCompare(i));
    const li = el("li", { class: "result", "data-index": String(i), "data-video": r.video_id }, [
      el("span", { class: "rank", text: String(i + 1) }), img, body, btn]);
    li.addEventListener("click", (ev) => { if (ev.target !== btn) select(i); });
    list.append(li);
  });
  refreshBadges();
}

function select(i) {
  const items = document.querySelectorAll("#result-list .result");
  if (!items.length) return;
  state.selected = Math.max(0, Math.min(items.length - 1, i));
  items.forEach((li, k) => li.classList.toggle("selected", k === state.selected));
  const li = items[state.selected];
  li.scrollIntoView({ block: "nearest" });
  li.querySelector(".compare-btn").focus();
}

function refreshBadges() {
  if (!state.doc) return;
  const q = state.doc.queries[0];
  document.querySelectorAll("#result-list .result").forEach((li) => {
    const v = state.verdicts.get(q.query + "\u0000" + li.dataset.video);
    const slot = li.querySelector(".badge-slot");
    slot.replaceChildren(v ? el("span", { class: "badge " + v.verdict, text: v.verdict.replace("_", " ") }) : "");
  });
}

// -- compare view -----------------------------------------------------------------------------
function openCompare(i) {
  select(i);
  const q = state.doc.queries[0];
  const r = q.results[i];
  state.current = { q, r };
  $("#compare").hidden = false;
  $("#compare-title").textContent = "· " + q.query + " ↔ " + r.video_id + " (score " + fmt(r.score) + ")";
  $("#q-name").textContent = q.query;
  $("#t-name").textContent = r.video_id;
  $("#q-video").src = mediaUrl("file", state.ref);
  $("#t-video").src = mediaUrl("file", "video:" + r.video_id);
  const sel = $("#segment-select");
  sel.replaceChildren(...(r.segments.length ? r.segments : [{ query_start: 0, query_end: 0, target_start: 0,
    target_end: 0, score: 0, none: true }]).map((s, k) => el("option", { value: String(k),
    text: s.none ? "no aligned segment: start of both" : "q " + s.query_start.toFixed(1) + "–" + s.query_end.toFixed(1) +
      " s ↔ r " + s.target_start.toFixed(1) + "–" + s.target_end.toFixed(1) + " s" })));
  showSegment();
  const v = state.verdicts.get(q.query + "\u0000" + r.video_id);
  $("#verdict-note").value = v ? v.note : "";
  markVerdict(v ? v.verdict : null);
  $("#verdict-state").textContent = v ? "saved: " + v.verdict.replace("_", " ") : "";
  $("#compare-h").focus();
}

function currentSegment() {
  const r = state.current.r;
  const k = parseInt($("#segment-select").value || "0", 10);
  return r.segments[k] || { query_start: 0, query_end: 4, target_start: 0, target_end: 4 };
}

function showSegment() {
  const s = currentSegment();
  const qs = $("#q-strip"), ts = $("#t-strip");
  qs.src = mediaUrl("sheet", state.ref, { start: s.query_start, end: Math.max(s.query_start, s.query_end - 0.05), n: 6, w: 120 });
  ts.src = mediaUrl("sheet", "video:" + state.current.r.video_id, { start: s.target_start,
    end: Math.max(s.target_start, s.target_end - 0.05), n: 6, w: 120 });
  qs.alt = "frames of the query from " + s.query_start.toFixed(1) + " to " + s.query_end.toFixed(1) + " s";
  ts.alt = "frames of the result from " + s.target_start.toFixed(1) + " to " + s.target_end.toFixed(1) + " s";
  seekBoth(false);
}

// the result plays at the rate that maps the query's matched stretch onto its own (a sped-up copy
// plays faster), and follows the query player: play, pause and drift corrections
function segmentRate(s) {
  const q = s.query_end - s.query_start, t = s.target_end - s.target_start;
  return q > 0 && t > 0 ? Math.min(4, Math.max(0.25, t / q)) : 1;
}

function seekBoth(play) {
  const s = currentSegment();
  const qv = $("#q-video"), tv = $("#t-video");
  tv.playbackRate = segmentRate(s);
  const go = (v, t) => {
    const apply = () => { v.currentTime = t; if (play) v.play().catch(() => {}); };
    if (v.readyState >= 1) apply(); else v.addEventListener("loadedmetadata", apply, { once: true });
  };
  go(qv, s.query_start);
  go(tv, s.target_start);
}

function linkPlayers() {
  const qv = $("#q-video"), tv = $("#t-video");
  qv.addEventListener("play", () => { if (tv.paused) tv.play().catch(() => {}); });
  qv.addEventListener("pause", () => tv.pause());
  qv.addEventListener("timeupdate", () => {
    if ($("#compare").hidden || !state.current || qv.paused) return;
    const s = currentSegment();
    if (qv.currentTime < s.query_start || qv.currentTime > s.query_end) return;
    const want = s.target_start + (qv.currentTime - s.query_start) * segmentRate(s);
    if (Math.abs(tv.currentTime - want) > 0.35) tv.currentTime = want;
  });
}

function closeCompare() {
  $("#compare").hidden = true;
  $("#q-video").pause();
  $("#t-video").pause();
  if (state.selected >= 0) select(state.selected);
}

function markVerdict(name) {
  document.querySelectorAll("button.v").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.verdict === name)));
}

async function saveVerdict(name) {
  if (!state.current) return;
  const { q, r } = state.current;
  const body = { query: q.query, video_id: r.video_id, verdict: name, note: $("#verdict-note").value,
    query_ref: state.ref, score: r.score };
  try {
    const v = await api("/api/verdicts", { method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    state.verdicts.set(v.query + "\u0000" + v.video_id, v);
    markVerdict(name);
    $("#verdict-state").textContent = "saved: " + name.replace("_", " ");
    status("Verdict saved: " + q.query + " ↔ " + r.video_id + " = " + name.replace("_", " ") + ".");
    refreshBadges();
    loadVerdicts();
  } catch (e) {
    $("#verdict-state").textContent = "not saved";
    status("Verdict not saved: " + e.message, true);
  }
}

// -- verdict list and export ----------------------------------------------------------------
async function loadVerdicts() {
  try {
    const data = await api("/api/verdicts");
    state.verdicts = new Map(data.verdicts.map((v) => [v.query + "\u0000" + v.video_id, v]));
    $("#verdict-count").textContent = "· " + data.total;
    $("#verdict-table tbody").replaceChildren(...data.verdicts.slice().reverse().map((v) => el("tr", {}, [
      el("td", { text: v.query }), el("td", { text: v.video_id }),
      el("td", {}, [el("span", { class: "badge " + v.verdict, text: v.verdict.replace("_", " ") })]),
      el("td", { text: v.note }), el("td", { text: new Date(v.updated * 1000).toLocaleString() })])));
    refreshBadges();
  } catch (e) {
    status("Cannot load verdicts: " + e.message, true);
  }
}

async function exportVerdicts() {
  try {
    const res = await fetch("/api/verdicts/export", { headers: headers() });
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    const blob = await res.blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: "verdicts_ground_truth.json" });
    document.body.append(a);
    a.click();
    a.remove();
    status("Exported " + state.verdicts.size + " verdicts.");
  } catch (e) {
    status("Export failed: " + e.message, true);
  }
}

// -- keyboard ------------------------------------------------------------------------------------
const VERDICT_KEYS = { "1": "copy", "2": "partial", "3": "related", "4": "not_related" };

function onKey(ev) {
  const t = ev.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) {
    if (ev.key === "Escape") t.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const inCompare = !$("#compare").hidden;
  if (inCompare && VERDICT_KEYS[ev.key]) { ev.preventDefault(); saveVerdict(VERDICT_KEYS[ev.key]); return; }
  if (inCompare && ev.key === "Escape") { ev.preventDefault(); closeCompare(); return; }
  if (inCompare && ev.key === "p") { ev.preventDefault(); seekBoth(true); return; }
  if (ev.key === "j") { ev.preventDefault(); inCompare ? openCompare(state.selected + 1) : select(state.selected + 1); }
  if (ev.key === "k") { ev.preventDefault(); inCompare ? openCompare(Math.max(0, state.selected - 1)) : select(state.selected - 1); }
  if (ev.key === "Enter" && !inCompare && state.selected >= 0 && t.tagName !== "BUTTON") { ev.preventDefault(); openCompare(state.selected); }
}

document.addEventListener("DOMContentLoaded", () => {
  initToken();
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("#token").value.trim();
    if (v) sessionStorage.setItem("dnsvr-token", v); else sessionStorage.removeItem("dnsvr-token");
    $("#token").value = "";
    initToken();
    loadInfo();
    loadVerdicts();
  });
  $("#upload-form").addEventListener("submit", onUpload);
  $("#id-form").addEventListener("submit", onSearchJson("video_id", "#query-id"));
  $("#path-form").addEventListener("submit", onSearchJson("path", "#query-path"));
  $("#segment-select").addEventListener("change", showSegment);
  $("#play-both").addEventListener("click", () => seekBoth(true));
  linkPlayers();
  $("#close-compare").addEventListener("click", closeCompare);
  document.querySelectorAll("button.v").forEach((b) => b.addEventListener("click", () => saveVerdict(b.dataset.verdict)));
  $("#export").addEventListener("click", exportVerdicts);
  document.addEventListener("keydown", onKey);
  loadInfo();
  loadVerdicts();
});
