"""The web page served at ``/``: classify one photo, a whole handful, a pasted image, or the camera.

- One photo (picked, dropped or pasted): the top classes as bars, and the heat map.
- Several: a table that fills as answers arrive (one request per photo, a few at a time, so the
  server's micro-batcher groups them and ``--max-files`` never refuses a big drop), a summary line,
  and the answers as a CSV with ``vistrain predict --csv``'s columns. Clicking a row shows its bars
  and heat map. A photo the server refuses (not an image, truncated, too large) gets its reason in
  its own row and the rest carry on: with one photo per request, a refusal is that photo's alone.
- The camera: frames are classified one after another, each as soon as the previous answer is in,
  so the rate follows the server's speed. When the model crops (``resize="crop"``), a frame on the
  video marks the centre square it sees; ticked, "with its heat map" shows each frame's. Browsers offer the camera only to secure pages
  (``localhost`` or https); elsewhere the page says so and points to the file picker, which on a
  phone can take a photo.

One self-contained HTML document (no external scripts, styles or fonts: it works offline)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vistrain classifier</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 820px; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; }
  h2 { font-size: 1.2rem; }
  #drop { display: block; border: 2px dashed #888; border-radius: 10px; padding: 2rem; text-align: center; cursor: pointer; }
  #drop.over { background: #eef5ff; border-color: #2b6cb0; }
  #meta, #camnote, #rate, #summary { color: #666; font-size: .9rem; }
  #tools { margin: .8rem 0; display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
  #result { margin-top: 1.5rem; display: flex; gap: 1.5rem; flex-wrap: wrap; }
  #result img, #result video { max-width: 300px; border-radius: 6px; }
  #result figure { max-width: 300px; margin: 0; }
  .row { display: grid; grid-template-columns: 11rem 1fr 4rem; gap: .5rem; align-items: center; margin: .3rem 0; }
  .bar { background: #e5e7eb; border-radius: 4px; height: 1rem; }
  .bar > div { background: #2b6cb0; height: 100%; border-radius: 4px; }
  .top .bar > div { background: #2f855a; }
  .unsure { color: #b7791f; font-weight: bold; }
  #error, .failed { color: #c53030; }
  #error { margin-top: 1rem; }
  table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
  td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #e5e7eb; vertical-align: middle; }
  tbody tr { cursor: pointer; }
  tbody tr:hover, tbody tr.sel { background: #eef5ff; }
  #frame { position: relative; display: inline-block; line-height: 0; overflow: hidden; border-radius: 6px; }
  #guide { position: absolute; border: 2px dashed #fff; box-shadow: 0 0 0 9999px rgba(0, 0, 0, .35); pointer-events: none; box-sizing: border-box; }
  td img { width: 48px; height: 48px; object-fit: cover; border-radius: 4px; }
</style>
</head>
<body>
<h1>What is in this photo?</h1>
<p id="meta">Loading model...</p>
<label id="drop" for="file">Drop photos here, paste one (Ctrl+V), or click to pick
  <input id="file" type="file" accept="image/*,.heic,.heif" multiple hidden>
</label>
<div id="tools"><button id="camera" type="button">Use the camera</button>
  <label title="each frame's heat map: where the model looked (fewer frames per second)"><input id="camheat" type="checkbox"> with its heat map</label>
  <span id="camnote"></span></div>
<div id="error" role="alert"></div>
<div id="result">
  <div id="scores" style="flex: 1; min-width: 280px"></div>
  <figure id="heat" hidden><img id="heatimg" alt="heat map: where the model looked"><figcaption>where the model looked</figcaption></figure>
  <figure id="live" hidden><div id="frame"><video id="video" autoplay muted playsinline></video><div id="guide" hidden></div></div>
    <figcaption id="rate"></figcaption></figure>
</div>
<section id="batch" hidden>
  <h2>Photos</h2>
  <p><span id="summary"></span> <a id="csv" download="predictions.csv" hidden>Download the answers (CSV)</a></p>
  <table><thead><tr><th></th><th>file</th><th>answer</th><th>probability</th></tr></thead><tbody id="rows"></tbody></table>
</section>
<script>
const PARALLEL = 4;  // requests in flight for a batch: enough for the server to batch them
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const pct = (p) => (100 * p).toFixed(1) + "%";
let camera = null;  // the running camera session, or null
let batch = [];     // this batch's photos: {file, url, answer | error}
let resize = "crop"; // how the model fits a photo to its square input (the export's preprocessing)
let view = 0;       // bumped by each new photo, batch or camera: late answers for an older one are dropped

fetch("model").then((r) => r.json()).then((m) => {
  resize = m.preprocessing.resize;
  $("meta").textContent = m.classes.length + " classes: " + m.classes.join(", ") + " (" + m.variant + ")";
});

async function classify(blob, name, heatmap) {
  // One photo -> its answer; a refusal or a failed request throws an Error saying why.
  const form = new FormData();
  form.append("file", blob, name);
  let r;
  try {
    r = await fetch("predict?top_k=5&heatmap=" + heatmap, { method: "POST", body: form });
  } catch (e) { throw new Error("request failed: " + e.message); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || ("error " + r.status));
  // A multi-file request answers an unreadable file with {filename, error} in its place (200); one
  // file is refused instead, but read both, so the page stays right whichever the server does.
  const p = body.predictions && body.predictions[0];
  if (!p) throw new Error("no answer for " + name);
  if (p.error) throw new Error(p.error);
  return p;
}

function show(p) {
  const rows = p.top.map((t, i) =>
    `<div class="row ${i === 0 ? "top" : ""}"><span class="${i === 0 ? "label" : ""}">${esc(t.label)}</span>` +
    `<div class="bar"><div style="width:${(100 * t.probability).toFixed(1)}%"></div></div>` +
    `<span>${pct(t.probability)}</span></div>`).join("");
  $("scores").innerHTML = `<h2 id="prediction">${esc(p.label)}</h2>` +
    (p.familiar === false ? `<p class="unsure" id="unfamiliar">unfamiliar: this photo is unlike every photo the model was trained on, so its answer means little</p>` : "") +
    (p.unsure ? `<p class="unsure">unsure: the model is not confident about this one</p>` : "") + rows;
  if (p.heatmap) { $("heatimg").src = p.heatmap; $("heat").hidden = false; } else { $("heat").hidden = true; }
}

function fail(message) { $("scores").innerHTML = ""; $("heat").hidden = true; $("error").textContent = message; }

async function one(file) {
  const me = ++view;
  $("error").textContent = ""; $("scores").textContent = "Classifying " + file.name + "..."; $("heat").hidden = true;
  let p;
  try { p = await classify(file, file.name, true); } catch (e) { if (me === view) fail(e.message); return; }
  if (me === view) show(p);
}

function answerText(p) {
  return p.label + (p.unsure ? " (unsure)" : "") + (p.familiar === false ? " (unfamiliar)" : "");
}

function select(i) {
  [...$("rows").children].forEach((tr, k) => tr.classList.toggle("sel", k === i));
  const item = batch[i];
  $("error").textContent = "";
  if (item.answer) show(item.answer);
  else if (item.error) fail(item.error);
  else { $("scores").textContent = "Classifying " + item.file.name + "..."; $("heat").hidden = true; }
}

function summarise() {
  const done = batch.filter((b) => b.answer), failed = batch.filter((b) => b.error);
  const unsure = done.filter((b) => b.answer.unsure).length, unfamiliar = done.filter((b) => b.answer.familiar === false).length;
  const pending = batch.length - done.length - failed.length;
  const extra = [unsure ? unsure + " unsure" : "", unfamiliar ? unfamiliar + " unfamiliar" : ""].filter(Boolean).join(", ");
  $("summary").textContent = batch.length + " photos: " + done.length + " classified" + (extra ? " (" + extra + ")" : "") +
    (failed.length ? ", " + failed.length + " failed" : "") + (pending ? ", " + pending + " waiting" : "");
  if (!pending) { $("csv").href = URL.createObjectURL(new Blob([csv()], { type: "text/csv" })); $("csv").hidden = false; }
}

function csv() {
  // The columns of `vistrain predict --csv`, with the file name for its path.
  const cell = (v) => { const s = v === null || v === undefined ? "" : String(v); return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; };
  const head = ["path", "label", "probability", "unsure", "familiar", "similarity"];
  for (let k = 1; k <= 3; k++) head.push("top" + k, "top" + k + "_probability");
  head.push("error");
  const lines = [head.join(",")];
  for (const b of batch) {
    const p = b.answer, row = [b.file.name];
    if (p) {
      row.push(p.label, p.probability.toFixed(6), p.unsure, p.familiar === null ? "" : p.familiar, p.similarity === null ? "" : p.similarity.toFixed(4));
      for (let k = 0; k < 3; k++) row.push(p.top[k] ? p.top[k].label : "", p.top[k] ? p.top[k].probability.toFixed(6) : "");
      row.push("");
    } else {
      row.push("", "", "", "", "", "", "", "", "", "", "", b.error);
    }
    lines.push(row.map(cell).join(","));
  }
  return lines.join("\\r\\n") + "\\r\\n";
}

async function several(files) {
  const me = ++view;
  batch.forEach((b) => URL.revokeObjectURL(b.url));
  if ($("csv").href) URL.revokeObjectURL($("csv").href);
  batch = files.map((file) => ({ file, url: URL.createObjectURL(file) }));
  $("csv").hidden = true; $("error").textContent = ""; $("batch").hidden = false;
  $("rows").innerHTML = batch.map((b, i) =>
    `<tr data-i="${i}"><td><img alt="" src="${b.url}" onerror="thumbFailed(this, ${i})"></td><td>${esc(b.file.name)}</td>` +
    `<td class="answer">waiting...</td><td class="probability"></td></tr>`).join("");
  summarise();
  let next = 0, shown = false;
  const worker = async () => {
    while (me === view && next < batch.length) {
      const i = next++, item = batch[i], tr = $("rows").children[i];
      let answer, error;
      try { answer = await classify(item.file, item.file.name, true); } catch (e) { error = e.message; }
      if (me !== view) return;  // another photo, batch or the camera took over the page
      if (answer) {
        item.answer = answer;
        tr.querySelector(".answer").textContent = answerText(item.answer);
        tr.querySelector(".probability").textContent = pct(item.answer.probability);
        thumbFallback(tr.querySelector("img"), item);
      } else {
        item.error = error;
        tr.querySelector(".answer").innerHTML = `<span class="failed">${esc(error)}</span>`;
      }
      if (!shown) { shown = true; select(i); }
      summarise();
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, batch.length) }, worker));
}

// A format this browser cannot show (TIFF, HEIC in Chrome): the model's view of it instead. The
// thumbnail may fail before or after its answer arrives; whichever comes second swaps it in.
function thumbFailed(img, i) {
  img.hidden = true; img.dataset.failed = "1";
  if (batch[i]) thumbFallback(img, batch[i]);
}

function thumbFallback(img, item) {
  if (img.dataset.failed && item.answer && item.answer.heatmap) { img.onerror = null; img.src = item.answer.heatmap; img.hidden = false; }
}

function take(list) {
  const files = [...list];
  if (!files.length) return;
  stopCamera();
  if (files.length === 1) { $("batch").hidden = true; one(files[0]); } else { several(files); }
}

// The camera: classify a frame, show it, take the next one.
async function startCamera() {
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) {
    $("camnote").textContent = "Browsers offer the camera only to secure pages: open this page as http://localhost:" +
      (location.port || "80") + " on the computer running the server, or serve it over https. " +
      "Picking a file works everywhere (on a phone it can take a photo).";
    return;
  }
  let stream;
  $("camera").disabled = true;  // until the browser has answered: a second click would open a second stream
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) { $("camnote").textContent = "no camera: " + e.message; return; }
  finally { $("camera").disabled = false; }
  ++view;
  const session = { stream, frames: 0, t0: performance.now() };
  camera = session;
  $("batch").hidden = true; $("error").textContent = ""; $("camnote").textContent = ""; $("heat").hidden = true;
  $("video").srcObject = stream; $("live").hidden = false; $("camera").textContent = "Stop the camera";
  const canvas = document.createElement("canvas");
  while (camera === session) {
    const v = $("video");
    if (v.readyState < 2 || !v.videoWidth) { await new Promise((ok) => setTimeout(ok, 50)); continue; }
    const scale = Math.min(1, 640 / Math.max(v.videoWidth, v.videoHeight));  // enough for the model's input
    canvas.width = Math.round(v.videoWidth * scale); canvas.height = Math.round(v.videoHeight * scale);
    canvas.getContext("2d").drawImage(v, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((ok) => canvas.toBlob(ok, "image/jpeg", 0.92));
    let p;
    try { p = await classify(blob, "camera.jpg", $("camheat").checked); } catch (e) { if (camera === session) { stopCamera(); fail(e.message); } return; }
    if (camera !== session) return;
    show(p);
    placeGuide(v);
    session.frames++;
    const seconds = (performance.now() - session.t0) / 1000;
    $("rate").dataset.frames = session.frames;
    $("rate").textContent = "live: " + session.frames + " frames classified, " + (session.frames / seconds).toFixed(1) + " per second" +
      (resize === "crop" ? "; the model sees the square" : "");
  }
}

function placeGuide(v) {
  // With "crop" the model sees the centre square of each frame: frame it, so the subject goes there.
  const g = $("guide"), w = v.clientWidth, h = v.clientHeight, s = Math.min(w, h);
  g.hidden = resize !== "crop" || !s;
  Object.assign(g.style, { left: (w - s) / 2 + "px", top: (h - s) / 2 + "px", width: s + "px", height: s + "px" });
}

function stopCamera() {
  if (!camera) return;
  camera.stream.getTracks().forEach((t) => t.stop());
  camera = null;
  $("video").srcObject = null; $("live").hidden = true; $("camera").textContent = "Use the camera";
}

$("camera").addEventListener("click", () => { if (camera) stopCamera(); else startCamera(); });
$("file").addEventListener("change", (e) => { take(e.target.files); e.target.value = ""; });
$("rows").addEventListener("click", (e) => { const tr = e.target.closest("tr"); if (tr) select(Number(tr.dataset.i)); });
document.addEventListener("paste", (e) => {
  const files = [...((e.clipboardData && e.clipboardData.files) || [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) { e.preventDefault(); take(files); }
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); take(e.dataTransfer.files); });
</script>
</body>
</html>
"""
