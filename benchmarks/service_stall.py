"""One request must not stall the others: `ricl serve` on a 20,000-example index, 4 clients sending knn selects,
alone and beside a fifth client that sends only requests that would need a fit.

The server serves the default strategies plus kmeans and votek (named at start-up, as `--serve-strategy` does).
The fifth client sends one request every --gap seconds, in two scenarios. "fits": in turn kmeans and votek for a
k not asked before (each ranks the whole pool once per k: answered 503 at once and ranked in a background thread,
then served) and an unserved strategy (422). "adds": an add of 4 examples (BM25 and balanced are refitted on the
grown pool before it is swapped in, kmeans/votek rankings re-made in the background). Phases alternate (alone,
fits, alone, adds) --rounds times, so load from elsewhere hits them alike. Prints the 4 clients' latency in each
phase, the ratio of each scenario's p99 to the clients' alone, and every expensive request's status and latency.
Before issue 19 one kmeans request (k = 13) on a 3,471-example index took 4.1 s and held the others up to 3.9 s.

    python benchmarks/service_stall.py                     # about 5 minutes on 2 CPU cores (the first run embeds
                                                           # 20,000 SST-2 train phrases, ~1 minute, then cached)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import DATA, ROOT, print_machine
from service_load import free_port, query_texts, wait_for_health

SERVE = ("import os, sys\nfrom retrieval_icl.serving.service import serve, SERVED_STRATEGIES\n"

         "serve(sys.argv[1], port=int(sys.argv[2]), api_key=os.environ['RICL_API_KEY'],"
         " strategies=(*SERVED_STRATEGIES, 'kmeans', 'votek'))")


def build_index(directory: Path, n: int) -> None:
    """A seeded n of SST-2's train phrases, embedded with the packaged encoder (cached after the first run)."""
    from retrieval_icl.data.tasks import load_examples, load_task
    from retrieval_icl.retrieval.index import DemoIndex
    from retrieval_icl.retrieval.sentence_encoder import Encoder

    task = load_task("sst2")
    examples = load_examples(task, "train", DATA)
    chosen = sorted(np.random.default_rng(0).choice(len(examples), n, replace=False))
    DemoIndex(Encoder()).build([examples[i] for i in chosen], task=task.name, label_names=task.label_names,
                               text_fields=task.text_fields, show_progress=True).save(directory)


def clients(base: str, headers: dict, seconds: float, n: int) -> list[float]:
    """Latencies (s) of knn selects (k = 8) sent back to back by n clients for `seconds`."""
    latencies: list[float] = []
    queries, ticket, stop = query_texts(), itertools.count(), time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            while time.monotonic() < stop:
                start = time.perf_counter()
                reply = http.post("/select", json={"text": queries[next(ticket) % len(queries)], "k": 8})
                reply.raise_for_status()
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


SCENARIOS = {"fits": ["kmeans", "votek", "unserved"], "adds": ["add"]}


def expensive(base: str, headers: dict, seconds: float, gap: float, ks: itertools.count,
              kinds: list[str]) -> list[tuple]:
    """(kind, status, latency s) of requests that would need a fit, one every `gap` seconds for `seconds`."""
    kinds = itertools.cycle(kinds)
    sent, stop, n = [], time.monotonic() + seconds, 0
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        while time.monotonic() < stop:
            kind = next(kinds)
            if kind == "add":
                request = ("/examples", {"examples": [{"fields": f"added phrase {n} {i}", "label": i % 2}
                                                      for i in range(4)]})
            else:
                strategy = {"unserved": "mdl"}.get(kind, kind)
                k = 2 + next(ks) % 63  # a new k each time up to the server's max_k (64), then again from 2
                request = ("/select", {"text": "a gorgeous, witty film", "k": k, "strategy": strategy})
            start = time.perf_counter()
            status = http.post(request[0], json=request[1]).status_code
            sent.append((kind, status, time.perf_counter() - start))
            n += 1
            time.sleep(gap)
    return sent


def percentiles(latencies: list[float]) -> str:
    ms = np.array(latencies) * 1000
    return f"n {len(ms)}, p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30, help="per phase")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between expensive requests")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="ricl-stall-") as tmp:
        build_index(Path(tmp) / "index", args.examples)
        port, key = free_port(), secrets.token_hex(16)
        base, headers = f"http://127.0.0.1:{port}", {"X-API-Key": key}
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(Path(tmp) / "index"), str(port)],
                                env=os.environ | {"RICL_API_KEY": key}, cwd=ROOT)
        try:
            wait_for_health(base, proc, seconds=300)
            clients(base, headers, 5, args.clients)  # warm-up
            alone, beside, sent, ks = [], {name: [] for name in SCENARIOS}, [], itertools.count()
            for _ in range(args.rounds):
                for name, kinds in SCENARIOS.items():
                    alone += clients(base, headers, args.seconds, args.clients)
                    side = threading.Thread(target=lambda: sent.extend(
                        expensive(base, headers, args.seconds, args.gap, ks, kinds)))
                    side.start()
                    beside[name] += clients(base, headers, args.seconds, args.clients)
                    side.join()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{args.clients} clients alone:       {percentiles(alone)}")
    for name, latencies in beside.items():
        ratio = np.percentile(latencies, 99) / np.percentile(alone, 99)
        print(f"{args.clients} clients beside {name}: {percentiles(latencies)}; p99 {ratio:.2f}x alone")
    for kind in (kind for kinds in SCENARIOS.values() for kind in kinds):
        mine = [(status, t) for k, status, t in sent if k == kind]
        statuses = json.dumps({str(s): sum(1 for x, _ in mine if x == s) for s in sorted({x for x, _ in mine})})
        print(f"{kind:>8}: statuses {statuses}; {percentiles([t for _, t in mine])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
