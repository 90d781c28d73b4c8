"""Index build and search: Encoder vs SentenceTransformer.encode, DemoIndex vs numpy, IVF/HNSW vs flat.

1. Embedding throughput on SST-2 train sentences, same model object and batch size: plain
   `SentenceTransformer.encode` vs `Encoder.encode` with an empty cache (hashing and cache writes included), a
   cached re-run, the onnx backend, the bfloat16 backend (on CPUs with AMX/AVX512-BF16 only) and, as a measured
   but unoffered option, the onnx export with int8 weights (cosine agreement with float32 and the overlap of each
   text's 8 nearest neighbours reported). LM-kernel embeddings
   (`lm:smollm2-135m:layer=15`): the full forward with every hidden state vs ours, stopping after that layer.
2. Exact search: `DemoIndex` (flat) vs numpy brute force (matrix product + argpartition), same top-k.
3. Approximate search on synthetic vectors: `DemoIndex` IVF and HNSW vs flat, recall@10 against flat, search
   speed-up, build time and memory. The vectors imitate sentence embeddings: 100 Gaussian clusters in a random
   64-d subspace of R^384 plus 5% isotropic noise, unit norm; queries are fresh draws. The same on real SST-2
   embeddings when a saved flat SST-2 index is found under indexes/ (it is harder for IVF: near duplicates).

    python benchmarks/bench_index.py                    # ~6 minutes on 2 shared CPU cores
    python benchmarks/bench_index.py --n-vectors 1000000 --nlist 1024 --nprobe 4 8 16 \
        --skip embedding lm exact real --repeats 1      # the 1M figure (~25 minutes, HNSW build most of it)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import DATA, ROOT, interleave, peak_delta_mb, print_machine, print_table, timing_rows

from retrieval_icl.data.examples import Example
from retrieval_icl.lm.models import cpu_bfloat16_flags
from retrieval_icl.retrieval.index import DemoIndex, default_nlist
from retrieval_icl.retrieval.onnx_encoder import OnnxSentenceModel
from retrieval_icl.retrieval.sentence_encoder import Encoder

DIM = 384


def sst2_sentences(n: int) -> list[str]:
    with (DATA / "sst2" / "train.jsonl").open() as f:
        return [json.loads(line)["sentence"] for _, line in zip(range(n), f)]


def int8_copy(model: OnnxSentenceModel, directory: Path) -> OnnxSentenceModel:
    """The onnx backend's export with its weight matrices dynamically quantised to int8 (per channel; MatMuls by a
    constant only, so attention scores stay float32): measured here, not offered (it misses cosine >= 0.99)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = directory / "int8.onnx"
    quantize_dynamic(str(model.path), str(path), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"MatMulConstBOnly": True})
    options = ort.SessionOptions()
    options.intra_op_num_threads = model.session.get_session_options().intra_op_num_threads
    return OnnxSentenceModel(model.st, ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
                             path)


def neighbour_overlap(vecs: np.ndarray, base: np.ndarray, k: int = 8) -> float:
    """Mean share of each text's k nearest other texts that `vecs` and `base` agree on."""
    def nearest(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nearest(vecs), nearest(base))]))


def bench_embedding(args: argparse.Namespace) -> None:
    texts = sst2_sentences(args.n_texts)
    chunks = [texts[s : s + args.chunk] for s in range(0, len(texts), args.chunk)]
    tmp = Path(tempfile.mkdtemp(prefix="ricl-bench-"))
    ours = Encoder(batch_size=args.batch_size, cache_dir=tmp / "cold").load()
    warm = Encoder(batch_size=args.batch_size, cache_dir=tmp / "warm").load()
    warm.encode(texts)
    model = ours._model  # the very SentenceTransformer ours wraps: same weights, same threads
    # bfloat16 only where the CPU has it: emulated, it runs tens of times slower than float32
    backends = ["onnx"] + (["bfloat16"] if cpu_bfloat16_flags() else [])
    fresh = {"ours": ours} | {b: Encoder(batch_size=args.batch_size, backend=b).load() for b in backends}
    int8 = int8_copy(fresh["onnx"].loaded_model, tmp)

    def cold(name: str, c: int) -> np.ndarray:
        if c == 0:  # an empty cache at the start of every repeat
            fresh[name].cache_dir = Path(tempfile.mkdtemp(dir=tmp))
        return fresh[name].encode(chunks[c])

    contenders: dict[str, Callable[[int], np.ndarray]] = {
        "SentenceTransformer.encode": lambda c: model.encode(chunks[c], batch_size=args.batch_size,
                                                             normalize_embeddings=True, convert_to_numpy=True),
        "ours: Encoder.encode, empty cache": lambda c: cold("ours", c),
        "ours: cached re-run": lambda c: warm.encode(chunks[c]),
        **{f"ours: {b} backend, empty cache": (lambda c, b=b: cold(b, c)) for b in backends},
        "onnx int8 (not offered)": lambda c: int8.encode(chunks[c], batch_size=args.batch_size),
    }
    timings, results = interleave(contenders, len(chunks), args.repeats)
    vecs = {name: np.concatenate(r) for name, r in results.items()}
    base = vecs["SentenceTransformer.encode"]
    print(f"\n## Embedding {len(texts)} SST-2 sentences, batch {args.batch_size}, {args.repeats} repeats\n")
    print(f"CPU bfloat16 flags: {cpu_bfloat16_flags() or 'none (bfloat16 backend not timed)'}")
    print_table(timing_rows(timings, "SentenceTransformer.encode", per=len(texts) / 1000, unit="1k_texts"))
    for name, v in vecs.items():
        cos = (v * base).sum(1)
        print(f"- {name}: max |diff| {np.abs(v - base).max():.1e}, cosine min {cos.min():.4f}, mean {cos.mean():.5f}, "
              f"8-nearest overlap {neighbour_overlap(v, base):.3f}")


def bench_lm_kernel(args: argparse.Namespace) -> None:
    """LM-kernel embeddings (lm:smollm2-135m:layer=L): the full forward with output_hidden_states vs ours, which
    stops after layer L."""
    import torch

    from retrieval_icl.retrieval.lm_encoder import LMEncoder

    encoder = LMEncoder(layer=args.lm_layer, use_cache=False).load()
    states = encoder._model  # LMHiddenStates: the part that runs the LM
    texts = sst2_sentences(args.n_lm_texts)
    tokenizer = states.loaded.tokenizer
    batches = [dict(tokenizer(texts[s : s + 16], return_tensors="pt", padding=True)) for s in range(0, len(texts), 16)]
    model = states.loaded.model

    def full(c: int) -> torch.Tensor:
        with torch.inference_mode():
            return model(**batches[c], output_hidden_states=True).hidden_states[args.lm_layer]

    def ours(c: int) -> torch.Tensor:
        with torch.inference_mode():
            return states._hidden_states(batches[c])

    timings, results = interleave({"full forward, hidden_states[L]": full, "ours: stop after layer L": ours},
                                  len(batches), args.repeats)
    diff = max((a - b).abs().max().item() for a, b in zip(*results.values()))
    print(f"\n## LM-kernel embedding, SmolLM2-135M layer {args.lm_layer} of {states.loaded.n_layers}, "
          f"{len(texts)} SST-2 sentences in batches of 16, {args.repeats} repeats\n")
    print_table(timing_rows(timings, "full forward, hidden_states[L]", per=len(texts) / 1000, unit="1k_texts"))
    print(f"- hidden states max |diff| {diff:.1e}")


def brute_force(pool: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy top-k by inner product: scores (n, k), rows (n, k), best first."""
    scores = queries @ pool.T  # (n, N)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(scores, top, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(top, order, 1)


def synthetic(n: int, seed: int, rank: int = 64, clusters: int = 100, spread: float = 0.7) -> np.ndarray:
    """(n, 384) float32 unit rows: Gaussian clusters in a random `rank`-d subspace plus 5% isotropic noise."""
    rng = np.random.default_rng(0)  # the same subspace and clusters for every seed
    basis = np.linalg.qr(rng.standard_normal((DIM, rank)))[0].astype(np.float32)  # (384, rank)
    centres = rng.standard_normal((clusters, rank)).astype(np.float32)
    draw = np.random.default_rng(seed + 1)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        z = centres[draw.integers(0, clusters, m)] + spread * draw.standard_normal((m, rank), dtype=np.float32)
        out[s : s + m] = z @ basis.T + 0.05 * draw.standard_normal((m, DIM), dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_index(vectors: np.ndarray, index_type: str, **params: int) -> DemoIndex:
    """A DemoIndex over precomputed vectors (placeholder examples, no encoder is loaded)."""
    examples = [Example(i, ("",), 0) for i in range(len(vectors))]
    return DemoIndex(Encoder(use_cache=False), index_type, **params).build(
        examples, dataset_fingerprint="synthetic", embeddings=vectors)


def set_search_param(index: DemoIndex, value: int) -> None:
    """Benchmark-only: change nprobe (IVF) or efSearch (HNSW) of a built index in place."""
    if index.index_type == "ivf":
        index._faiss.nprobe = value
    elif index.index_type == "hnsw":
        index._faiss.hnsw.efSearch = value


def bench_exact(args: argparse.Namespace) -> None:
    pool, queries = synthetic(args.n_exact, 0), synthetic(args.n_queries, 1)
    index = make_index(pool, "flat")
    chunks = [queries[s : s + args.query_chunk] for s in range(0, len(queries), args.query_chunk)]
    contenders = {"numpy brute force": lambda c: brute_force(pool, chunks[c], args.k)[1],
                  "ours: DemoIndex flat": lambda c: index.search(chunks[c], args.k)[1]}
    timings, results = interleave(contenders, len(chunks), args.repeats)
    a, b = (np.concatenate(r) for r in results.values())
    print(f"\n## Exact search: {len(pool)} x {DIM} pool, {len(queries)} queries in batches of {args.query_chunk}, "
          f"k={args.k}\n")
    print_table(timing_rows(timings, "numpy brute force", per=len(queries) / 1000, unit="1k_queries"))
    print(f"\nsame top-{args.k} ids: {float(np.mean(a == b)):.4f} of positions (ties may swap)")


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bench_ann(pool: np.ndarray, queries: np.ndarray, args: argparse.Namespace, title: str) -> None:
    """Build flat, IVF and HNSW DemoIndexes over `pool`; speed-up of each search setting over flat, recall@k."""
    builds, indexes = [], {}
    nlist = args.nlist or default_nlist(len(pool))
    for kind, params in (("flat", {}), ("ivf", {"nlist": nlist}), ("hnsw", {"hnsw_m": args.hnsw_m})):
        if kind in args.skip:
            continue
        (indexes[kind], seconds), peak = peak_delta_mb(lambda: timed(lambda: make_index(pool, kind, **params)))
        builds.append({"index": kind, "params": json.dumps(params), "build_s": seconds, "build_peak_rss_mb": peak})
    chunks = [queries[s : s + args.query_chunk] for s in range(0, len(queries), args.query_chunk)]
    settings = [("flat", 0)] + [("ivf", p) for p in args.nprobe] + [("hnsw", e) for e in args.ef_search]
    settings = [(kind, v) for kind, v in settings if kind in indexes]

    def search(kind: str, value: int, c: int) -> np.ndarray:
        set_search_param(indexes[kind], value)
        return indexes[kind].search(chunks[c], args.k)[1]

    param = {"flat": "", "ivf": "nprobe", "hnsw": "efSearch"}
    names = {f"{kind} {param[kind]}={v}" if v else kind: (kind, v) for kind, v in settings}
    contenders = {name: (lambda c, kv=kv: search(*kv, c)) for name, kv in names.items()}
    timings, results = interleave(contenders, len(chunks), args.repeats)
    truth = np.concatenate(results["flat"])
    rows = timing_rows(timings, "flat", per=len(queries) / 1000, unit="1k_queries")
    for row in rows:
        row["recall@10"] = recall(np.concatenate(results[row["contender"]]), truth)
    print(f"\n## {title}: {len(pool)} x {DIM}, {len(queries)} queries in batches of {args.query_chunk}, k={args.k}\n")
    print_table(builds)
    print()
    print_table(rows)
    passing = [r for r in rows if r["recall@10"] >= 0.95 and r["contender"] != "flat"]
    if passing:
        best = max(passing, key=lambda r: r["speedup_median"])
        print(f"\nfastest with recall@10 >= 0.95: {best['contender']}, {best['speedup_median']:.1f}x flat (median), "
              f"{best['speedup_best']:.1f}x (best), recall {best['recall@10']:.3f}")


def real_sst2(limit: int) -> np.ndarray | None:
    """Unit vectors of a saved flat SST-2 train index under indexes/, if there is one."""
    import faiss

    for directory in sorted((ROOT / "indexes").glob("sst2-train-orig-*")):
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("index_type") == "flat" and manifest.get("encoder", "").endswith("all-MiniLM-L6-v2"):
            index = faiss.read_index(str(directory / "index.faiss"))
            return index.reconstruct_n(0, min(limit, index.ntotal))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=1000, help="sentences to embed")
    parser.add_argument("--chunk", type=int, default=250, help="sentences per interleaved call")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-exact", type=int, default=100_000, help="pool size for exact search")
    parser.add_argument("--n-vectors", type=int, default=100_000, help="pool size for IVF/HNSW")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--query-chunk", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: DemoIndex's, 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--n-lm-texts", type=int, default=256, help="sentences for the LM-kernel embedding")
    parser.add_argument("--lm-layer", type=int, default=15, help="the LM kernel's layer (SmolLM2: 30 layers)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["embedding", "lm", "exact", "ivf", "hnsw", "real"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print_machine()
    if "embedding" not in args.skip:
        bench_embedding(args)
    if "lm" not in args.skip:
        bench_lm_kernel(args)
    if "exact" not in args.skip:
        bench_exact(args)
    bench_ann(synthetic(args.n_vectors, 0), synthetic(args.n_queries, 1), args, "Synthetic vectors")
    real = None if "real" in args.skip else real_sst2(10**9)
    if real is not None:
        rng = np.random.default_rng(0)
        held_out = rng.choice(len(real), args.n_queries, replace=False)
        keep = np.setdiff1d(np.arange(len(real)), held_out)
        bench_ann(real[keep], real[held_out], args, "Real SST-2 train embeddings (all-MiniLM-L6-v2), held-out queries")


if __name__ == "__main__":
    main()
