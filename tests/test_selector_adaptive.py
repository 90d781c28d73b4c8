"""The adaptive selector and the kernel surrogate it decides with: known answers on hand-built pools."""

import numpy as np
import pytest

from retrieval_icl.data.examples import Example
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.kernel_surrogate import KernelSurrogate
from retrieval_icl.retrieval.near_duplicates import is_near_duplicate
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.selectors.adaptive import AdaptiveSelector, fit_outcome, fit_thresholds, levels, neighbourhoods
from retrieval_icl.selectors.base import make_selector

D = 16
GIVEN = {"bandwidth": 0.1, "thresholds": {1: 0.8, 2: 0.7, 4: 0.6}}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def index_of(vectors: np.ndarray, labels: list[int], tmp_path) -> DemoIndex:
    pool = [Example(i, (f"pool text {i}",), int(y)) for i, y in enumerate(labels)]
    return DemoIndex(Encoder(cache_dir=tmp_path)).build(pool, embeddings=vectors, label_names=["neg", "pos"])


def around(direction: np.ndarray, n: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors within about `spread` of a direction."""
    return unit(direction + spread * rng.normal(size=(n, D)))


@pytest.fixture
def two_neighbourhoods(tmp_path):
    """Near the query q_same: 8 pool points of label 0, almost identical to it. Near q_split: 4 of each label. Far
    away: 40 others of mixed labels."""
    rng = np.random.default_rng(0)
    q_same, q_split, far = unit(rng.normal(size=(3, D)))
    vectors = np.vstack([around(q_same, 8, 0.01, rng), around(q_split, 8, 0.01, rng), around(far, 40, 0.3, rng)])
    labels = [0] * 8 + [0, 1] * 4 + [0, 1] * 20
    return index_of(vectors, labels, tmp_path), q_same, q_split


def test_the_seed_counts_unless_bandwidth_and_thresholds_are_given():
    assert AdaptiveSelector().uses_seed and AdaptiveSelector(thresholds={1: 0.9}).uses_seed  # bandwidth still fitted
    assert not AdaptiveSelector(**GIVEN).uses_seed and AdaptiveSelector(**GIVEN, order="random").uses_seed


def test_levels_are_powers_of_two_below_k_then_k():
    assert levels(1) == [1] and levels(8) == [1, 2, 4, 8] and levels(6) == [1, 2, 4, 6] and levels(2) == [1, 2]


def test_one_demonstration_when_the_neighbours_agree_and_sit_near_all_of_k_when_they_split(two_neighbourhoods):
    index, q_same, q_split = two_neighbourhoods
    selector = AdaptiveSelector(**GIVEN).fit(index)
    same, split = selector.select_embedded(["query one", "query two"], np.vstack([q_same, q_split]), 8)
    assert len(same.demo_ids) == 1 and same.demo_ids[0] < 8  # the nearest of the identical eight
    assert len(split.demo_ids) == 8 and set(split.demo_ids) == set(range(8, 16))
    assert split.scores == sorted(split.scores)  # nearest_last, like knn


def test_the_confidence_it_decides_on_is_the_surrogate_over_the_k_nearest(two_neighbourhoods):
    index, q_same, _ = two_neighbourhoods
    ids, scores = index.search(q_same[None], 8)
    w = np.exp((scores[0].astype(np.float64) - 1) / 0.1)
    by_hand = (w.sum() + 0.5) / (w.sum() + 1.0)  # all eight are label 0; prior 1 spread over two labels
    surrogate = AdaptiveSelector(**GIVEN).fit(index).surrogate_
    assert surrogate.predict(scores[0], [0] * 8)[0] == pytest.approx(by_hand)
    assert by_hand > 0.9  # so level 1 (threshold 0.8) is chosen above


def test_far_neighbours_that_agree_still_get_more_demonstrations(tmp_path):
    rng = np.random.default_rng(1)
    q = unit(rng.normal(size=D))
    sideways = unit(rng.normal(size=D) - (rng.normal(size=D) @ q) * q)
    vectors = unit(np.vstack([0.3 * q + sideways + 0.01 * rng.normal(size=(8, D))]))  # cosine about 0.3 to q
    index = index_of(vectors, [1] * 8, tmp_path)
    (selection,) = AdaptiveSelector(**GIVEN).fit(index).select_embedded(["query"], q[None], 8)
    assert len(selection.demo_ids) == 8  # unanimous but distant: the prior dominates the weak kernel


def test_prefix_estimates_are_the_surrogate_over_each_prefix():
    cos = np.array([[0.9, 0.8, 0.7]])
    labels = np.array([[1, 0, 1]])
    surrogate = KernelSurrogate(2, 0.2, prior=1.0)
    probs = surrogate.predict_prefixes(cos, labels)
    for m in range(1, 4):
        assert probs[0, m - 1] == pytest.approx(surrogate.predict(cos[0, :m], labels[0, :m]))


def test_fit_thresholds_on_a_hand_made_case():
    # Four fit queries, k=2, one level (m=1). Columns: probability of label 1 after 1 and after 2 neighbours.
    p1 = np.array([[0.9, 0.95], [0.2, 0.1], [0.6, 0.45], [0.7, 0.8]])  # confidences over k=2: .95 .9 .55 .8
    probs = np.stack([1 - p1, p1], axis=2)  # (4, 2, 2)
    gold = np.array([1, 0, 0, 1])
    # With m=1 query 3 (confidence .55) becomes wrong; the others keep their answer. No loss allowed: the
    # threshold sits at the least confident query before it, 0.8.
    confidence, answers = probs[:, 1].max(axis=1), probs.argmax(axis=2)  # the kernel's answers after 1 and 2
    assert fit_thresholds(confidence, answers, gold, 2, tolerance=0.0) == {"1": pytest.approx(0.8)}
    assert fit_thresholds(confidence, answers, gold, 2, tolerance=0.25) == {"1": pytest.approx(0.55)}  # 1 of 4
    outcome = fit_outcome(confidence, answers, gold, 2, {"1": 0.8})
    assert outcome == {"accuracy_k": 1.0, "accuracy_adaptive": 1.0, "mean_count": 1.25}


def test_thresholds_are_fitted_on_pool_queries_saved_with_the_index_and_reused(two_neighbourhoods, tmp_path):
    index = two_neighbourhoods[0]
    fitted = AdaptiveSelector(bandwidth=0.1, n_fit=40, seed=3, fit_on="kernel").fit(index)
    report = fitted.fit_report()
    # 56 examples: 28 calibration queries (at most half the pool), the other 28 shape queries
    assert report["n_fit_queries"] == 28 and report["n_shape_queries"] == 28 and report["bandwidth"] == 0.1
    assert report["depth"] == 32 and report["tolerance"] == 0.03 and report["alpha"] == 0.1
    thresholds = fitted.thresholds_for(8)
    assert sorted(thresholds) == [1, 2, 4] and thresholds[1] >= thresholds[2] >= thresholds[4]
    assert thresholds == {1: 1 + 1e-9, 2: 1 + 1e-9, 4: 1 + 1e-9}  # 28 queries cannot show a 3-point bound: all k
    assert index.fits["adaptive"]["thresholds"]["8"] == {str(m): t for m, t in thresholds.items()}
    index.save(tmp_path / "saved")
    reopened = DemoIndex.load(tmp_path / "saved", encoder=index.encoder)
    assert reopened.fits == index.fits
    again = AdaptiveSelector(bandwidth=0.1, n_fit=40, seed=3, fit_on="kernel").fit(reopened)
    assert again.fitted_ is reopened.fits["adaptive"]  # reused, not refitted
    other = AdaptiveSelector(bandwidth=0.1, n_fit=40, seed=4, fit_on="kernel").fit(reopened)
    assert other.fitted_["settings"]["seed"] == 4 and reopened.fits["adaptive"] is other.fitted_


def test_the_fitted_bandwidth_is_the_likelihood_maximiser_on_the_grid(tmp_path):
    rng = np.random.default_rng(2)
    centres = unit(rng.normal(size=(4, D)))
    vectors = np.vstack([around(c, 100, 0.15, rng) for c in centres])
    index = index_of(vectors, [i % 2 for i in range(4) for _ in range(100)], tmp_path)
    fitted = AdaptiveSelector(n_fit=200, fit_on="kernel").fit(index).fitted_
    assert 0.01 <= fitted["bandwidth"] <= 10 and fitted["n_fit_queries"] == 200 and fitted["n_shape_queries"] == 200
    # Pure clusters: the kernel vote over the neighbours is nearly always right, so one demonstration suffices often.
    assert fitted["fit_accuracy"]["8"]["accuracy_k"] > 0.9
    assert fitted["fit_accuracy"]["8"]["mean_count"] < 8


def test_fit_skips_the_query_itself_and_its_own_text(two_neighbourhoods):
    index = two_neighbourhoods[0]
    selector = AdaptiveSelector(n_fit=56, fit_depth=4, bandwidth=0.1, fit_on="kernel").fit(index)
    # With the query itself among its neighbours every 1-neighbour vote would be right; it is not counted.
    assert selector.fitted_["n_fit_queries"] == 28 and selector.fitted_["depth"] == 4
    for near in neighbourhoods(selector, index):
        assert all(index.example(int(i)).text != t for t, row in zip(near.texts, near.ids) for i in row)


@pytest.mark.parametrize("params, message", [
    ({"bandwidth": 0}, "bandwidth must be a number greater than 0"),
    ({"prior": -1}, "prior must be a number greater than 0"),
    ({"thresholds": {1: 1.5}}, r"thresholds\[1\] must be a number in \[0, 1\]"),
    ({"thresholds": {0: 0.5}}, "a thresholds level must be a positive integer"),
    ({"thresholds": {}}, "thresholds must be a non-empty mapping"),
    ({"tolerance": 2}, "tolerance must be a number in"),
    ({"n_fit": 0}, "n_fit must be a positive integer"),
])
def test_bad_parameters_get_one_clear_error(params, message):
    with pytest.raises(RiclError, match=message):
        make_selector("adaptive", **params)


def test_unfitted_and_bad_k_get_clear_errors(two_neighbourhoods):
    index, q_same, _ = two_neighbourhoods
    with pytest.raises(RiclError, match="AdaptiveSelector is not fitted; call .fit"):
        AdaptiveSelector().select_embedded(["query"], q_same[None], 4)
    selector = AdaptiveSelector(bandwidth=0.1, n_fit=20, fit_depth=8, fit_on="kernel").fit(index)
    with pytest.raises(RiclError, match="k must be a positive integer, got 0"):
        selector.select_embedded(["query"], q_same[None], 0)
    with pytest.raises(RiclError, match=r"fitted for k in \[1, 2, 3, 4, 5, 6, 7, 8\] .* got k=9"):
        selector.select_embedded(["query"], q_same[None], 9)


def test_thresholds_given_as_strings_work_as_from_json(two_neighbourhoods):
    index, q_same, _ = two_neighbourhoods
    selector = AdaptiveSelector(bandwidth=0.1, thresholds={"1": 0.8, "2": 0.7}).fit(index)
    assert selector.thresholds_for(8) == {1: 0.8, 2: 0.7}
    assert len(selector.select_embedded(["query"], q_same[None], 8)[0].demo_ids) == 1


class FewShotLM:
    """An LM stand-in that answers the majority label of its demonstrations when it has at least `needs` of them,
    and the other label below that. Records how many demonstrations each prompt had."""

    def __init__(self, index: DemoIndex, needs: int) -> None:
        self.index, self.needs, self.sizes = index, needs, []

    def __call__(self, texts, demo_ids):
        rows = []
        for ids in demo_ids:
            self.sizes.append(len(ids))
            majority = int(np.mean([self.index.example(i).label for i in ids]) >= 0.5)
            answer = majority if len(ids) >= self.needs else 1 - majority
            rows.append(np.eye(2)[answer])
        return np.array(rows)


@pytest.fixture
def clusters(tmp_path):
    """Two tight clusters of 300, one per label, far apart: the kernel is sure everywhere."""
    rng = np.random.default_rng(5)
    a, b = unit(rng.normal(size=(2, D)))
    return index_of(np.vstack([around(a, 300, 0.05, rng), around(b, 300, 0.05, rng)]), [0] * 300 + [1] * 300,
                    tmp_path)


def test_fitted_to_the_kernel_one_demonstration_suffices_on_pure_clusters(clusters):
    selector = AdaptiveSelector(n_fit=300, fit_depth=8, fit_on="kernel").fit(clusters)  # 300: enough to show 3 points
    assert selector.thresholds_for(8)[1] <= 1  # reachable: the kernel's 1-neighbour answers are as good as 8's
    fit = selector.fitted_["fit_accuracy"]["8"]
    assert fit["mean_count"] < 1.1 and fit["calibration_drop"] == 0.0 and fit["p_value"] <= 0.1 / fit["chains"]


def test_fitted_to_the_lm_it_never_shows_fewer_demonstrations_than_the_lm_needs(clusters):
    lm = FewShotLM(clusters, needs=4)
    selector = AdaptiveSelector(n_fit=300, fit_depth=8).use_lm(lm, model="few-shot").fit(clusters)  # fit_on="lm"
    thresholds = selector.thresholds_for(8)
    assert thresholds[1] > 1 and thresholds[2] > 1 and thresholds[4] <= 1  # 1 and 2 lose every query; 4 none
    assert sorted(set(lm.sizes)) == [1, 2, 4, 8] and len(lm.sizes) == 4 * 300  # each fit query at each level, once
    report = selector.fit_report()
    assert report["fit_on"] == "lm" and report["settings"]["lm"] == "few-shot"
    assert list(report["thresholds"]) == ["1", "2", "4", "8"]
    fit = report["fit_accuracy"]["8"]
    assert (fit["accuracy_k"], fit["accuracy_adaptive"], fit["calibration_drop"]) == (1, 1, 0)
    assert 4 <= fit["mean_count"] < 4.1  # 4 but for the few queries less confident than any shape query: 8
    query = clusters.embeddings([0])
    assert len(selector.select_embedded(["a new query"], query, 8)[0].demo_ids) == 4
    assert len(selector.select_embedded(["a new query"], query, 4)[0].demo_ids) == 4  # k = 4 was fitted too
    with pytest.raises(RiclError, match=r"fitted for k in \[1, 2, 4, 8\]"):
        selector.select_embedded(["a new query"], query, 6)


def test_an_lm_fit_is_reused_for_the_same_lm_and_redone_for_another(clusters):
    first = FewShotLM(clusters, needs=2)
    AdaptiveSelector(n_fit=20, fit_depth=4, fit_on="lm").use_lm(first, model="a").fit(clusters)
    again = FewShotLM(clusters, needs=2)
    AdaptiveSelector(n_fit=20, fit_depth=4, fit_on="lm").use_lm(again, model="a").fit(clusters)
    other = FewShotLM(clusters, needs=2)
    AdaptiveSelector(n_fit=20, fit_depth=4, fit_on="lm").use_lm(other, model="b").fit(clusters)
    assert len(first.sizes) == 60 and again.sizes == [] and len(other.sizes) == 60


def test_an_lm_fit_without_the_lm_says_what_to_do(clusters):
    with pytest.raises(RiclError, match=r"fit_on='lm' \(the default\) fits its thresholds to the language model's"
                       r".*ricl index fit INDEX --model NAME"):
        AdaptiveSelector().fit(clusters)
    with pytest.raises(RiclError, match=r"fit_on must be one of \('kernel', 'lm'\)"):
        AdaptiveSelector(fit_on="gold")


def test_without_an_lm_a_saved_lm_fit_is_reused_and_names_its_lm(clusters):
    AdaptiveSelector(n_fit=20, fit_depth=4).use_lm(FewShotLM(clusters, needs=2), model="a").fit(clusters)
    reused = AdaptiveSelector(n_fit=20, fit_depth=4).fit(clusters)  # no LM attached: the saved fit serves
    assert reused.fit_report()["fit_on"] == "lm" and reused.fitted_["settings"]["lm"] == "a"
    with pytest.raises(RiclError, match="fit_on='lm'"):  # other settings: no fit to reuse, and no LM to make one
        AdaptiveSelector(n_fit=21, fit_depth=4).fit(clusters)


def test_fit_queries_see_no_near_duplicate_neighbours(tmp_path):
    """A phrase pool: each sentence has two sub-phrases of its own, embedded right beside it."""
    rng = np.random.default_rng(7)
    centres = unit(rng.normal(size=(40, D)))
    texts, vectors = [], []
    for i, c in enumerate(centres):
        sentence = f"the film number {i} is a quiet triumph of tone"
        texts += [sentence, f"film number {i} is a quiet", f"a quiet triumph of tone {i}"]
        vectors.append(around(c, 3, 0.01, rng))
    pool = [Example(i, (t,), i // 3 % 2) for i, t in enumerate(texts)]
    index = DemoIndex(Encoder(cache_dir=tmp_path)).build(pool, embeddings=np.vstack(vectors),
                                                           label_names=["neg", "pos"])
    selector = AdaptiveSelector(bandwidth=0.1, n_fit=60, fit_depth=4, fit_on="kernel")
    selector.fit(index)
    fit_queries = [t for near in neighbourhoods(selector, index) for t in near.texts]
    assert fit_queries and not any(t.startswith("film number") for t in fit_queries)  # a phrase the sentence holds
    for near in neighbourhoods(selector, index):
        for text, row in zip(near.texts, near.ids):
            assert not any(is_near_duplicate(text, index.example(int(i)).text) for i in row)
    plain_near = [index.search(index.embeddings([i]), 2)[1][0][1] for i in range(0, 120, 3)]
    assert all(is_near_duplicate(texts[3 * j], texts[int(i)]) for j, i in enumerate(plain_near))  # the control


WORDS = {0: "striker goal match keeper league coach winger penalty stadium referee fans trophy season final pitch "
            "captain derby transfer".split(),
         1: "flour sugar oven butter recipe dough whisk bake pastry cream batter kitchen vanilla icing cake "
            "yeast crust dessert".split()}


def topic_texts(n: int, rng: np.random.Generator, ending: str = "") -> list[tuple[str, int]]:
    """n texts of six random words of one topic each (label = topic), alternating topics."""
    return [(" ".join(rng.choice(WORDS[i % 2], 6, replace=False)) + ending, i % 2) for i in range(n)]


class QuestionsNeedEight:
    """An LM stand-in that answers the majority label of its demonstrations, but for a question (a text ending in
    "?") only with all 8 of them; with fewer it answers the other label."""

    def __init__(self, index: DemoIndex) -> None:
        self.index = index

    def __call__(self, texts, demo_ids):
        rows = []
        for text, ids in zip(texts, demo_ids):
            majority = int(np.mean([self.index.example(i).label for i in ids]) >= 0.5)
            rows.append(np.eye(2)[majority if len(ids) >= (8 if text.endswith("?") else 1) else 1 - majority])
        return np.array(rows)


def drop_on(selector: AdaptiveSelector, lm: QuestionsNeedEight, queries: list[Example]) -> float:
    """Accuracy of the LM with each query's 8 nearest minus with the selector's choice."""
    gold = np.array([q.label for q in queries])
    chosen = [s.demo_ids for s in selector.select(queries, 8)]
    full = [s.demo_ids for s in make_selector("knn").fit(selector.index_).select(queries, 8)]
    texts = [q.text for q in queries]
    return float((lm(texts, full).argmax(1) == gold).mean() - (lm(texts, chosen).argmax(1) == gold).mean())


def test_calibrated_on_queries_drawn_like_the_queries_it_keeps_what_a_pool_draw_cuts(pool_encoder):
    """The pool holds statements, the queries are questions, and the LM needs all 8 demonstrations only for a
    question: a fit calibrated on the pool cuts demonstrations the questions need; one calibrated on questions not."""
    rng = np.random.default_rng(11)
    pool = [Example(i, (t,), y) for i, (t, y) in enumerate(topic_texts(400, rng))]
    index = DemoIndex(pool_encoder).build(pool, label_names=["sport", "baking"])
    questions = [Example(1000 + i, (t,), y) for i, (t, y) in enumerate(topic_texts(160, rng, "?"))]
    calibration, held_out = questions[:80], questions[80:]
    settings = dict(n_fit=100, n_shape=200, fit_depth=8, tolerance=0.05, alpha=0.1)
    lm = QuestionsNeedEight(index)
    from_pool = AdaptiveSelector(**settings).use_lm(lm, model="q8").fit(index)
    assert from_pool.fitted_["fit_accuracy"]["8"]["mean_count"] < 4  # on statements few demonstrations suffice
    assert drop_on(from_pool, lm, held_out) > 0.3  # and on questions that loses
    calibrated = AdaptiveSelector(**settings).use_lm(lm, model="q8").use_calibration(calibration).fit(index)
    assert calibrated.fitted_ is not from_pool.fitted_ and calibrated.fitted_["n_fit_queries"] == 80
    assert all(t > 1 for t in calibrated.thresholds_for(8).values())  # never fewer than 8
    assert drop_on(calibrated, lm, held_out) == 0
    assert calibrated.fit_report()["settings"]["calibration"].startswith("80 queries, fingerprint ")
    served = AdaptiveSelector(**settings).fit(index)  # no LM, no calibration: the saved (calibrated) fit serves
    assert served.fitted_ is calibrated.fitted_


def test_calibration_queries_with_a_label_the_pool_lacks_get_a_clear_error(clusters):
    selector = AdaptiveSelector(n_fit=20, fit_depth=4).use_lm(FewShotLM(clusters, needs=1), model="a")
    with pytest.raises(RiclError, match=r"calibration query 7 has label 2; expected a label id in 0\.\.1"):
        selector.use_calibration([Example(7, ("a question",), 2)]).fit(clusters)
    with pytest.raises(RiclError, match="calibration queries are empty"):
        selector.use_calibration([])


def test_when_the_middle_levels_lose_and_one_demonstration_does_not_it_cuts_to_one_only(tmp_path):
    """Two pure, tight clusters (the kernel is sure: one demonstration would do) and a mixed, spread region (7 in 10
    of label 0: the kernel is unsure, and its shape-query fit lets such queries have 4). The LM is right with 1 or 8
    demonstrations and wrong with 2 or 4; the shape queries (the kernel's answers) cannot see that, the calibration
    can: only a chain allowing 1 alone keeps the saving without the loss."""
    rng = np.random.default_rng(3)
    a, b, c = unit(rng.normal(size=(3, D)))
    vectors = np.vstack([around(a, 250, 0.05, rng), around(b, 250, 0.05, rng), around(c, 500, 0.6, rng)])
    labels = [0] * 250 + [1] * 250 + [int(u < 0.3) for u in rng.random(500)]
    index = index_of(vectors, labels, tmp_path)

    def one_or_eight(texts, demo_ids):
        rows = []
        for ids in demo_ids:
            majority = int(np.mean([index.example(i).label for i in ids]) >= 0.5)
            rows.append(np.eye(2)[majority if len(ids) in (1, 8) else 1 - majority])
        return np.array(rows)

    selector = AdaptiveSelector(n_fit=400, n_shape=500, fit_depth=8).use_lm(one_or_eight, model="1-or-8").fit(index)
    fit = selector.fitted_["fit_accuracy"]["8"]
    assert fit["chains"] == 4 and fit["calibration_drop"] <= 0 and fit["mean_count"] < 5
    shown = {len(s.demo_ids) for s in selector.select_embedded([f"q{i}" for i in range(1000)],
                                                                index.embeddings(list(range(1000))), 8)}
    assert shown == {1, 8}  # never 2 or 4
