"""atomic_dir.py: --overwrite replaces only what the project wrote, one directory has one writer at a time, and a
writer that died mid-swap is recovered from."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from standin import TINY_DATA, VoteScorer, tiny_tokenizer
from typer.testing import CliRunner

from retrieval_icl.atomic_dir import atomic_directory, claimed, leftovers, recover
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError
from retrieval_icl.experiment.compare import run_compare
from retrieval_icl.experiment.compare_config import CompareConfig, SelectorConfig
from retrieval_icl.study import run_study


def users_folder(path: Path) -> Path:
    """A folder the user wrote: the project must never replace it."""
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    return path


def config(tmp_path: Path, output_dir: Path) -> CompareConfig:
    return CompareConfig(task="sst2", data_dir=str(TINY_DATA), k=2, index_root=str(tmp_path / "idx"),
                         output_dir=str(output_dir), selectors=[SelectorConfig(name="knn")])


def test_index_build_overwrite_refuses_a_users_folder_and_keeps_its_file(tmp_path):
    data = tmp_path / "small.csv"
    data.write_text("text,label\na gorgeous film,1\na tedious mess,0\n")
    folder = users_folder(tmp_path / "mine")
    result = CliRunner().invoke(app, ["index", "build", "--file", str(data), "--labels", "neg,pos", "--out",
                                      str(folder), "--overwrite"])
    assert result.exit_code == 2 and "did not write (no manifest.json)" in result.stderr, result.output
    assert (folder / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "small.csv"]


def test_compare_overwrite_refuses_a_users_folder_and_replaces_its_own_results(tmp_path):
    folder = users_folder(tmp_path / "out")
    with pytest.raises(RiclError, match="did not write \\(no run_info.json\\)"):
        run_compare(config(tmp_path, folder), overwrite=True, scorer=VoteScorer(tiny_tokenizer()))
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
    own = tmp_path / "own"
    run_compare(config(tmp_path, own), scorer=VoteScorer(tiny_tokenizer()))
    (own / "records.jsonl").write_text("")
    run_compare(config(tmp_path, own), overwrite=True, scorer=VoteScorer(tiny_tokenizer()))
    assert (own / "records.jsonl").read_text()  # its own results are replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "out", "own"]  # no lock or temporary left


def test_a_study_leaves_a_users_folder_at_its_output_path_alone(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(json.dumps({"task": "sst2", "data_dir": str(TINY_DATA), "k": 2, "model": "smollm2-135m",
                                      "index_root": str(tmp_path / "idx"), "selectors": [{"name": "knn"}]}))
    study = tmp_path / "study.yaml"
    study.write_text(json.dumps({"experiments": ["exp.yaml"], "grid": {"k": [2]},
                                 "output_root": str(tmp_path / "results")}))
    folder = users_folder(tmp_path / "results" / "exp-2")
    with pytest.raises(RiclError, match="did not write"):  # refused before the model is loaded
        run_study(study)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]


def hold_in_another_process(target: Path) -> subprocess.Popen:
    """A process that claims target and waits for a line on stdin."""
    code = ("import sys; from pathlib import Path; from retrieval_icl.atomic_dir import claimed\n"
            f"with claimed(Path({str(target)!r})):\n    print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_compare_to_a_claimed_directory_is_refused_and_a_dead_holder_frees_it(tmp_path):
    out = tmp_path / "out"
    holder = hold_in_another_process(out)
    try:
        with pytest.raises(RiclError, match="is being written by another run"):
            run_compare(config(tmp_path, out), scorer=VoteScorer(tiny_tokenizer()))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    _, _, written = run_compare(config(tmp_path, out), scorer=VoteScorer(tiny_tokenizer()))  # the lock died with it
    assert (written / "run_info.json").is_file()


def test_another_thread_is_refused_while_the_holder_thread_may_reenter(tmp_path):
    target, errors = tmp_path / "t", []
    with claimed(target):
        with claimed(target):  # the same thread: a run claims its output, then atomic_directory writes it
            pass

        def other() -> None:
            try:
                with claimed(target):
                    pass
            except RiclError as e:
                errors.append(str(e))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "being written by another run" in errors[0]
    with claimed(target):  # released: free again
        pass


def test_a_folder_that_gains_foreign_files_during_the_write_is_not_replaced(tmp_path):
    target = tmp_path / "t"
    with pytest.raises(RiclError, match="did not write"):
        with atomic_directory(target, marker="run_info.json") as tmp:
            (tmp / "run_info.json").write_text("{}")
            users_folder(target)  # the user puts their work there while the run is writing
    assert sorted(p.name for p in target.iterdir()) == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_an_empty_folder_or_a_file_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty", marker="m") as tmp:
        (tmp / "m").write_text("ok")
    assert (tmp_path / "empty" / "m").read_text() == "ok"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RiclError, match="exists and is not a directory"):
        with atomic_directory(tmp_path / "file", marker="m"):
            pass


KILLED_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from retrieval_icl import atomic_dir
from retrieval_icl.serving.demo_selector import DemoSelector
from retrieval_icl.retrieval.sentence_encoder import Encoder
selector = DemoSelector.load(Path(sys.argv[1]), encoder=Encoder(cache_dir=Path(sys.argv[2])))
rename = os.rename
def first_rename_then_die(src, dst):
    rename(src, dst)  # the index directory moved aside to .NAME.old-*
    os._exit(9)       # killed before the new one is moved in
atomic_dir.os.rename = first_rename_then_die
selector.add_examples([{"fields": "never acknowledged", "label": 1}], save=True)
"""


def small_index(tmp_path: Path) -> Path:
    from retrieval_icl.data.tasks import load_examples, load_task
    from retrieval_icl.retrieval.index import DemoIndex
    from retrieval_icl.retrieval.sentence_encoder import Encoder

    task = load_task("sst2")
    DemoIndex(Encoder(cache_dir=tmp_path / "emb")).build(load_examples(task, "train", TINY_DATA)[:6], task="sst2",
                                                         text_fields=task.text_fields).save(tmp_path / "index")
    return tmp_path / "index"


def test_an_index_whose_writer_died_between_the_renames_loads_whole(tmp_path):
    from retrieval_icl.retrieval.index import DemoIndex

    index = small_index(tmp_path)
    before = [ex.texts for ex in DemoIndex.load(index).examples]
    died = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(index), str(tmp_path / "emb")])
    assert died.returncode == 9 and not index.exists()  # only .index.old-* and .index.tmp-* are left
    assert {p.name.split("-")[0] for p in leftovers(index)} == {".index.old", ".index.tmp"}
    assert [ex.texts for ex in DemoIndex.load(index).examples] == before  # restored, the unacknowledged add absent
    assert leftovers(index) == [] and not (tmp_path / ".index.lock").exists()


def test_stale_temporary_folders_go_but_a_live_writers_stay(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (tmp_path / ".t.tmp-123-0123abcd").mkdir()
    (tmp_path / ".t.old-123-89abcdef").mkdir()
    (tmp_path / ".t.tmp-note").mkdir()  # not one of ours: kept
    holder = hold_in_another_process(target)
    try:
        recover(target)
        assert len(leftovers(target)) == 2  # the holder may be writing them
    finally:
        holder.kill()
        holder.wait()
    recover(target)
    assert leftovers(target) == [] and sorted(p.name for p in tmp_path.iterdir()) == [".t.tmp-note", "t"]


def test_two_writers_of_one_index_lose_no_acknowledged_add(tmp_path):
    from retrieval_icl.errors import StaleIndexError
    from retrieval_icl.retrieval.index import DemoIndex
    from retrieval_icl.retrieval.sentence_encoder import Encoder
    from retrieval_icl.serving.demo_selector import DemoSelector

    index = small_index(tmp_path)
    first, second = (DemoSelector.load(index, encoder=Encoder(cache_dir=tmp_path / "emb")) for _ in range(2))
    first.add_examples([{"fields": "saved by the first writer", "label": 1}], save=True)
    with pytest.raises(StaleIndexError, match="saved by another writer \\(generation 1\\) since this copy was loaded "
                                              "\\(generation 0\\)"):
        second.add_examples([{"fields": "from the stale second", "label": 0}], save=True)
    assert len(second) == 6  # nothing added in memory either
    texts = [ex.texts[0] for ex in DemoIndex.load(index).examples]
    assert "saved by the first writer" in texts and "from the stale second" not in texts
    reloaded = DemoSelector.load(index, encoder=Encoder(cache_dir=tmp_path / "emb"))
    reloaded.add_examples([{"fields": "from the stale second", "label": 0}], save=True)
    texts = [ex.texts[0] for ex in DemoIndex.load(index).examples]
    assert texts[-2:] == ["saved by the first writer", "from the stale second"]
    assert DemoIndex.load(index).manifest.generation == 2


def test_a_faiss_file_of_the_wrong_size_is_refused_before_faiss_reads_it(tmp_path):
    from retrieval_icl.retrieval.index import DemoIndex

    index = small_index(tmp_path)
    with (index / "index.faiss").open("ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(RiclError, match="index.faiss: \\d+ bytes, but the manifest says \\d+"):
        DemoIndex.load(index)
