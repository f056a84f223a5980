"""``vistrain clean``: a local review page (FastAPI + one plain HTML page) over the audit's suspects.

Every action goes through the :class:`Journal` (journal first, then the move). Paths from the
browser are resolved against the data folder and refused when they could leave it; requests whose
Host is not this machine are refused too (no DNS rebinding), and so is every request that changes
something when the browser says it comes from another page (another site, or another port of this
machine): a web page elsewhere cannot drive the server.
"""

from __future__ import annotations

import io
from pathlib import Path

from pydantic import BaseModel

from vistrain.clean.audit import AuditResult
from vistrain.clean.journal import QUARANTINE, CleanError, Journal, safe_path
from vistrain.data.layout import label_folder

# The page asks for the default; the bounds keep Pillow from a zero scale and the server from
# decoding a photo at 100000 px.
THUMB = 224
# Suspect kinds in review order; the score ranks within a kind.
PRIORITY = {"conflict": 0, "label_error": 1, "exact_duplicate": 2, "near_duplicate": 3, "outlier": 4}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SAFE_METHODS = {"GET", "HEAD"}
# Sec-Fetch-Site values of requests made by another page; "same-site" includes any other port of
# localhost, so only "same-origin" (this page) and "none" (typed by the user) pass.
FOREIGN_SITES = {"cross-site", "same-site"}


class Target(BaseModel):
    """What the page sends: a path relative to the data folder (checked before use) and a class."""

    path: str
    label: str | None = None


def suspects(result: AuditResult) -> list[dict]:
    """One row per file: the most pressing finding about it, ranked (conflicts first, then label errors...)."""
    rows: dict[str, dict] = {}
    for f in result.findings:
        if f.kind not in PRIORITY:
            continue
        # A duplicate finding lists the file to keep first (clean.keep), so only the others are suspects.
        files = f.files[1:] if f.kind in ("exact_duplicate", "near_duplicate") else f.files
        for path in files:
            row = {"path": path, "kind": f.kind, "message": f.message, "score": f.score, **_labels(result, path)}
            old = rows.get(path)
            if old is None or PRIORITY[f.kind] < PRIORITY[old["kind"]]:
                rows[path] = row
    return sorted(rows.values(), key=lambda r: (PRIORITY[r["kind"]], -(r["score"] or 0), r["path"]))


def foreign_page(method: str, scheme: str, headers) -> str | None:
    """Why a request that changes something comes from another page, or None when it does not.

    A cross-origin "simple" POST (no body, or a form) reaches the server without a CORS preflight,
    so the Host check alone cannot stop another local page from clicking undo. Browsers name the
    page that sent a request (Origin, Sec-Fetch-Site); requests without them (curl, scripts) do not
    come from a page and pass.
    """
    if method.upper() in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    own = f"{scheme}://{headers.get('host', '')}".lower()
    if origin is not None and origin.lower() != own:
        return f"origin {origin!r} is not this page ({own})"
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() in FOREIGN_SITES:
        return f"Sec-Fetch-Site {site!r}: sent by another page"
    return None


def _labels(result: AuditResult, path: str) -> dict:
    p = result.predictions.get(path, {})
    found = label_folder(Path(path), result.classes)  # cats/2019/x.jpg is a cat, not a "2019"
    label = p.get("label") or (found.name if found else Path(path).parent.name)
    return {"label": label, "predicted": p.get("predicted"), "probability": p.get("probability")}


def create_app(root: Path, result: AuditResult, journal: Journal | None = None, host: str = "127.0.0.1"):
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    root = Path(root).resolve()
    journal = journal or Journal(root)
    rows, classes = suspects(result), result.classes
    allowed = LOCAL_HOSTS | {host}
    app = FastAPI(title="vistrain clean", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def local_only(request: Request, call_next):
        name = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if name not in allowed:
            return JSONResponse({"detail": f"refused: host {name!r} is not this machine"}, status_code=403)
        why = foreign_page(request.method, request.url.scheme, request.headers)
        if why:
            return JSONResponse({"detail": f"refused: {why}"}, status_code=403)
        return await call_next(request)

    def state() -> dict:
        journal.refresh()  # `clean --undo` may have changed it meanwhile: show the file, not memory
        reviewed = journal.reviewed()
        out = []
        for r in rows:
            now = journal.location(r["path"])
            status = reviewed.get(now, "open")
            label = Path(now).parent.name if status == "relabel" else r["label"]
            out.append({**r, "current": now, "status": status, "current_label": label})
        last = journal.undoable()
        return {"root": str(root), "classes": classes, "suspects": out, "recovered": journal.recovered,
                "undo": f"{last[-1]['action']} {last[-1]['src']}" if last else None,
                "quarantine": f"{root / QUARANTINE}"}

    def act(fn, *args) -> dict:
        try:
            done = fn(*args)
        except CleanError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"done": done, **state()}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/state")
    def get_state() -> dict:
        return state()

    @app.get("/api/thumb")
    def thumb(path: str, size: int = Query(THUMB, ge=16, le=1024)) -> Response:
        from vistrain.data.images import ImageError, load_rgb

        try:
            full = safe_path(root, path)
        except CleanError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            # As training sees it: upright (a phone photo's EXIF rotation applied), HEIC included.
            img = load_rgb(full, min_side=size)
        except ImageError as exc:  # say so, keep the page
            raise HTTPException(422, f"{path}: cannot be shown ({exc.reason})") from None
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg")

    @app.post("/api/keep")
    def keep(t: Target) -> dict:
        return act(journal.keep, t.path)

    @app.post("/api/quarantine")
    def quarantine(t: Target) -> dict:
        return act(journal.quarantine, t.path)

    @app.post("/api/relabel")
    def relabel(t: Target) -> dict:
        if not t.label:
            raise HTTPException(400, "relabel needs a label")
        return act(journal.relabel, t.path, t.label, classes)

    @app.post("/api/undo")
    def undo() -> dict:
        return act(journal.undo)

    return app


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vistrain clean</title>
<link rel="icon" href="data:,">
<style>
 body { font: 14px system-ui, sans-serif; margin: 0; background: #f4f4f4; }
 header { position: sticky; top: 0; background: #222; color: #eee; padding: 8px 14px; display: flex; gap: 14px; align-items: center; z-index: 1; }
 header button { font-size: 14px; }
 #status { flex: 1; }
 main { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px; padding: 14px; }
 .card { background: #fff; border: 3px solid transparent; border-radius: 6px; padding: 8px; }
 .card.focus { border-color: #1565c0; }
 .card.relabel { background: #e8f5e9; } .card.quarantine { background: #fdecea; } .card.keep { background: #eef; }
 .card img { width: 100%; height: 200px; object-fit: contain; background: #ddd; }
 .kind { font-weight: 600; } .msg { color: #555; font-size: 12px; min-height: 2.4em; }
 .path { font-family: monospace; font-size: 11px; word-break: break-all; }
 .keys { font-size: 12px; color: #bbb; }
</style></head>
<body>
<header><b>vistrain clean</b><span id="status">loading...</span>
<button id="undo" title="u">Undo</button>
<span class="keys">&larr;/&rarr; move &middot; k keep &middot; q quarantine &middot; p relabel to the predicted class &middot; 1-9 relabel to class n &middot; u undo</span></header>
<main id="grid"></main>
<script>
let S = null, focus = 0;
const $ = (s, e = document) => e.querySelector(s);
async function call(url, body) {
  const r = await fetch(url, body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                                      body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) { $("#status").textContent = "refused: " + data.detail; return null; }
  return data;
}
function statusText(s) {
  if (s.status === "relabel") return "relabelled to " + s.current_label;
  if (s.status === "quarantine") return "quarantined";
  if (s.status === "keep") return "kept";
  return "";
}
function render() {
  const grid = $("#grid"); grid.innerHTML = "";
  S.suspects.forEach((s, i) => {
    const c = document.createElement("div");
    c.className = "card " + s.status + (i === focus ? " focus" : "");
    c.dataset.path = s.path; c.dataset.status = s.status;
    c.innerHTML = `<img loading="lazy" alt="">
      <div><span class="kind"></span> <span class="score"></span></div>
      <div>given <b class="given"></b>; predicted <b class="pred"></b></div>
      <div class="msg"></div><div class="path"></div><div class="state"></div>
      <button class="keep">Keep</button> <button class="quar">Quarantine</button>
      <button class="accept" hidden></button>
      <select></select> <button class="relabel">Relabel</button>`;
    // Class names are folder names: text, never markup (a folder may be called "a<b" or 'say "hi"').
    S.classes.forEach((k, n) => $("select", c).add(new Option(`${n + 1}. ${k}`, k, false, k === s.current_label)));
    if (canAccept(s)) {
      const b = $(".accept", c);
      b.hidden = false; b.textContent = "Relabel to " + s.predicted; b.title = "p";
      b.onclick = () => act("relabel", i, s.predicted);
    }
    $("img", c).src = "/api/thumb?path=" + encodeURIComponent(s.current);
    $(".kind", c).textContent = s.kind.replace("_", " ");
    $(".score", c).textContent = s.score == null ? "" : "score " + s.score.toFixed(2);
    $(".given", c).textContent = s.label;
    $(".pred", c).textContent = s.predicted ? `${s.predicted} (${Math.round(100 * s.probability)}%)` : "-";
    $(".msg", c).textContent = s.message; $(".path", c).textContent = s.current;
    $(".state", c).textContent = statusText(s);
    const open = s.status === "open";
    c.querySelectorAll("button, select").forEach(b => b.disabled = !open);
    $(".keep", c).onclick = () => act("keep", i);
    $(".quar", c).onclick = () => act("quarantine", i);
    $(".relabel", c).onclick = () => act("relabel", i, $("select", c).value);
    c.onclick = () => { focus = i; highlight(); };
    grid.appendChild(c);
  });
  const open = S.suspects.filter(s => s.status === "open").length;
  $("#status").textContent = `${S.suspects.length} suspects, ${open} to review` +
    (S.undo ? ` - undo: ${S.undo}` : "") + (S.recovered.length ? ` - recovered: ${S.recovered.join("; ")}` : "");
  $("#undo").disabled = !S.undo;
}
function canAccept(s) { return !!s.predicted && s.predicted !== s.current_label && S.classes.includes(s.predicted); }
function highlight() {
  document.querySelectorAll(".card").forEach((c, i) => c.classList.toggle("focus", i === focus));
  const f = document.querySelectorAll(".card")[focus]; if (f) f.scrollIntoView({block: "nearest"});
}
async function act(kind, i, label) {
  const s = S.suspects[i]; if (!s || s.status !== "open") return;
  const r = await call("/api/" + kind, {path: s.current, label});
  if (r) { S = r; focus = Math.min(i + 1, S.suspects.length - 1); render(); highlight(); }
}
async function undo() { const r = await call("/api/undo", {}); if (r) { S = r; render(); highlight(); } }
$("#undo").onclick = undo;
document.addEventListener("keydown", e => {
  if (!S || e.target.tagName === "SELECT") return;
  if (e.key === "ArrowRight" || e.key === "j") { focus = Math.min(focus + 1, S.suspects.length - 1); highlight(); }
  else if (e.key === "ArrowLeft" || e.key === "h") { focus = Math.max(focus - 1, 0); highlight(); }
  else if (e.key === "k") act("keep", focus);
  else if (e.key === "q") act("quarantine", focus);
  else if (e.key === "p" && S.suspects[focus] && canAccept(S.suspects[focus])) act("relabel", focus, S.suspects[focus].predicted);
  else if (e.key === "u" || (e.key === "z" && (e.ctrlKey || e.metaKey))) undo();
  else if (/^[1-9]$/.test(e.key) && S.classes[+e.key - 1]) act("relabel", focus, S.classes[+e.key - 1]);
});
call("/api/state").then(r => { S = r; render(); });
</script></body></html>
"""
