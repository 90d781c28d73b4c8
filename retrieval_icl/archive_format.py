"""The on-disk form of a results archive (see archive.py, `ricl archive`): its file names, the records as gzip JSONL,
and the attention the analyses read as 8-bit log codes. numpy only; results_dir.py reads archives through here.

    ARCHIVE/
      archive.json                 ARCHIVE_FORMAT and its version (the folder's marker), the config fingerprint, ...
      records.jsonl.gz             the records, query by query (gzip sees a query's runs together); read back run by run
      attention/RUN.safetensors.xz "y_mass" (layers, heads, all demos) uint8: the attention on each label y_i, the
                                   run's records' demonstrations one after the other, head by head, so xz sees
                                   each head's weights together; "preamble_mean" (layers, heads) float32: the
                                   attention on the preamble, averaged over the run's queries (all the analyses
                                   read of it)

A code c > 0 stands for 2 ** (-(255 - c) / STEPS_PER_OCTAVE) and 0 for 0: ten steps per halving, so any weight is
kept within 3.5% of its value down to 2.3e-8 (below float16's smallest step, so no weight a results directory holds
becomes 0). gzip files are written with no name and no time in their header, and xz holds none: the same archive is
the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import RiclError
from .lm.attention_summary import N_SUMMARY_COLUMNS, Y_MASS, checked_summaries
from .record import RunRecord

ARCHIVE_FORMAT = "retrieval-icl-archive"
ARCHIVE_VERSION = 1
ARCHIVE_JSON = "archive.json"  # the marker: a folder holding it, with ARCHIVE_FORMAT inside, is an archive
ARCHIVED_RECORDS = "records.jsonl.gz"
ATTENTION_SUFFIX = ".safetensors.xz"  # xz: 15% smaller than gzip on the codes
ARCHIVED_COLUMNS = ("y_mass", "preamble_mean")  # what an archive keeps of the attention (attention_summary.py)
STEPS_PER_OCTAVE = 10
ATTENTION_METADATA = "ricl"  # the attention file's one metadata key: a JSON object (format, columns, code, query ids)
MAX_RELATIVE_ERROR = 2 ** (0.5 / STEPS_PER_OCTAVE) - 1  # 0.035: half a step, the most a decoded weight is off


def encode_weights(values: np.ndarray) -> np.ndarray:
    """Attention weights in [0, 1] as uint8 log codes (same shape); a value below the smallest code's is 0."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        steps = np.round(-np.log2(v) * STEPS_PER_OCTAVE)  # inf for 0
    return np.where(steps <= 254, 255 - np.minimum(steps, 254), 0).astype(np.uint8)


def decode_weights(codes: np.ndarray) -> np.ndarray:
    """The weights uint8 log codes stand for, float32 (same shape)."""
    c = np.asarray(codes).astype(np.float32)
    return np.where(c > 0, np.exp2(-(255.0 - c) / STEPS_PER_OCTAVE), 0.0).astype(np.float32)


def gzip_bytes(data: bytes) -> bytes:
    """gzip with an empty name and time 0 in the header: the same data gives the same bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as f:
        f.write(data)
    return out.getvalue()


def write_records(path: Path, records: Sequence[RunRecord]) -> list[str]:
    """The records as gzip JSONL, query by query (each query's runs side by side); returns the run order the reader
    needs to put them back run by run."""
    runs = list(dict.fromkeys(r.run for r in records))
    position: dict[str, int] = {}
    keyed = []
    for r in records:  # (position within its run, run): records of one query across runs sit together
        keyed.append((position.get(r.run, 0), runs.index(r.run), r))
        position[r.run] = position.get(r.run, 0) + 1
    lines = "".join(r.to_json() + "\n" for _, _, r in sorted(keyed, key=lambda t: t[:2]))
    path.write_bytes(gzip_bytes(lines.encode("utf-8")))
    return runs


def read_records(path: Path, runs: Sequence[str]) -> list[RunRecord]:
    """An archive's records, checked (errors name file:line), in the results directory's order: run by run in `runs`
    order, each run's queries in their order."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise RiclError(f"{path}: not a readable gzip JSONL file ({e})") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RiclError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        records.append(RunRecord.check(row, f"{path}:{n}"))
    order = {name: i for i, name in enumerate(runs)}
    unknown = sorted({r.run for r in records} - set(order))
    if unknown:
        raise RiclError(f"{path}: runs {unknown} are not in {ARCHIVE_JSON}'s runs {list(runs)}")
    return sorted(records, key=lambda r: order[r.run])  # stable: each run keeps its query order


def encode_attention(arrays: dict[str, np.ndarray], records: Sequence[RunRecord]) -> bytes:
    """A run's attention arrays (results directory layout) as the archive keeps them: xz of a safetensors file with
    the records' label-token weights as log codes, in record order, and the preamble mass averaged over them."""
    from safetensors.numpy import save

    keys = [str(r.query_id) for r in records]
    weights = np.concatenate([arrays[k][..., Y_MASS] for k in keys], axis=-1)  # (L, H, sum of n_demos)
    preamble = np.mean([arrays[f"{k}/preamble"].astype(np.float32) for k in keys], axis=0)  # (L, H)
    about = {"format": "ricl-attention-codes", "run": records[0].run, "columns": list(ARCHIVED_COLUMNS),
             "steps_per_octave": STEPS_PER_OCTAVE, "query_ids": keys}
    # one metadata key: safetensors writes several in an order that changes from call to call
    metadata = {ATTENTION_METADATA: json.dumps(about, sort_keys=True)}
    data = save({"y_mass": encode_weights(weights), "preamble_mean": preamble.astype(np.float32)}, metadata=metadata)
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def load_archived_attention(path: Path, records: Sequence[RunRecord]) -> dict[str, np.ndarray]:
    """An archived run's attention in the results directory's layout, checked against its records: per record
    "<id>", a (layers, heads, demos, 5) summary holding the label-token weights (NaN in the columns an archive does
    not keep), and "preamble_mean" (layers, heads)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not path.exists():
        raise RiclError(f"no attention archived for run {records[0].run!r}: {path} does not exist")
    try:
        data = lzma.decompress(path.read_bytes())
        arrays = load(data)
        about = json.loads(safetensors_metadata(data).get(ATTENTION_METADATA, "{}"))
    except (OSError, EOFError, lzma.LZMAError, SafetensorError, ValueError) as e:
        raise RiclError(f"{path}: not a readable archived attention file ({e})") from None
    ids, counts = about.get("query_ids") or [], [len(r.demo_ids) for r in records]
    if about.get("run") != records[0].run or ids != [str(r.query_id) for r in records] or \
            arrays["y_mass"].shape[-1] != sum(counts):
        raise RiclError(f"{path}: holds run {about.get('run')!r}, {len(ids)} queries, {arrays['y_mass'].shape[-1]} "
                        f"demonstrations; expected the {len(records)} records of run {records[0].run!r}, "
                        f"with {sum(counts)}")
    weights = decode_weights(arrays["y_mass"])
    out = {"preamble_mean": arrays["preamble_mean"].astype(np.float32)}
    for key, end, n in zip(ids, np.cumsum(counts), counts):
        out[key] = np.full((*weights.shape[:2], n, N_SUMMARY_COLUMNS), np.nan, dtype=np.float32)
        out[key][..., Y_MASS] = weights[..., end - n : end]
    return checked_summaries(path, out, list(zip(ids, counts)), preamble_per_query=False)


def safetensors_metadata(data: bytes) -> dict:
    """The __metadata__ of a safetensors file's bytes (an 8-byte little-endian header length, then a JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def read_archive_json(directory: Path) -> dict:
    """ARCHIVE/archive.json, checked to be this project's archive of a version this code reads."""
    path = directory / ARCHIVE_JSON
    if not path.is_file():
        raise RiclError(f"{directory} is not a retrieval-icl archive (no {ARCHIVE_JSON})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RiclError(f"{path}: not a readable archive description ({e})") from None
    if not isinstance(info, dict) or info.get("format") != ARCHIVE_FORMAT:
        raise RiclError(f"{path}: format is {info.get('format') if isinstance(info, dict) else info!r}, expected "
                        f"{ARCHIVE_FORMAT!r}; {directory} is not a retrieval-icl archive")
    if info.get("version") != ARCHIVE_VERSION:
        raise RiclError(f"{path}: archive version {info.get('version')!r}; this retrieval-icl reads version "
                        f"{ARCHIVE_VERSION}")
    return info
