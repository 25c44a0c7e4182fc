"""Parity with the `t5` library 0.9.4 (test-only oracle, tests/t5_oracle.py) on the same rows and vocabulary.

Every task both register: preprocessed strings, token ids and every other example field on tfds mock rows and
hand-written edge rows; postprocessed targets/predictions and metric dicts on gold, wrong, unparseable and mixed
predictions (DPR's on the rows both sides accept). Every mixture: members and each member's rate for two example
counts. Span corruption, i.i.d. denoising and prefix LM: statistics on 500 examples. Anything that differs must be
one of DIFFERENCES, the README's "Differences from the t5 library" table, each also checked on its own below.
"""
import math

import pytest
import seqio
import tensorflow as tf

import t5_oracle as oracle
import t5_oracle_measures as measures
from tasks_fixtures import hand_written_tfds, skipping_invalid_examples, spm_model  # noqa: F401  (fixture)
from text2text import errors

SEQUENCE_LENGTH = {"inputs": 64, "targets": 32}
LENGTHS = {
    # t5's prefix-LM objective packers need one even length for every feature.
    "c4_prefix_lm_objective_encoder_decoder_architecture": {"inputs": 64, "targets": 64},
    "c4_prefix_lm_objective_decoder_architecture": {"inputs": 64, "targets": 64},
    # TriviaQA cuts longer inputs at a random window around the answer: keep them whole.
    "trivia_qa_v010": {"inputs": 4096, "targets": 32},
}
WSC_TASKS = ("super_glue_wsc_v102_simple_train", "super_glue_wsc_v102_simple_eval",
             "super_glue_wsc_v102_simple_1_sentinel_train", "super_glue_wsc_v102_simple_1_sentinel_eval")
WSC_EVAL_TASKS = tuple(name for name in WSC_TASKS if name.endswith("_eval"))
DPR_TASKS = ("dpr_v001_simple", "dpr_v001_simple_1_sentinel")
# Tasks whose examples differ on the mock rows (a documented difference): their postprocessing and metrics are
# compared on the rows both sides accept, the WELL_FORMED_ROWS.
SCORED_ON_WELL_FORMED_ROWS = DPR_TASKS
# (name, what differs) -> README row. "examples": preprocessed examples; "metrics": postprocessing/metrics;
# "rates": mixture rates.
DIFFERENCES = {
    ("c4_realnewslike_v020_unsupervised", "examples"): "t5 names TFDS config c4/en.realnewslike, which TFDS never had",
    ("c4_webtextlike_v020_unsupervised", "examples"): "t5 names TFDS config c4/en.webtextlike, which TFDS never had",
    ("trivia_qa_v010", "examples"): "answers are matched as literal text, t5 uses them as regular expressions",
    **{(name, "examples"): "a WSC row whose pronoun is the first word (span2_index 0): t5 fails an assertion"
       for name in WSC_EVAL_TASKS},
    **{(name, "examples"): "a DPR row without its pronoun: t5 keeps it unmarked, we stop (or skip and count)"
       for name in DPR_TASKS},
    ("glue_stsb_v002", "metrics"): "non-finite predictions score -1, correlations are finite (t5: NaN)",
    ("squad_v010", "metrics"): "scored against the target answer (t5 iterates over its characters)",
    ("en_mix", "rates"): "a task without a train split gets rate 0 (t5's rate raises)",
}
EXAMPLE_COUNTS = (1_000, 10_000_000)


@pytest.fixture(scope="module")
def registries(spm_model):  # noqa: F811
    """Both sides' tasks and mixtures, t5's vocabularies reading the test SentencePiece model."""
    found = oracle.registries()
    oracle.point_vocabularies_at(found.t5_tasks.values(), spm_model)
    return found


@pytest.fixture(scope="module")
def comparisons(registries):
    """name -> (TaskComparison, {prediction set: differences}) for every shared task."""
    out = {}
    for name in registries.shared_tasks:
        ours, theirs = registries.tasks[name], registries.t5_tasks[name]
        result = oracle.compare_task(ours, theirs, LENGTHS.get(name, SEQUENCE_LENGTH))
        scored_on = result
        if name in SCORED_ON_WELL_FORMED_ROWS:
            scored_on = oracle.compare_task(ours, theirs, LENGTHS.get(name, SEQUENCE_LENGTH), well_formed_only=True)
            assert not scored_on.differences and scored_on.examples, (name, scored_on.differences)
        scored = {}
        if scored_on.examples and (ours.predict_metric_fns or theirs.predict_metric_fns):
            for kind, predictions in oracle.prediction_sets(scored_on.ours).items():
                scored[kind] = oracle.outcome_differences(oracle.evaluate(ours, scored_on.ours, predictions),
                                                          oracle.evaluate(theirs, scored_on.theirs, predictions))
        out[name] = (result, scored)
    return out


def _splits_by_source(registries):
    """TFDS name -> the splits a shared task names explicitly (tasks other tests register are left out: one
    reading only glue/sst2's validation split must not take sst2's train split from both sides' mixtures)."""
    shared = (registries.tasks[name] for name in registries.shared_tasks)
    return {task.source.tfds_dataset.name.split(":")[0]: tuple(task.source._splits)
            for task in shared if isinstance(task.source, seqio.TfdsDataSource) and task.source._splits}


@pytest.fixture(scope="module")
def rates(registries):
    """count -> mixture -> (our rates, t5's rates) by member name."""
    out = {}
    for count in EXAMPLE_COUNTS:
        with measures.example_counts(count, _splits_by_source(registries)):
            out[count] = {name: (measures.mixture_rates(registries.mixtures[name]),
                                 measures.mixture_rates(registries.t5_mixtures[name]))
                          for name in registries.shared_mixtures}
    return out


def test_every_t5_task_and_mixture_is_registered_and_registries_are_restored(registries):
    assert len(registries.t5_tasks) == 60 and len(registries.t5_mixtures) == 20
    assert set(registries.t5_tasks) <= set(registries.tasks)
    assert set(registries.t5_mixtures) <= set(registries.mixtures)
    assert set(seqio.TaskRegistry.names()) >= set(registries.tasks)
    for name in registries.shared_tasks:  # seqio's registry holds our objects again, never t5's
        assert seqio.get_mixture_or_task(name) is registries.tasks[name]


@pytest.mark.slow
def test_examples_match_except_documented(comparisons):
    differing = {(name, "examples") for name, (result, _) in comparisons.items() if result.differences}
    assert differing == {key for key in DIFFERENCES if key[1] == "examples"}, {
        name: result.differences[:3] for name, (result, _) in comparisons.items() if result.differences}
    compared = [result for result, _ in comparisons.values() if not result.differences]
    assert len(compared) == len(comparisons) - len(differing) >= 52
    # Every compared task saw examples: random mock rows, edge rows or well-formed rows.
    assert all(result.examples > 0 for result in compared), [r.name for r in compared if not r.examples]


def test_postprocessing_and_metrics_match_except_documented(registries, comparisons):
    scored = {name: kinds for name, (_, kinds) in comparisons.items() if kinds}
    with_metrics = {name for name in registries.shared_tasks if registries.tasks[name].predict_metric_fns}
    assert set(scored) == {name for name in with_metrics
                           if comparisons[name][0].examples or name in SCORED_ON_WELL_FORMED_ROWS}
    assert len(scored) >= 39 and set(DPR_TASKS) <= set(scored)
    differing = {(name, "metrics") for name, kinds in scored.items() if any(kinds.values())}
    assert differing == {key for key in DIFFERENCES if key[1] == "metrics"}, {
        name: kinds for name, kinds in scored.items() if any(kinds.values())}
    # STS-B differs only on non-finite predictions: gold and wrong-but-finite ones score the same.
    assert not scored["glue_stsb_v002"]["gold"] and not scored["glue_stsb_v002"]["shifted"]


def test_mixture_members_and_rates_match_except_documented(registries, rates):
    assert len(registries.shared_mixtures) == 20
    differing = {}
    for count, by_mixture in rates.items():
        for name, (ours, theirs) in by_mixture.items():
            assert set(ours) == set(theirs), name
            for task, rate in ours.items():
                if not oracle.same(rate, theirs[task]):
                    differing.setdefault(name, set()).add(task)
    assert {(name, "rates") for name in differing} == {key for key in DIFFERENCES if key[1] == "rates"}
    # ... and only for en_mix's members without a train split, where t5's rate raises (KeyError from tfds).
    no_train = {"glue_mnli_matched_v002", "glue_mnli_mismatched_v002", "glue_ax_v002", "super_glue_axb_v102",
                "super_glue_axg_v102", "super_glue_wsc_v102_simple_eval"}
    assert differing["en_mix"] == no_train
    for count in EXAMPLE_COUNTS:
        ours, theirs = rates[count]["en_mix"]
        assert all(ours[name] == 0.0 and isinstance(theirs[name], KeyError) for name in no_train)
        # No cap on supervised rates, C4 at 1e6, as t5.
        assert ours["glue_cola_v002"] == theirs["glue_cola_v002"] == count
        assert ours["c4_v020_unsupervised"] == 1e6


def test_glue_and_super_glue_rates_are_t5s_preprocessed_example_counts(rates):
    ours, theirs = rates[EXAMPLE_COUNTS[0]]["super_glue_v102_proportional"]
    # ReCoRD counts one example per answer, WSC training rows only the correct referents.
    assert ours["super_glue_record_v102"] == theirs["super_glue_record_v102"] == 138_854
    assert ours["super_glue_wsc_v102_simple_train"] == theirs["super_glue_wsc_v102_simple_train"] == 259
    for count in EXAMPLE_COUNTS:
        assert rates[count]["all_proportional"][0]["glue_rte_v002"] == 1_245  # halved next to SuperGLUE's RTE


def test_span_corruption_statistics_match_on_500_examples(registries):
    lengths = {"inputs": 128, "targets": 32}
    with oracle.mock_rows(random_rows=False, texts=measures.documents(320, words=180)):
        ours, theirs = (oracle.read(side["c4_v220_span_corruption"], "train", lengths, seed=3)
                        for side in (registries.tasks, registries.t5_tasks))
    assert len(ours) >= 500 and len(theirs) >= 500
    vocab_size = registries.tasks["c4_v220_span_corruption"].output_features["targets"].vocabulary.vocab_size
    ours, theirs = (measures.objective_statistics(examples[:500], vocab_size) for examples in (ours, theirs))
    assert ours["sentinels_in_order"] == theirs["sentinels_in_order"] == 1.0
    assert ours["noise_density"] == pytest.approx(theirs["noise_density"], abs=0.002)
    assert ours["noise_density"] == pytest.approx(0.15, abs=0.005)
    assert ours["mean_span_length"] == pytest.approx(theirs["mean_span_length"], rel=0.01)
    assert ours["mean_span_length"] == pytest.approx(3.0, rel=0.02)
    assert ours["inputs_length"] == pytest.approx(theirs["inputs_length"], rel=0.01)
    assert ours["targets_length"] == pytest.approx(theirs["targets_length"], rel=0.01)


def test_iid_denoising_and_prefix_lm_statistics_match_on_500_examples(registries):
    lengths = {"inputs": 128, "targets": 128}
    names = ("c4_v220_iid_denoising", "c4_v220_prefix_lm")
    with oracle.mock_rows(random_rows=False, texts=measures.documents(320, words=180)):
        read = {(name, side): oracle.read(tasks[name], "train", lengths, seed=3)
                for name in names for side, tasks in (("ours", registries.tasks), ("t5", registries.t5_tasks))}
    vocab_size = registries.tasks[names[0]].output_features["targets"].vocabulary.vocab_size
    stats = {key: measures.objective_statistics(examples[:500], vocab_size) for key, examples in read.items()}
    assert all(len(examples) >= 500 for examples in read.values())
    ours, theirs = stats[names[0], "ours"], stats[names[0], "t5"]
    assert ours["noise_density"] == pytest.approx(theirs["noise_density"], abs=0.005)
    assert ours["mean_span_length"] == pytest.approx(theirs["mean_span_length"], rel=0.02)
    ours, theirs = stats[names[1], "ours"], stats[names[1], "t5"]  # a uniform split point: half and half
    assert ours["inputs_length"] == pytest.approx(theirs["inputs_length"], rel=0.05)
    assert ours["targets_length"] == pytest.approx(theirs["targets_length"], rel=0.05)


# ---------------------------------------------------------------- each documented difference on its own


def test_stsb_non_finite_and_constant_predictions_score_finite(registries, comparisons):
    result, _ = comparisons["glue_stsb_v002"]
    ours, theirs = registries.tasks["glue_stsb_v002"], registries.t5_tasks["glue_stsb_v002"]
    n = result.examples
    for predictions in (["nan"] * n, ["2.5"] * n, (["inf", "1.0", "1e400", "4.2"] * n)[:n]):
        _, our_preds, our_scores = oracle.evaluate(ours, result.ours, predictions)
        _, t5_preds, t5_scores = oracle.evaluate(theirs, result.theirs, predictions)
        assert all(math.isfinite(p) for p in our_preds) and all(math.isfinite(v) for v in our_scores.values())
        assert math.isnan(t5_scores["pearson_corrcoef"])
        if len(set(predictions)) == 1:  # constant (or all -1): the correlation is undefined, reported as 0
            assert our_scores == {"pearson_corrcoef": 0.0, "spearman_corrcoef": 0.0}
            assert math.isnan(t5_scores["spearman_corrcoef"])
        else:  # t5 keeps inf (Spearman ranks it), we score it -1
            assert not all(math.isfinite(p) for p in t5_preds) and math.isfinite(t5_scores["spearman_corrcoef"])


def test_squad_v010_scores_the_answer_not_its_characters(registries):
    ours, theirs = registries.tasks["squad_v010"], registries.t5_tasks["squad_v010"]
    examples = [{"targets_pretokenized": b"Paris", "answers": [b"Paris"]}]
    assert oracle.evaluate(ours, examples, ["Paris"])[2]["em"] == 100.0
    assert oracle.evaluate(theirs, examples, ["Paris"])[2]["em"] == 0.0  # 'Paris' vs 'P', 'a', 'r', ...


def test_trivia_qa_matches_answers_literally(comparisons):
    result, _ = comparisons["trivia_qa_v010"]
    # The punctuation-only answer '?!.,;:—…()' is a valid regular expression for t5, matching other text.
    assert any("examples vs t5's" in difference for difference in result.differences)


@pytest.mark.parametrize("name", WSC_TASKS)
def test_wsc_differs_on_the_mock_rows_only_by_a_pronoun_at_word_0(registries, comparisons, name):
    result, _ = comparisons[name]
    assert result.raised  # the malformed mock rows stop both sides (compare_task drops them on both)
    with oracle.mock_rows():
        ours, theirs = (oracle.read(side[name], result.split, SEQUENCE_LENGTH, skip_errors=True)
                        for side in (registries.tasks, registries.t5_tasks))
    assert all(any(not oracle.example_differences([mine], [example]) for mine in ours) for example in theirs)
    extra = [mine for mine in ours if all(oracle.example_differences([mine], [example]) for example in theirs)]
    assert len(ours) == len(theirs) + len(extra)
    # Only the '_' edge row (text '_', span2_text '_', span2_index 0); it has label 0, which training drops.
    assert [mine["inputs_pretokenized"].decode("utf-8") for mine in extra] == (
        ["wsc:  *_* "] if name in WSC_EVAL_TASKS else [])
    assert ((name, "examples") in DIFFERENCES) == bool(extra)


WSC_ROW = {"text": "He asked Tom for money.", "span1_text": "Tom", "span1_index": 2, "span2_text": "He",
           "span2_index": 0, "label": 1, "idx": 5}


@pytest.mark.parametrize("name", WSC_TASKS)
def test_wsc_span2_index_0_is_an_example_here_and_a_failed_assertion_in_t5(registries, name):
    ours, theirs = registries.tasks[name], registries.t5_tasks[name]
    split = oracle.split_for(ours)
    rows = {"index_0": WSC_ROW, "index_1": {**WSC_ROW, "text": "So he asked Tom.", "span2_text": "he",
                                              "span2_index": 1},
            "wrong_word": {**WSC_ROW, "span2_index": 1}, "past_the_end": {**WSC_ROW, "span2_index": 5}}
    read = {}
    for key, row in rows.items():
        with hand_written_tfds({split: [row]}):
            read[key] = [oracle.read(task, split, SEQUENCE_LENGTH) for task in (ours, theirs)]
            if key in ("wrong_word", "past_the_end"):
                with skipping_invalid_examples("wsc") as skipped:
                    assert oracle.read(ours, split, SEQUENCE_LENGTH) == []
                assert skipped() == 1
    [mine], t5_error = read["index_0"]
    assert mine["inputs_pretokenized"].decode("utf-8") == "wsc:  *He* asked Tom for money."
    assert isinstance(t5_error, tf.errors.InvalidArgumentError) and "assertion failed" in str(t5_error)
    assert not oracle.example_differences(*read["index_1"])  # any other word: the same example
    for key in ("wrong_word", "past_the_end"):  # both reject; ours names the row
        mine, t5_error = read[key]
        assert isinstance(t5_error, tf.errors.InvalidArgumentError)
        assert str(errors.embedded_user_error(mine)).startswith("wsc example idx 5: span2_index ")


@pytest.mark.parametrize("name", DPR_TASKS)
def test_dpr_row_without_its_pronoun_stops_or_is_skipped_where_t5_keeps_it_unmarked(registries, comparisons,
                                                                                    name):
    result, scored = comparisons[name]
    assert result.raised and scored and not any(scored.values())  # metrics: equal on the well-formed rows
    ours, theirs = registries.tasks[name], registries.t5_tasks[name]
    with oracle.mock_rows():
        stopped = oracle.read(ours, result.split, SEQUENCE_LENGTH)
        kept_by_t5 = oracle.read(theirs, result.split, SEQUENCE_LENGTH, skip_errors=True)
        # (the punctuation-only pronoun '?!.,;:—…()' is an invalid regular expression: it raises on both sides)
        with skipping_invalid_examples("dpr") as skipped:
            kept = oracle.read(ours, result.split, SEQUENCE_LENGTH, skip_errors=True)
    line = str(errors.embedded_user_error(stopped))
    assert line.startswith("dpr example ") and "does not occur as a word" in line
    assert result.differences == [f"{len(kept)} examples vs t5's {len(kept_by_t5)}"]
    assert all(any(not oracle.example_differences([mine], [example]) for example in kept_by_t5) for mine in kept)
    extra = [example for example in kept_by_t5 if all(oracle.example_differences([mine], [example]) for mine in kept)]
    assert len(kept_by_t5) == len(kept) + len(extra) and skipped() == len(extra) > 0
    assert all(b"*" not in example["inputs_pretokenized"] for example in extra)  # t5: no pronoun marked
    assert all(b"*" in mine["inputs_pretokenized"] for mine in kept)
    # A label that is no candidate's index: both reject it; ours names the row.
    row = {"sentence": "Bob asked Tom if he can lend money.", "pronoun": "he", "candidates": ["Bob", "Tom"],
           "label": 2}
    with hand_written_tfds({result.split: [row]}):
        mine, t5_error = (oracle.read(task, result.split, SEQUENCE_LENGTH) for task in (ours, theirs))
    assert isinstance(t5_error, tf.errors.InvalidArgumentError)
    assert str(errors.embedded_user_error(mine)) == (
        f"dpr example {row['sentence']!r}: label 2 is not a candidate index 0..1. Fix the data, or bind "
        "skip_invalid_examples.skip = True to leave such examples out")


@pytest.mark.parametrize("name", ["c4_realnewslike_v020_unsupervised", "c4_webtextlike_v020_unsupervised"])
def test_c4_variants_read_configs_that_exist(registries, comparisons, name):
    assert comparisons[name][0].differences[0].startswith("only one side raised")
    with oracle.mock_rows():
        ours, theirs = (oracle.read(side[name], "train", SEQUENCE_LENGTH) for side in (registries.tasks,
                                                                                        registries.t5_tasks))
    assert len(ours) == oracle.MOCK_EXAMPLES + len(oracle.EDGE_STRINGS) + 1
    assert isinstance(theirs, ValueError) and "not found with version 2.2.0" in str(theirs)


def test_glue_reads_tfds_version_2(registries):
    glue = [name for name in registries.shared_tasks if name.startswith("glue_")]
    assert len(glue) == 13  # 12 configs and WNLI simple
    for name in glue:
        assert registries.tasks[name].source.tfds_dataset.name.endswith(":2.0.0")
        assert registries.t5_tasks[name].source.tfds_dataset.name.endswith(":1.0.0")


def test_comparison_detects_a_difference(registries):
    """The harness is not vacuous: a task compared with a different one (other prefix) differs."""
    with oracle.mock_rows():
        ours = oracle.read(registries.tasks["glue_rte_v002"], "train", SEQUENCE_LENGTH)
        theirs = oracle.read(registries.t5_tasks["super_glue_rte_v102"], "train", SEQUENCE_LENGTH)
    assert any("inputs" in difference for difference in oracle.example_differences(ours, theirs))
    assert oracle.same(float("nan"), float("nan")) and not oracle.same(1.0, 1.1) and not oracle.same(b"a", "a ")
