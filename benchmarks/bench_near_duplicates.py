"""Near-duplicate lookup (retrieval_icl/retrieval/near_duplicates.py): build and per-query time, and who has
near-duplicates.

1. SST-2 GLUE train (67,349 phrases): `NearDuplicates` build time and table memory, per-query time on validation
   sentences and on train phrases, against a brute-force scan (each query against every pre-normalised row, the
   rule of `is_near_duplicate`) on a few queries, with the rows of both compared.
2. AG News: the local train sample (10,001 texts) and a pool of 120,000 (the sample plus seeded word-shuffled copies
   of it, the size of the real train split; shuffling keeps the words and their frequencies, not the trigrams),
   test sentences as queries.
3. Shares: of 200 SST-2 train phrases of >= 4 words (seed 0) and of 100 sst2_sent validation sentences (seed 0),
   how many have a near-duplicate elsewhere in SST-2 train (rows with the same text left out: the pool excludes
   those anyway), the share of those pairs with the query's label, and by which part of the rule.

    python benchmarks/bench_near_duplicates.py          # ~1 minute on 2 shared CPU cores
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from common import DATA, peak_delta_mb, print_machine

from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.retrieval.near_duplicates import NearDuplicates, normalise, shares_most


def trigram_set(norm: str) -> set[tuple[str, ...]]:
    words = norm.split()
    return set(zip(words, words[1:], words[2:]))


def brute_force_rows(query: str, pool_norm: list[str], pool_tri: list[set]) -> list[int]:
    """The rule of is_near_duplicate, the query against every pre-normalised pool row."""
    nq = normalise(query)
    tq, padded = trigram_set(nq), f" {nq} "
    return [r for r, (nr, tr) in enumerate(zip(pool_norm, pool_tri))
            if nr == nq or (nq and nr and (f" {nr} " in padded or padded in f" {nr} "))
            or shares_most(len(tq & tr), len(tq), len(tr))]


def timed_build(texts: list[str]) -> tuple[NearDuplicates, float, float]:
    start = time.perf_counter()
    found, added_mb = peak_delta_mb(lambda: NearDuplicates(texts).build())
    return found, time.perf_counter() - start, added_mb


def ms_per_query(found: NearDuplicates, queries: list[str]) -> float:
    start = time.perf_counter()
    for q in queries:
        found.rows(q)
    return (time.perf_counter() - start) / len(queries) * 1e3


def report_pool(name: str, texts: list[str], queries: dict[str, list[str]], brute_n: int = 0) -> None:
    found, seconds, added_mb = timed_build(texts)
    print(f"\n{name}: {len(texts):,} texts; build {seconds:.2f} s, peak RSS added {added_mb:.0f} MB")
    for label, qs in queries.items():
        print(f"  {label}: {ms_per_query(found, qs):.2f} ms/query over {len(qs)} queries")
    if brute_n:
        pool_norm = [normalise(t) for t in texts]
        pool_tri = [trigram_set(n) for n in pool_norm]
        qs = [q for qs in queries.values() for q in qs[:brute_n // len(queries)]]
        start = time.perf_counter()
        brute = [brute_force_rows(q, pool_norm, pool_tri) for q in qs]
        ms = (time.perf_counter() - start) / len(qs) * 1e3
        same = sum(found.rows(q) == rows for q, rows in zip(qs, brute))
        print(f"  brute force (pre-normalised rows): {ms:.1f} ms/query; rows equal on {same}/{len(qs)} queries")


def shuffled_copies(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """n texts: `texts` first, then copies of them with their words shuffled (seeded)."""
    rng, out = np.random.default_rng(seed), list(texts)
    while len(out) < n:
        words = texts[len(out) % len(texts)].split()
        out.append(" ".join(words[i] for i in rng.permutation(len(words))))
    return out


def reason(query: str, row: str) -> str:
    """Which part of the rule makes `row` a near-duplicate of `query`."""
    nq, nr = normalise(query), normalise(row)
    if f" {nq} " in f" {nr} ":
        return "row holds the query"
    if f" {nr} " in f" {nq} ":
        return f"row inside the query ({'1-2' if len(nr.split()) < 3 else '3+'} words)"
    return "most trigrams shared"


def report_shares(name: str, queries: list[Example], pool: list[Example], found: NearDuplicates) -> None:
    with_dup, longer, pairs, same, reasons = 0, 0, 0, 0, Counter()
    for q in queries:
        rows = [r for r in found.rows(q.text) if pool[r].text != q.text]
        why = {r: reason(q.text, pool[r].text) for r in rows}
        with_dup, longer = with_dup + bool(rows), longer + any("1-2" not in w for w in why.values())
        pairs, same = pairs + len(rows), same + sum(pool[r].label == q.label for r in rows)
        reasons.update(set(why.values()))  # queries with a row for each reason
    print(f"  {name}: {with_dup}/{len(queries)} have a near-duplicate in train ({longer} one other than a 1-2 word "
          f"phrase inside them); {same}/{pairs} pairs ({same / max(pairs, 1):.0%}) share the query's label; "
          f"queries per reason: {dict(reasons)}")


def main() -> None:
    print_machine()
    sst2, sent = load_task("sst2"), load_task("sst2_sent")
    train = load_examples(sst2, "train", DATA)
    validation = [e.text for e in load_examples(sst2, "validation", DATA)]
    rng = np.random.default_rng(0)
    long_rows = [r for r, e in enumerate(train) if len(normalise(e.text).split()) >= 4]
    phrases = [train[r] for r in rng.choice(long_rows, 200, replace=False)]
    report_pool("SST-2 train", [e.text for e in train],
                {"validation sentences": validation, "train phrases (>= 4 words)": [e.text for e in phrases]},
                brute_n=40)
    agnews = load_task("agnews")
    ag_train = [e.text for e in load_examples(agnews, "train", DATA)]
    ag_test = [e.text for e in load_examples(agnews, "test", DATA)][:500]
    report_pool("AG News train sample", ag_train, {"test texts": ag_test}, brute_n=20)
    report_pool("AG News 120k (sample + word-shuffled copies)", shuffled_copies(ag_train, 120_000),
                {"test texts": ag_test})
    print("\nshares, SST-2 train as the pool:")
    found = NearDuplicates([e.text for e in train])
    sent_val = load_examples(sent, "validation", DATA)
    report_shares("200 train phrases >= 4 words (seed 0)", phrases, train, found)
    picked = np.random.default_rng(0).choice(len(sent_val), 100, replace=False)
    report_shares("100 sst2_sent validation sentences (seed 0)", [sent_val[i] for i in picked], train, found)


if __name__ == "__main__":
    main()
