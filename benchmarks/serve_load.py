"""A bounded load test of `vistrain serve` on loopback: requests/s, latency p50/p99, errors, and the
server's resident memory before and after.

    python benchmarks/serve_load.py RUN_OR_EXPORT IMAGE [--seconds 20] [--clients 8] [--variant auto] [--max-batch 16]
                                    [--heatmap]

One client with and without ``--heatmap`` is the web page's camera, with and without its heat map.

Starts the server as a subprocess on 127.0.0.1 (a free port), waits for /health, then keeps
``--clients`` concurrent clients posting IMAGE for ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, image: bytes, name: str, seconds: float, clients: int,
               heatmap: bool = False) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/predict", files={"file": (name, image, "image/jpeg")},
                                 params={"heatmap": str(heatmap).lower()})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=60) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return latencies, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("image", type=Path)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=16, help="1 turns micro-batching off, for comparison")
    ap.add_argument("--heatmap", action="store_true", help="ask for each answer's heat map (a JPEG data URL)")
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "vistrain", "serve", str(args.model), "--port", str(port),
                               "--variant", args.variant, "--threads", str(args.threads),
                               "--max-batch", str(args.max_batch)])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        image = args.image.read_bytes()
        asyncio.run(load(url, image, args.image.name, 2, 2))  # warm-up, not counted
        before = rss_mb(server.pid)
        h0 = httpx.get(f"{url}/health").json()
        lat, errors = asyncio.run(load(url, image, args.image.name, args.seconds, args.clients, args.heatmap))
        h1 = httpx.get(f"{url}/health").json()
        after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat_ms = np.array(lat) * 1000
    batches = h1["batches"] - h0["batches"]
    print(f"{len(lat)} requests in {args.seconds:.0f} s with {args.clients} clients ({h1['variant']}, "
          + ("heat maps, " if args.heatmap else "") +
          f"{args.threads} ONNX Runtime threads): {len(lat) / args.seconds:.1f} req/s, "
          f"p50 {np.percentile(lat_ms, 50):.0f} ms, p99 {np.percentile(lat_ms, 99):.0f} ms, errors {len(errors)}")
    print(f"model calls {batches}, mean batch {(h1['images'] - h0['images']) / max(batches, 1):.1f} images, "
          f"largest {h1['largest_batch']}; server RSS {before:.0f} MB before, {after:.0f} MB after")
    for e in errors[:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
