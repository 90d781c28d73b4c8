"""The `ricl` command: build and inspect indexes, select demonstrations, compare selectors."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .analysis.cli import analyze_app, report
from .cli_errors import friendly_errors
from .errors import RiclError
from .lm.models import DEFAULT_MODEL
from .study_cli import archive, study
from .yaml_config import key_values

app = typer.Typer(help="Demonstration retrieval for in-context learning.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
index_app = typer.Typer(help="Build and inspect demonstration indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
console = Console()


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _task_and_examples(task: Optional[str], split: Optional[str], data_dir: Optional[Path], file: Optional[Path],
                       text_fields: Optional[str], label_field: str, labels: Optional[str],
                       hf_dataset: Optional[str] = None, hf_config: Optional[str] = None):
    from .data.tasks import hf_dataset_examples, load_examples, load_task, read_examples_file, task_from_columns

    if hf_dataset is not None:
        if task is not None or file is not None or data_dir is not None:
            raise RiclError("--hf-dataset names the data and its columns: give it without --task, --file and "
                            "--data-dir")
        if not text_fields:
            raise RiclError("--hf-dataset needs --text-field (e.g. --text-field sentence; two comma-separated)")
        split = split or "train"
        spec, examples = hf_dataset_examples(hf_dataset, split, text_fields.split(","), label_field,
                                             labels.split(",") if labels else None, hf_config)
        return spec, examples, split
    if hf_config is not None:
        raise RiclError("--hf-config goes with --hf-dataset (a hub dataset's configuration, e.g. --hf-config sst2)")
    if file is not None:
        if task is not None:
            spec = load_task(task)
        elif text_fields and labels:
            spec = task_from_columns(text_fields.split(","), label_field, labels.split(","), name=file.stem)
        else:
            raise RiclError("--file needs --task, or --text-field and --labels "
                            "(e.g. --text-field text --labels neg,pos)")
        return spec, read_examples_file(file, spec), "file"
    if task is None:
        raise RiclError("give --task NAME (with --data-dir for local files), --file PATH or --hf-dataset NAME")
    spec = load_task(task)
    split = split or spec.pool_split
    return spec, load_examples(spec, split, data_dir), split


@index_app.command("build")
@friendly_errors
def index_build(
    out: Path = typer.Option(..., "--out", "-o", help="Directory to save the index in (e.g. indexes/sst2-train)."),
    task: Optional[str] = typer.Option(None, help="Built-in task name (`ricl tasks`) or task YAML path."),
    split: Optional[str] = typer.Option(None, help="Split to index; default: the task's pool split (with "
                                        "--hf-dataset: train)."),
    data_dir: Optional[Path] = typer.Option(None, help="Local data dir laid out as NAME/SPLIT.jsonl (or .csv, "
                                            ".parquet); default: the HF hub."),
    file: Optional[Path] = typer.Option(None, help="Your own JSONL, CSV or Parquet file instead of a task's split."),
    hf_dataset: Optional[str] = typer.Option(None, "--hf-dataset", help="A Hugging Face dataset without a task "
                                             "YAML: a hub id, or a folder written by save_to_disk; with --split, "
                                             "--text-field, --label-field (and --labels unless it is a ClassLabel)."),
    hf_config: Optional[str] = typer.Option(None, "--hf-config", help="With --hf-dataset: the hub dataset's "
                                            "configuration (e.g. sst2 of glue)."),
    text_field: Optional[str] = typer.Option(None, help="With --file or --hf-dataset: text column(s), "
                                             "comma-separated."),
    label_field: str = typer.Option("label", help="With --file or --hf-dataset: label column."),
    labels: Optional[str] = typer.Option(None, help="With --file or --hf-dataset: label names in id order, "
                                         "comma-separated; default with --hf-dataset: the ClassLabel's names."),
    encoder: Optional[str] = typer.Option(None, help="sentence-transformers name or path, or an LM kernel like "
                                          "lm:smollm2-135m:layer=15:pooling=mean; default: packaged all-MiniLM-L6-v2."),
    encoder_backend: str = typer.Option("torch", help="How the sentence encoder runs: torch (float32), bfloat16 "
                                        "(faster on CPUs with AMX/AVX512-BF16) or onnx (float32 on ONNX Runtime); "
                                        "recorded in the manifest."),
    index_type: str = typer.Option("flat", help="flat (exact), ivf or hnsw."),
    overwrite: bool = typer.Option(False, help="Replace an existing index at --out (a folder holding anything else "
                                   "is refused)."),
    ray_workers: Optional[int] = typer.Option(None, min=1,
                                              help="Embed on this many Ray workers (needs the scale extra)."),
    ray_address: Optional[str] = typer.Option(None, help="With --ray-workers: a Ray cluster, e.g. auto or "
                                              "ray://HEAD:10001; default: $RAY_ADDRESS or a local Ray."),
) -> None:
    """Embed a dataset split and save a FAISS index of it (atomic: an existing index is never half-replaced)."""
    from .atomic_dir import check_replaceable
    from .experiment.task_index import build_task_index
    from .retrieval.index import MANIFEST_FILE
    from .retrieval.sentence_encoder import DEFAULT_ENCODER, check_backend

    check_backend(encoder_backend)
    if out.exists() and not overwrite:
        raise RiclError(f"{out} exists; pass --overwrite to replace it")
    check_replaceable(out, MANIFEST_FILE)  # before the embedding: --overwrite replaces only a saved index
    spec, examples, _ = _task_and_examples(task, split, data_dir, file, text_field, label_field, labels, hf_dataset,
                                           hf_config)
    if ray_workers is not None:
        from .experiment.scale import connect_ray

        connect_ray(ray_address)
    index = build_task_index(examples, spec, encoder or DEFAULT_ENCODER, index_type, out, ray_workers,
                             backend=encoder_backend)
    console.print(f"saved {len(index)} examples ({index.manifest.index_type}, dim {index.manifest.dimension}) to {out}")


@index_app.command("info")
@friendly_errors
def index_info(directory: Path = typer.Argument(..., help="A saved index directory.")) -> None:
    """Print a saved index's manifest (encoder, dimension, type, count, fingerprint, versions)."""
    from .retrieval.index import DemoIndex

    manifest = DemoIndex.load(directory, encoder=_index_encoder(directory, None, trusted=True)).manifest
    table = Table(show_header=False)
    for key, value in manifest.model_dump().items():
        table.add_row(key, str(value))
    console.print(table)


@index_app.command("fit")
@friendly_errors
def index_fit(
    directory: Path = typer.Argument(..., help="A saved index directory; the fit is saved into its manifest."),
    selector: str = typer.Option("adaptive", help="A selector that fits state on the pool (adaptive)."),
    k: int = typer.Option(8, "--k", "-k", help="Print the thresholds for this k (all k up to fit_depth are saved)."),
    model: Optional[str] = typer.Option(None, help="The LM adaptive's thresholds are fitted to (or fit_on=kernel)."),
    param: Optional[list[str]] = typer.Option(None, "--param", help="A selector parameter as KEY=VALUE, e.g. "
                                              "tolerance=0.02 (repeatable)."),
    encoder: Optional[str] = typer.Option(None, help="The index's encoder when its manifest names a local folder."),
    calibration: Optional[Path] = typer.Option(None, help="Your own labelled queries (JSONL, CSV or Parquet, in the "
                                               "index's fields) to calibrate adaptive on instead of a pool draw."),
    label_field: Optional[str] = typer.Option(None, help="With --calibration: its label column; default: the "
                                              "index's task's, else label."),
) -> None:
    """Fit a selector on queries drawn from the index's own pool (or your own) and save the fit with the index."""
    from .experiment.plan import index_queries, with_index_lm
    from .retrieval.index import DemoIndex
    from .selectors.base import make_selector

    demo_index = DemoIndex.load(directory, encoder=_index_encoder(directory, encoder))
    chosen = make_selector(selector, **key_values(param or []))
    if calibration is not None:  # read before the LM loads: a bad file fails fast
        if not chosen.calibrates:
            raise RiclError(f"--calibration is for adaptive; selector {selector!r} calibrates nothing")
        chosen.use_calibration(index_queries(demo_index, calibration, label_field))
    report = with_index_lm(chosen, demo_index, model).fit(demo_index).fit_report()
    if report is None:
        raise RiclError(f"selector {selector!r} fits nothing worth saving; `ricl index fit` is for adaptive")
    demo_index.save(directory)
    console.print(f"{selector} ({report['fit_on']}): bandwidth {report['bandwidth']:.3g}; k={k}: thresholds "
                  f"{report['thresholds'].get(str(k))}, {report['fit_accuracy'].get(str(k))}; saved to {directory}")


def _strategies() -> str:
    """Every registered selector with the first line of its docstring, for `ricl select --help`."""
    from .selectors.base import SELECTORS

    lines = [f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}" for name, cls in sorted(SELECTORS.items())]
    return "Strategies (--selector):\n\n" + "\n\n".join(lines)


@app.command("select", epilog=_strategies())
@friendly_errors
def select(
    query: str = typer.Argument(..., help="The query text (for two-field tasks, the fields joined by a newline)."),
    index: Path = typer.Option(..., "--index", help="A saved index directory."),
    k: int = typer.Option(8, "--k", "-k", help="How many demonstrations."),
    selector: str = typer.Option("knn", help="Selector name; every strategy is listed below."),
    order: Optional[str] = typer.Option(None, help="Prompt order of selectors that rank: nearest_last, nearest_first "
                                        "or random."),
    seed: int = typer.Option(0, help="Seed for random choices."),
    param: Optional[list[str]] = typer.Option(None, "--param", help="Another selector parameter as KEY=VALUE "
                                              "(repeatable; the value is read as YAML), e.g. lambda_mult=0.3."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="A token budget: of the k, the most similar "
                                             "whole demonstrations whose rendered prompt (query included) fits N "
                                             "tokens, in prompt order."),
    tokenizer: str = typer.Option(DEFAULT_MODEL, help="With --max-tokens: the model whose tokenizer counts the "
                                  "budget (a packaged name, a hub id or a local folder)."),
    encoder: Optional[str] = typer.Option(None, help="The index's encoder when its manifest names a local folder "
                                          "(an index's files alone may not choose code to load)."),
) -> None:
    """Print the demonstrations a selector picks for one query, in prompt order."""
    from .serving.demo_selector import DemoSelector

    # The application API, as `ricl serve` uses it, so a budget is kept exactly as over HTTP and in Python.
    params = {"seed": seed} | ({"order": order} if order else {}) | key_values(param or [])
    demos = DemoSelector.load(index, strategy=selector, use_cache=True, tokenizer=tokenizer,
                              encoder=_index_encoder(index, encoder), **params)
    from transformers.utils import logging as hf_logging  # imported once the index is known good: errors stay fast

    # A bad k or budget is found once the encoder has loaded: no weight-loading bar beside its one `error:` line.
    hf_logging.disable_progress_bar()
    chosen = demos.select(query, k, max_tokens=max_tokens)
    table = Table("rank", "id", "score", "label", "text")
    for rank, ex in enumerate(chosen, 1):
        label = ex.label_name if ex.label_name is not None else str(ex.label)
        table.add_row(str(rank), str(ex.id), f"{ex.score:.3f}", label, "\n".join(ex.fields.values())[:100])
    console.print(table)
    if max_tokens is not None:
        console.print(f"prompt tokens: {demos.prompt_tokens(query, chosen)} of {max_tokens}")


@app.command("compare")
@friendly_errors
def compare(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/experiments/)."),
    n_queries: Optional[int] = typer.Option(None, help="Override: a seeded subset of n queries."),
    output_dir: Optional[str] = typer.Option(None, help="Override: where the results directory goes."),
    overwrite: bool = typer.Option(False, help="Replace an existing results directory (one with "
                                   "run_info.json; any other folder is refused)."),
    ray_workers: Optional[int] = typer.Option(None, min=1, help="Embed and score on this many Ray workers, one model "
                                              "each (needs the scale extra); same results directory."),
    ray_address: Optional[str] = typer.Option(None, help="With --ray-workers: a Ray cluster, e.g. auto or "
                                              "ray://HEAD:10001; default: $RAY_ADDRESS or a local Ray."),
    ray_gpus: float = typer.Option(0, help="With --ray-workers: GPUs per model replica (1 on a GPU cluster)."),
) -> None:
    """Run selectors on the same queries; write records, resolved config, versions and a summary with CIs."""
    from .experiment.compare import run_compare, run_compare_distributed
    from .experiment.compare_config import load_compare_config

    cfg = load_compare_config(config, n_queries=n_queries, output_dir=output_dir)
    if ray_workers is not None:
        from .experiment.scale import connect_ray

        connect_ray(ray_address)
        rows, tests, out = run_compare_distributed(cfg, ray_workers, overwrite=overwrite, num_gpus=ray_gpus)
    else:
        rows, tests, out = run_compare(cfg, overwrite=overwrite)
    print_summary(rows, tests, console)
    console.print(f"results in {out} (every column in summary.md)")


def print_summary(rows: list[dict], tests: list[dict], out: Console) -> None:
    """The compare summary in a few columns that stay readable at 80 characters; summary.md has them all."""
    attention = "label_attention" in rows[0]
    table = _table("Accuracy (95% bootstrap CI)", "run", "n", "accuracy [95% CI]", "similarity",
                   *(["label attn"] if attention else []))
    for r in rows:
        table.add_row(r["run"], str(r["n"]), f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                      f"{r['mean_similarity']:.3f}", *([f"{r['label_attention']:.3f}"] if attention else []))
    out.print(table)
    if tests:
        mcnemar = _table("Paired McNemar tests (exact)", "comparison", "diff", "only a", "only b", "p")
        for t in tests:
            mcnemar.add_row(t["comparison"], f"{t['accuracy_diff']:+.3f}", str(t["only_a_right"]),
                            str(t["only_b_right"]), f"{t['p_value']:.3g}")
        out.print(mcnemar)


def _table(title: str, text_column: str, *number_columns: str) -> Table:
    """A table whose first (text) column folds long names onto more lines and whose numbers never wrap."""
    table = Table(title=title)
    table.add_column(text_column, overflow="fold")
    for name in number_columns:
        table.add_column(name, no_wrap=True)
    return table


@app.command("validate")
@friendly_errors
def validate(path: Path = typer.Argument(..., help="An experiment, study or task YAML.")) -> None:
    """Check a config file without running anything."""
    from .data.tasks import load_task
    from .experiment.compare_config import load_compare_config
    from .study import study_configs
    from .yaml_config import read_yaml

    data = read_yaml(path) if path.exists() else None
    if isinstance(data, dict) and "experiments" in data:  # a study: every experiment at every grid point
        study_configs(path)
    elif isinstance(data, dict) and ("task" in data and "text_fields" not in data or "columns" in data):
        if task := load_compare_config(path).task:
            load_task(task)
    else:
        load_task(path)
    console.print(f"{path}: ok")


@app.command("tasks")
def tasks() -> None:
    """List the built-in tasks."""
    from .data.tasks import known_tasks, load_task

    table = Table("task", "text fields", "labels", "pool split", "query split")
    for name in known_tasks():
        t = load_task(name)
        table.add_row(name, ", ".join(t.text_fields), ", ".join(t.label_names), t.pool_split, t.query_split)
    console.print(table)


@app.command("serve")
@friendly_errors
def serve(
    index: Path = typer.Option(..., "--index", help="A saved index directory; added examples are saved back into it."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default accepts connections from this "
                             "machine only."),
    port: int = typer.Option(8000, help="TCP port."),
    strategy: str = typer.Option("knn", help="Default selector when a request names none."),
    seed: int = typer.Option(0, help="Seed for random choices."),
    api_key: Optional[str] = typer.Option(None, envvar="RICL_API_KEY", help="The X-API-Key that POST /examples needs "
                                          "(and POST /select too); better as RICL_API_KEY or --api-key-file."),
    api_key_file: Optional[Path] = typer.Option(None, help="Read the API key from this file (its first line)."),
    read_key: Optional[str] = typer.Option(None, envvar="RICL_READ_KEY", help="A second key that POST /select takes "
                                           "(not /examples); better as RICL_READ_KEY or --read-key-file."),
    read_key_file: Optional[Path] = typer.Option(None, help="Read the read key from this file (its first line)."),
    allow_open_writes: bool = typer.Option(False, help="Take POST /examples without a key (a trusted network only); "
                                           "by default a server without --api-key refuses writes."),
    allowed_host: Optional[list[str]] = typer.Option(None, help="A Host header the server answers (repeat it); "
                                                     "default: the localhost names on a loopback bind, else the "
                                                     "bound address. '*' answers any."),
    max_k: int = typer.Option(64, min=1, help="Largest k a request may ask for."),
    max_text_chars: int = typer.Option(4000, min=1, help="Longest text per field, in characters."),
    max_batch: int = typer.Option(256, min=1, help="Most examples one POST /examples may add."),
    tokenizer: str = typer.Option(DEFAULT_MODEL, help="Model whose tokenizer counts a request's max_tokens budget "
                                  "(a packaged name, a hub id or a local folder; loaded on first use)."),
    encoder: Optional[str] = typer.Option(None, help="The index's encoder when its manifest names a local folder "
                                          "(an index's files alone may not choose code to load)."),
    serve_strategy: Optional[list[str]] = typer.Option(None, "--serve-strategy", help="A strategy requests may name "
                                                       "(repeat it), fitted at start-up; default: knn, random, mmr, "
                                                       "bm25, balanced and --strategy."),
    request_seconds: float = typer.Option(30.0, min=0.001, help="A select waiting longer answers 503."),
) -> None:
    """Serve POST /select, POST /examples and GET /health over HTTP (OpenAPI schema at /openapi.json)."""
    from .serving.service import SERVED_STRATEGIES, Limits
    from .serving.service import serve as run_service

    limits = Limits(max_k=max_k, max_text_chars=max_text_chars, max_batch=max_batch, request_seconds=request_seconds)
    run_service(index, host=host, port=port, strategy=strategy, seed=seed, limits=limits, tokenizer=tokenizer,
                api_key=_key(api_key, api_key_file, "--api-key"), read_key=_key(read_key, read_key_file, "--read-key"),
                allow_open_writes=allow_open_writes, allowed_hosts=allowed_host or None,
                encoder=_index_encoder(index, encoder), strategies=serve_strategy or SERVED_STRATEGIES)


def _index_encoder(directory: Path, name: Optional[str], trusted: bool = False):
    """The encoder the user named for an index (with the manifest's backend), or None: the manifest's own, which
    DemoIndex.load makes only from a hub id or the packaged encoder. trusted: the manifest's name as it is (for
    reading, when nothing is encoded)."""
    from .retrieval.encoders import make_encoder
    from .retrieval.index import MANIFEST_FILE, read_manifest

    if name is None and not trusted:
        return None
    manifest = read_manifest(Path(directory) / MANIFEST_FILE) if (Path(directory) / MANIFEST_FILE).is_file() else None
    if manifest is None:
        return None  # DemoIndex.load says what is missing
    return make_encoder(name or manifest.encoder, backend=manifest.encoder_backend)


def _key(value: Optional[str], file: Optional[Path], option: str) -> Optional[str]:
    """A key from its option (or environment variable) or from the first line of its file, not both."""
    if file is None:
        return value or None
    if value:
        raise RiclError(f"{option} and {option}-file both given; expected one")
    try:
        key = file.read_text(encoding="utf-8").splitlines()[0].strip() if file.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as e:
        raise RiclError(f"{option}-file {file}: cannot read it ({e})") from None
    if not key:
        raise RiclError(f"{option}-file {file}: the first line is empty; expected the key")
    return key


# Analyses of saved results (retrieval_icl/analysis/cli.py): `ricl analyze ...` and `ricl report`.
app.add_typer(analyze_app, name="analyze")
app.command("report")(report)
# Studies and archives (retrieval_icl/study_cli.py): `ricl study` and `ricl archive`.
app.command("study")(study)
app.command("archive")(archive)
