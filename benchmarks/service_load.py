"""Load test for `ricl serve`: concurrent selects while examples are added, all on 127.0.0.1.

Starts the server on a copy of an index (default: SST-2 validation, 872 examples), sends --requests select
requests from --clients concurrent clients while another client adds --adds examples in small batches spread
over the run, then checks that every added example is searchable (BM25 on a marker word only it contains) and
saved on disk. Bounded: it stops by itself after --requests selects or --max-seconds, whichever comes first.

By default (--mode compare) it does that three times in one run, each time on a fresh copy of the index: against
a server answering each select alone (create_app(batching=False)), against one batching concurrent selects (what
`ricl serve` runs), both on an index embedded with the default torch encoder, and against the batching server on
the same examples embedded with the onnx encoder backend (float32 on ONNX Runtime; the backend is the index's:
queries are embedded the way the pool was). It prints each and their ratios to the per-request server.
--rounds 2 runs A B C, then C B A.

    python benchmarks/service_load.py                      # a few minutes on 2 CPU cores
    python benchmarks/service_load.py --requests 40 --clients 4 --adds 8   # a smoke test
    python benchmarks/service_load.py --mode batching --requests 500 --clients 4
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import httpx
import numpy as np
from common import DATA, ROOT

STRATEGIES = ["knn"] * 6 + ["mmr", "bm25", "balanced", "random"]  # mostly knn, every strategy exercised
ADD_BATCH = 4
MODES = {"per-request": (False, "torch"), "batching": (True, "torch"),  # name -> (create_app(batching=...),
         "batching-onnx": (True, "onnx")}                         #          the index's encoder backend)
SERVE = ("import os, sys\nfrom retrieval_icl.serving.service import serve\n"
         "serve(sys.argv[1], port=int(sys.argv[2]), api_key=os.environ['RICL_API_KEY'], batching=sys.argv[3] == '1')")


@dataclass
class Tally:
    """What the clients saw; appended to from many threads (list.append is atomic in CPython)."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    added: dict[int, str] = field(default_factory=dict)  # id -> marker word


@dataclass
class Outcome:
    """One load run against one server."""

    mode: str
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    ok: bool


def build_default_index(directory: Path, backend: str) -> None:
    """SST-2 validation (872 examples) with the packaged encoder on `backend`; embeddings cached after the first
    run."""
    from retrieval_icl.data.tasks import load_examples, load_task
    from retrieval_icl.retrieval.index import DemoIndex
    from retrieval_icl.retrieval.sentence_encoder import Encoder

    task = load_task("sst2")
    examples = load_examples(task, "validation", DATA)
    DemoIndex(Encoder(backend=backend)).build(examples, task=task.name, label_names=task.label_names,
                                              text_fields=task.text_fields, show_progress=True).save(directory)


def query_texts() -> list[str]:
    """Queries: SST-2 test sentences (not in the pool)."""
    import json

    with (DATA / "sst2" / "test.jsonl").open() as f:
        return [json.loads(line)["sentence"] for line in f]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, port: int, api_key: str, batching: bool) -> subprocess.Popen:
    """`ricl serve`'s service.serve in its own process, with batching on or off."""
    env = os.environ | {"RICL_API_KEY": api_key}
    return subprocess.Popen([sys.executable, "-c", SERVE, str(index_dir), str(port), str(int(batching))], env=env,
                            cwd=ROOT)


def wait_for_health(base: str, proc: subprocess.Popen, seconds: float) -> dict:
    """Poll GET /health until it answers; fail if the server exits or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            return httpx.get(f"{base}/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {seconds} s")


def selector_client(base: str, headers: dict, queries: list[str], total: int, deadline: float, tally: Tally,
                    ticket: itertools.count) -> None:
    """Send selects until `total` have been sent by all clients together, or the deadline passes."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for n in ticket:
            if n >= total or time.monotonic() > deadline:
                return
            body = {"text": queries[n % len(queries)], "k": 8, "strategy": STRATEGIES[n % len(STRATEGIES)]}
            start = time.perf_counter()
            try:
                reply = client.post("/select", json=body)
                if reply.status_code != 200 or len(reply.json()["examples"]) != 8:
                    tally.errors.append(f"select {n}: HTTP {reply.status_code} {reply.text[:200]}")
            except httpx.HTTPError as e:
                tally.errors.append(f"select {n}: {e!r}")
            tally.latencies.append(time.perf_counter() - start)


def adder_client(base: str, headers: dict, adds: int, total: int, deadline: float, tally: Tally) -> None:
    """Add `adds` examples in batches of ADD_BATCH, each batch once its share of the selects is done."""
    batches = -(-adds // ADD_BATCH)
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for b in range(batches):
            while len(tally.latencies) < (b + 0.5) * total / batches and time.monotonic() < deadline:
                time.sleep(0.01)  # spread the adds over the run
            markers = [f"lt{b * ADD_BATCH + i:05d}q" for i in range(min(ADD_BATCH, adds - b * ADD_BATCH))]
            rows = [{"fields": f"load test review {m}, sharp and {'funny' if i % 2 else 'dull'}", "label": i % 2}
                    for i, m in enumerate(markers)]
            try:
                reply = client.post("/examples", json={"examples": rows})
                reply.raise_for_status()
                tally.added.update(zip(reply.json()["ids"], markers))
            except httpx.HTTPError as e:
                tally.errors.append(f"add batch {b}: {e!r}")


def searchable(base: str, headers: dict, added: dict[int, str]) -> int:
    """How many added examples come first for a BM25 query on their marker word."""
    found = 0
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for id_, marker in added.items():
            reply = client.post("/select", json={"text": marker, "k": 1, "strategy": "bm25"})
            found += reply.status_code == 200 and reply.json()["examples"][0]["id"] == id_
    return found


def report(mode: str, tally: Tally, wall: float, args: argparse.Namespace, found: int, on_disk: int,
           expected: int) -> Outcome:
    """Print the figures of one run; ok when there were no errors and every added example is found and saved."""
    ms = np.array(tally.latencies) * 1000
    outcome = Outcome(mode, len(ms) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                      len(tally.errors),
                      not tally.errors and found == len(tally.added) == args.adds and on_disk == expected)
    print(f"[{mode}] selects: {len(ms)} from {args.clients} clients in {wall:.1f} s ({outcome.per_second:.0f}/s)")
    print(f"[{mode}] latency ms: p50 {outcome.p50_ms:.1f}  p99 {outcome.p99_ms:.1f}  max {ms.max():.1f}")
    print(f"[{mode}] errors: {len(tally.errors)}" + "".join(f"\n  {e}" for e in tally.errors[:10]))
    print(f"[{mode}] added: {len(tally.added)} examples; searchable afterwards: {found}/{len(tally.added)}; "
          f"saved on disk: {on_disk} examples (expected {expected})", flush=True)
    return outcome


def summarise(outcomes: list[Outcome]) -> None:
    """Per mode the median over rounds; with both modes, batching's requests/s and p99 over per-request's."""
    rows = {}
    print(f"\n{'mode':<12} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  ok")
    for mode in MODES:
        mine = [o for o in outcomes if o.mode == mode]
        if mine:
            rows[mode] = [median(getattr(o, f) for o in mine) for f in ("per_second", "p50_ms", "p99_ms")]
            print(f"{mode:<12} {rows[mode][0]:>7.1f} {rows[mode][1]:>8.1f} {rows[mode][2]:>8.1f} "
                  f"{sum(o.errors for o in mine):>6}  {all(o.ok for o in mine)}")
    if "per-request" in rows:
        base_rps, _, base_p99 = rows["per-request"]
        for mode, (rps, _, p99) in rows.items():
            if mode != "per-request":
                print(f"{mode} / per-request: {rps / base_rps:.2f}x the requests/s, p99 {p99 / base_p99:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index to copy and serve (default: build SST-2 validation)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adds", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=600, help="per server run")
    parser.add_argument("--mode", choices=["compare", *MODES], default="compare",
                        help="compare: the same load against a per-request and a batching server, in one run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per mode; alternating A B, B A")
    args = parser.parse_args()
    modes = list(MODES) if args.mode == "compare" else [args.mode]
    if args.index:  # a given index has its own backend: only the modes that do not choose one
        modes = [m for m in modes if MODES[m][1] == "torch"]
        if not modes:
            parser.error("--index serves its own backend; use a mode without one (per-request or batching)")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="ricl-load-") as tmp:
        sources = {}
        for backend in dict.fromkeys(MODES[m][1] for m in modes):
            sources[backend] = args.index or Path(tmp) / f"source-{backend}"
            if not args.index:
                build_default_index(sources[backend], backend)
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                index_dir = Path(tmp) / f"{mode}-{r}"  # a fresh copy: every run starts from the same pool
                shutil.copytree(sources[MODES[mode][1]], index_dir)
                outcomes.append(run(index_dir, args, mode))
    summarise(outcomes)
    return 0 if all(o.ok for o in outcomes) else 1


def run(index_dir: Path, args: argparse.Namespace, mode: str) -> Outcome:
    """The load against one server on `index_dir`, then the searchability and on-disk checks."""
    from retrieval_icl.retrieval.index import DemoIndex

    port, api_key = free_port(), secrets.token_hex(16)
    base, headers = f"http://127.0.0.1:{port}", {"X-API-Key": api_key}
    proc = start_server(index_dir, port, api_key, MODES[mode][0])
    try:
        initial = wait_for_health(base, proc, seconds=180)["count"]
        tally, ticket, queries = Tally(), itertools.count(), query_texts()
        deadline = time.monotonic() + args.max_seconds
        threads = [threading.Thread(target=selector_client, args=(base, headers, queries, args.requests, deadline,
                                                                  tally, ticket)) for _ in range(args.clients)]
        threads.append(threading.Thread(target=adder_client, args=(base, headers, args.adds, args.requests, deadline,
                                                                   tally)))
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        found = searchable(base, headers, tally.added)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return report(mode, tally, wall, args, found, len(DemoIndex.load(index_dir)), initial + args.adds)


if __name__ == "__main__":
    sys.exit(main())
