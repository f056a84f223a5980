"""The web page served at ``/``: drop or pick an image, see the top classes and the heat map.

One self-contained HTML document (no external scripts, styles or fonts: it works offline)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vistrain classifier</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; }
  #drop { border: 2px dashed #888; border-radius: 10px; padding: 2rem; text-align: center; cursor: pointer; }
  #drop.over { background: #eef5ff; border-color: #2b6cb0; }
  #meta { color: #666; font-size: .9rem; }
  #result { margin-top: 1.5rem; display: flex; gap: 1.5rem; flex-wrap: wrap; }
  #result img { max-width: 300px; border-radius: 6px; }
  .row { display: grid; grid-template-columns: 11rem 1fr 4rem; gap: .5rem; align-items: center; margin: .3rem 0; }
  .bar { background: #e5e7eb; border-radius: 4px; height: 1rem; }
  .bar > div { background: #2b6cb0; height: 100%; border-radius: 4px; }
  .top .bar > div { background: #2f855a; }
  .unsure { color: #b7791f; font-weight: bold; }
  #error { color: #c53030; margin-top: 1rem; }
</style>
</head>
<body>
<h1>What is in this photo?</h1>
<p id="meta">Loading model...</p>
<label id="drop" for="file">Drop an image here, or click to pick one
  <input id="file" type="file" accept="image/*,.heic,.heif" hidden>
</label>
<div id="error" role="alert"></div>
<div id="result">
  <div id="scores" style="flex: 1; min-width: 280px"></div>
  <figure id="heat" hidden><img id="heatimg" alt="heat map: where the model looked"><figcaption>where the model looked</figcaption></figure>
</div>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
fetch("model").then((r) => r.json()).then((m) => {
  $("meta").textContent = m.classes.length + " classes: " + m.classes.join(", ") + " (" + m.variant + ")";
});
function show(p) {
  const rows = p.top.map((t, i) =>
    `<div class="row ${i === 0 ? "top" : ""}"><span class="${i === 0 ? "label" : ""}">${esc(t.label)}</span>` +
    `<div class="bar"><div style="width:${(100 * t.probability).toFixed(1)}%"></div></div>` +
    `<span>${(100 * t.probability).toFixed(1)}%</span></div>`).join("");
  $("scores").innerHTML = `<h2 id="prediction">${esc(p.label)}</h2>` +
    (p.familiar === false ? `<p class="unsure" id="unfamiliar">unfamiliar: this photo is unlike every photo the model was trained on, so its answer means little</p>` : "") +
    (p.unsure ? `<p class="unsure">unsure: the model is not confident about this one</p>` : "") + rows;
  if (p.heatmap) { $("heatimg").src = p.heatmap; $("heat").hidden = false; }
}
async function send(file) {
  $("error").textContent = ""; $("scores").textContent = "Classifying " + file.name + "..."; $("heat").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const r = await fetch("predict?heatmap=true&top_k=5", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) { $("scores").innerHTML = ""; $("error").textContent = body.detail || ("error " + r.status); return; }
    show(body.predictions[0]);
  } catch (e) { $("scores").innerHTML = ""; $("error").textContent = "request failed: " + e; }
}
$("file").addEventListener("change", (e) => { if (e.target.files.length) send(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
