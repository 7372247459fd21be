"""Load test of `pluralign serve`: N concurrent clients for T seconds against 127.0.0.1, once with dynamic
batching and once without, side by side.

    python bench/serve_load.py                 # 16 clients, 20 s per side, the sandbox base model
    python bench/serve_load.py --quick         # 16 clients, 6 s per side

The server runs as a subprocess (`pluralign serve`, its own process and torch threads); the clients are
threads here, each sending one /v1/completions request at a time (fixed work: `max_tokens` tokens with
`ignore_eos`, so both sides generate the same number of tokens per request). Every request carries a
unique nonce; the bench checks that each got exactly one answer and that the server's own count of
answered requests equals the clients' (no request lost or answered twice). Prints requests/s, generated
tokens/s, p50/p95/p99 latency and errors per side, the tokens/s ratio, and a RESULT line.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from pluralign.cli import positive_int

HOST = "127.0.0.1"  # this bench only ever talks to the local machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, batching: bool, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pluralign.cli", "serve", "--model", model, "--host", HOST, "--port", str(port),
           "--served-name", "bench", "--rate-limit", "1000000", "--max-concurrent", "1000",
           "--batching" if batching else "--no-batching"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


def served_count(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith('pluralign_requests_total{endpoint="completions",status="200"}'))


def run_load(url: str, prompts: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    lat, tokens, errors, answers = [], [], [], {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(cid: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            i = 0
            while time.monotonic() < stop_at:
                nonce = f"{cid}-{i}"
                body = {"model": "bench", "prompt": prompts[(cid + i) % len(prompts)], "max_tokens": max_tokens,
                        "ignore_eos": True, "temperature": 1.0}
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/completions", json=body)
                    ok = r.status_code == 200
                    data = r.json() if ok else None
                except httpx.HTTPError as e:
                    ok, data = False, str(e)
                with lock:
                    if ok:
                        lat.append(time.monotonic() - t0)
                        tokens.append(data["usage"]["completion_tokens"])
                        answers.setdefault(nonce, []).append(data["id"])
                    else:
                        errors.append(nonce)
                i += 1

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    ids = [i for v in answers.values() for i in v]
    return {"requests": len(lat), "wall": wall, "rps": len(lat) / wall, "tok_s": sum(tokens) / wall,
            "p50": q[49], "p95": q[94], "p99": q[98], "errors": len(errors),
            "duplicates": sum(len(v) - 1 for v in answers.values()) + len(ids) - len(set(ids))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the sandbox base model, built and cached)")
    ap.add_argument("--clients", type=positive_int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=positive_int, default=32)
    ap.add_argument("--server-threads", type=positive_int, default=1, help="torch threads of the server process")
    ap.add_argument("--quick", action="store_true", help="6 s per side")
    args = ap.parse_args()
    if not 0 < args.seconds < math.inf:  # inf would keep the clients sending for ever
        ap.error(f"--seconds must be a finite number above 0, got {args.seconds}")
    seconds = 6.0 if args.quick else args.seconds
    from pluralign.sandbox import build_base
    from pluralign.sandbox.gold import eval_prompts

    model = args.model or str(build_base())
    prompts = eval_prompts(64, seed=11)
    rows = {}
    for batching in (True, False):
        port = free_port()
        url = f"http://{HOST}:{port}"
        proc = start_server(model, port, batching, args.server_threads)
        try:
            run_load(url, prompts, 2, 1.0, args.max_tokens)  # warm-up, not counted
            before = served_count(url)
            res = run_load(url, prompts, args.clients, seconds, args.max_tokens)
            res["lost"] = abs(served_count(url) - before - res["requests"])
        finally:
            proc.terminate()
            proc.wait(30)
        rows[batching] = res
        name = "batching on " if batching else "batching off"
        print(f"{name}: {res['requests']} requests in {res['wall']:.1f} s, {res['rps']:.2f} req/s, "
              f"{res['tok_s']:.1f} generated tok/s, latency p50 {res['p50']:.3f} s p95 {res['p95']:.3f} s "
              f"p99 {res['p99']:.3f} s, errors {res['errors']}, lost {res['lost']}, answered twice {res['duplicates']}",
              flush=True)
    on, off = rows[True], rows[False]
    ratio = on["tok_s"] / off["tok_s"] if off["tok_s"] else float("inf")
    print(f"dynamic batching: {ratio:.2f}x generated tokens/s at {args.clients} concurrent clients")
    bad = sum(r["errors"] + r["lost"] + r["duplicates"] for r in rows.values())
    print(f"RESULT clients={args.clients} seconds={seconds:g} max_tokens={args.max_tokens} "
          f"tok_s_batched={on['tok_s']:.1f} tok_s_unbatched={off['tok_s']:.1f} speedup={ratio:.2f} "
          f"rps_batched={on['rps']:.2f} rps_unbatched={off['rps']:.2f} p50_batched={on['p50']:.3f} "
          f"p99_batched={on['p99']:.3f} p50_unbatched={off['p50']:.3f} p99_unbatched={off['p99']:.3f} "
          f"errors={on['errors'] + off['errors']} lost={on['lost'] + off['lost']} "
          f"duplicates={on['duplicates'] + off['duplicates']}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
