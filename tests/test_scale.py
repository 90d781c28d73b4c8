"""scale.py on a local Ray instance with 2 workers: the same embeddings, index, log-probs and records as one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from shared_data import SHARED_DATA
from standin import TINY_DATA  # hand-made, 40 train reviews
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # every test here runs beside the module's local Ray instance

from retrieval_icl.cli import app  # noqa: E402
from retrieval_icl.data.tasks import load_examples, load_task  # noqa: E402
from retrieval_icl.errors import RiclError  # noqa: E402
from retrieval_icl.experiment.scale import embed_distributed, score_distributed  # noqa: E402
from retrieval_icl.experiment.task_index import build_task_index  # noqa: E402
from retrieval_icl.lm.prompts import PromptBuilder  # noqa: E402
from retrieval_icl.retrieval.index import DemoIndex  # noqa: E402
from retrieval_icl.retrieval.sentence_encoder import Encoder  # noqa: E402

WORKERS = 2
cli = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray instance with 2 CPUs (one per worker), quiet, shut down after the module."""
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sst2():
    task = load_task("sst2")
    return task, load_examples(task, "validation", SHARED_DATA)


@pytest.mark.shared_data
def test_embeddings_index_and_searches_equal_single_process(sst2, tmp_path):
    task, examples = sst2
    pool, queries = examples[:150], [ex.text for ex in examples[150:170]]
    single = build_task_index(pool, task, directory=tmp_path / "single", cache_dir=tmp_path / "a")
    build_task_index(pool, task, directory=tmp_path / "spread", ray_workers=WORKERS, cache_dir=str(tmp_path / "b"))
    spread = DemoIndex.load(tmp_path / "spread", encoder=Encoder(cache_dir=tmp_path / "a"))
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("single", "spread"))
    assert {k: v for k, v in a.items() if k != "created"} == {k: v for k, v in b.items() if k != "created"}
    examples = [(tmp_path / d / "examples.jsonl").read_bytes() for d in ("single", "spread")]
    assert examples[0] == examples[1]
    # the workers' embeddings (fresh cache "b") equal the single process's within 1e-6
    np.testing.assert_allclose(spread.embeddings(spread.ids), single.embeddings(single.ids), atol=1e-6, rtol=0)
    (s1, i1), (s2, i2) = single.search_texts(queries, 5), spread.search_texts(queries, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_bad_worker_count_is_refused():
    with pytest.raises(RiclError, match="n_workers"):
        embed_distributed(["a text"], n_workers=0)


@pytest.mark.lm
@pytest.mark.shared_data
def test_label_log_probs_and_attention_equal_runner(sst2, smollm2_runner):
    task, examples = sst2
    builder = PromptBuilder(task, "default", smollm2_runner.tokenizer)
    prompts = [builder.build(examples[i : i + 2], examples[100 + i].texts).token_ids for i in range(10)]
    conts = smollm2_runner.label_continuations(builder.label_words, task.template.label_prefix)
    single = smollm2_runner.score(prompts, conts, capture_attention=True)
    spread = score_distributed(prompts, conts, "smollm2-135m", n_workers=WORKERS, capture_attention=True,
                               batch_size=4, device="cpu", dtype="float32", rows_per_call=3)
    for s, d, p in zip(single, spread, prompts):
        np.testing.assert_allclose(d.log_probs, s.log_probs, atol=1e-4, rtol=0)
        assert d.attention.shape == s.attention.shape == (30, 9, len(p))
        np.testing.assert_allclose(d.attention, s.attention, atol=1e-5, rtol=0)


def test_cli_index_build_on_ray_equals_local(tmp_path):
    args = ["index", "build", "--task", "sst2", "--split", "train", "--data-dir", str(TINY_DATA)]
    assert cli.invoke(app, [*args, "--out", str(tmp_path / "local")]).exit_code == 0
    result = cli.invoke(app, [*args, "--out", str(tmp_path / "spread"), "--ray-workers", str(WORKERS)])
    assert result.exit_code == 0, result.output
    local, spread = DemoIndex.load(tmp_path / "local"), DemoIndex.load(tmp_path / "spread")
    assert len(spread) == len(local) == 40
    np.testing.assert_allclose(spread.embeddings(spread.ids), local.embeddings(local.ids), atol=1e-6, rtol=0)
    bad = cli.invoke(app, [*args, "--out", str(tmp_path / "zero"), "--ray-workers", "0"])
    assert bad.exit_code == 2 and not (tmp_path / "zero").exists()


@pytest.mark.lm
@pytest.mark.shared_data
def test_cli_compare_on_ray_writes_the_same_records(tmp_path, smollm2):
    from retrieval_icl.experiment.compare import run_compare
    from retrieval_icl.experiment.compare_config import CompareConfig

    def config(name: str) -> CompareConfig:
        return CompareConfig(task="sst2", data_dir=str(SHARED_DATA), pool_size=80, n_queries=6, k=2, batch_size=4,
                             device="cpu", dtype="float32", index_root=str(tmp_path / f"index-{name}"),
                             output_dir=str(tmp_path / name), selectors=[{"name": "random"}, {"name": "knn"}])

    path = tmp_path / "spread.yaml"
    path.write_text(yaml.safe_dump(config("spread").model_dump(mode="json", exclude_none=True)))
    result = cli.invoke(app, ["compare", str(path), "--ray-workers", str(WORKERS)])
    assert result.exit_code == 0, result.output
    run_compare(config("single"))
    single, spread = ([json.loads(line) for line in (tmp_path / d / "records.jsonl").read_text().splitlines()]
                      for d in ("single", "spread"))
    assert len(single) == len(spread) == 12
    for a, b in zip(single, spread):
        np.testing.assert_allclose(b.pop("label_log_probs"), a.pop("label_log_probs"), atol=1e-4, rtol=0)
        for key in ("x_mass", "y_mass"):
            np.testing.assert_allclose(b["attention"].pop(key), a["attention"].pop(key), atol=1e-5)
        assert a == b  # demo ids, scores, spans, predictions, everything else
    assert json.loads((tmp_path / "spread" / "run_info.json").read_text())["ray_workers"] == WORKERS
