"""Load test for `ricl serve`: concurrent selects while examples are added, all on 127.0.0.1.

Starts the server on a copy of an index (default: SST-2 validation, 872 examples), sends --requests select
requests from --clients concurrent clients while another client adds --adds examples in small batches spread
over the run, then checks that every added example is searchable (BM25 on a marker word only it contains) and
saved on disk. Bounded: it stops by itself after --requests selects or --max-seconds, whichever comes first.

    python benchmarks/service_load.py                      # about a minute on 2 CPU cores
    python benchmarks/service_load.py --requests 500 --clients 4
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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STRATEGIES = ["knn"] * 6 + ["mmr", "bm25", "balanced", "random"]  # mostly knn, every strategy exercised
ADD_BATCH = 4


@dataclass
class Tally:
    """What the clients saw; appended to from many threads (list.append is atomic in CPython)."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    added: dict[int, str] = field(default_factory=dict)  # id -> marker word


def build_default_index(directory: Path) -> None:
    """SST-2 validation (872 examples) with the packaged encoder; embeddings cached after the first run."""
    from retrieval_icl.encoders import Encoder
    from retrieval_icl.index import DemoIndex
    from retrieval_icl.tasks import load_examples, load_task

    task = load_task("sst2")
    examples = load_examples(task, "validation", DATA)
    DemoIndex(Encoder()).build(examples, task=task.name, label_names=task.label_names,
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


def start_server(index_dir: Path, port: int, api_key: str) -> subprocess.Popen:
    env = os.environ | {"RICL_API_KEY": api_key}
    return subprocess.Popen([sys.executable, "-m", "retrieval_icl", "serve", "--index", str(index_dir),
                             "--port", str(port)], env=env, cwd=ROOT)


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


def report(tally: Tally, wall: float, args: argparse.Namespace, found: int, on_disk: int, expected: int) -> bool:
    """Print the figures; True when there were no errors and every added example is found and saved."""
    ms = np.array(tally.latencies) * 1000
    print(f"selects: {len(ms)} from {args.clients} clients in {wall:.1f} s ({len(ms) / wall:.0f}/s)")
    print(f"latency ms: p50 {np.percentile(ms, 50):.1f}  p99 {np.percentile(ms, 99):.1f}  max {ms.max():.1f}")
    print(f"errors: {len(tally.errors)}" + "".join(f"\n  {e}" for e in tally.errors[:10]))
    print(f"added: {len(tally.added)} examples; searchable afterwards: {found}/{len(tally.added)}; "
          f"saved on disk: {on_disk} examples (expected {expected})")
    return not tally.errors and found == len(tally.added) == args.adds and on_disk == expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index to copy and serve (default: build SST-2 validation)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--adds", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ricl-load-") as tmp:
        index_dir = Path(tmp) / "index"
        if args.index:
            shutil.copytree(args.index, index_dir)
        else:
            build_default_index(index_dir)
        return run(index_dir, args)


def run(index_dir: Path, args: argparse.Namespace) -> int:
    from retrieval_icl.index import DemoIndex

    port, api_key = free_port(), secrets.token_hex(16)
    base, headers = f"http://127.0.0.1:{port}", {"X-API-Key": api_key}
    proc = start_server(index_dir, port, api_key)
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
    ok = report(tally, wall, args, found, len(DemoIndex.load(index_dir)), initial + args.adds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
