"""Metrics equal hand-computed values on tiny inputs and never crash on garbage predictions."""
import math

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics.bleu import BLEU

from tasks import metrics, postprocessors


def test_accuracy_counts_invalid_as_wrong():
    assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
    assert metrics.accuracy(np.array([0, 1]), np.array([0, 0])) == {"accuracy": 50.0}
    assert metrics.accuracy(["Tom", "Bob"], ["Tom", "bob"]) == {"accuracy": 50.0}


def test_f1_with_invalid_flips_invalid_predictions():
    # invalid -1 (target 1) becomes 0 -> preds [1,0,1,0]: TP=1 FP=1 FN=1 -> F1 = 0.5
    assert metrics.f1_score_with_invalid([1, 1, 0, 0], [1, -1, 1, 0]) == pytest.approx({"f1": 50.0})
    # invalid prediction on a negative becomes a false positive: TP=1 FP=1 FN=0 -> 2/3
    assert metrics.f1_score_with_invalid([1, 0], [1, 7])["f1"] == pytest.approx(200 / 3)
    assert metrics.f1_score_with_invalid([-1, 1], [0, 1])["f1"] == pytest.approx(100.0)  # unlabeled target: no crash


def test_matthews_corrcoef():
    # TP=1 TN=2 FP=0 FN=1 -> (1*2 - 0*1) / sqrt(1*2*2*3)
    assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])["matthews_corrcoef"] == pytest.approx(
        100 * 2 / math.sqrt(12))


def test_pearson_and_spearman():
    assert metrics.pearson_corrcoef([1, 2, 3], [1, 2, 4])["pearson_corrcoef"] == pytest.approx(100 * 9 / math.sqrt(84))
    # ranks [1,3,2,4] vs [1,2,3,4]: sum d^2 = 2 -> 1 - 6*2/(4*15) = 0.8
    assert metrics.spearman_corrcoef([1, 2, 3, 4], [10, 30, 20, 40])["spearman_corrcoef"] == pytest.approx(80.0)
    assert metrics.pearson_corrcoef([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == {"pearson_corrcoef": 0.0}


def test_mean_multiclass_f1():
    # per-class F1: c0 = 2/3, c1 = 2/3, c2 = 0 -> mean 4/9
    fn = metrics.mean_multiclass_f1(num_classes=3)
    assert fn([0, 1, 2, 0], [0, 1, 1, -1])["mean_3class_f1"] == pytest.approx(400 / 9)


def test_squad_normalisation_and_max_over_answers():
    assert metrics.normalize_squad("  The  Cat's, hat!") == "cats hat"
    result = metrics.squad([["The Cat", "dog"], ["a big house"]], ["cat!", "big house now"])
    # ex1: exact after normalisation; ex2: EM 0, F1 = 2*(2/3*1)/(2/3+1) = 0.8
    assert result == pytest.approx({"em": 50.0, "f1": 90.0})


def test_bleu_matches_sacrebleu_with_t5_settings():
    targets = ["The cat sat on the mat.", "It is raining today in Paris."]
    predictions = ["The cat sat on a mat.", "It rains in Paris today."]
    expected = sacrebleu.corpus_bleu(predictions, [targets], smooth_method="exp", smooth_value=0.0, force=False,
                                     lowercase=False, tokenize="intl", use_effective_order=False).score
    assert metrics.bleu(targets, predictions) == pytest.approx({"bleu": expected})
    assert metrics.bleu(["same words here ok"], ["same words here ok"])["bleu"] == pytest.approx(100.0)
    two_refs = metrics.bleu([["a b c d", "the cat sat on"]], ["the cat sat on"])
    assert two_refs["bleu"] == pytest.approx(100.0)


def test_rouge_hand_computed():
    result = metrics.rouge(["the cat sat on the mat"], ["the cat sat"])
    # rouge1: P=1 R=1/2 -> 2/3; rouge2: P=1 R=2/5 -> 4/7; rougeLsum: LCS 3 -> 2/3
    assert result == pytest.approx({"rouge1": 200 / 3, "rouge2": 400 / 7, "rougeLsum": 200 / 3})


def test_multirc_metrics_group_by_question():
    targets = [{"value": 1, "group": 0}, {"value": 0, "group": 0}, {"value": 1, "group": 1}]
    predictions = [{"value": 1}, {"value": 0}, {"value": 0}]
    assert metrics.multirc_exact_match(targets, predictions) == {"exact_match": 50.0}
    # over all answers: TP=1 FP=0 FN=1 -> 2/3
    assert metrics.multirc_f1_over_all_answers(targets, predictions)["f1"] == pytest.approx(200 / 3)


def test_record_metric_deduplicates_and_maxes_over_answers():
    targets = [{"value": ["Obama", "Barack Obama"], "group": (0, 0)},
               {"value": ["Obama", "Barack Obama"], "group": (0, 0)},
               {"value": ["Paris"], "group": (0, 1)}]
    predictions = [{"value": "the obama"}, {"value": "wrong"}, {"value": "London"}]
    assert metrics.record(targets, predictions) == pytest.approx({"em": 50.0, "f1": 50.0})


GARBAGE = [None, "zz", b"\xff\xfe", float("nan")]


@pytest.mark.parametrize("fn, targets", [
    (metrics.accuracy, [0, 1, 0, 1]),
    (metrics.f1_score_with_invalid, [0, 1, 0, 1]),
    (metrics.matthews_corrcoef, [0, 1, 0, 1]),
    (metrics.pearson_corrcoef, [0.5, 1.0, 4.2, 3.0]),
    (metrics.spearman_corrcoef, [0.5, 1.0, 4.2, 3.0]),
    (metrics.mean_multiclass_f1(3), [0, 1, 2, 1]),
    (metrics.squad, [["a"], ["b"], ["c"], ["d"]]),
    (metrics.bleu, ["a b", "c d", "e f", "g h"]),
    (metrics.rouge, ["a b", "c d", "e f", "g h"]),
])
def test_garbage_predictions_do_not_crash(fn, targets):
    result = fn(targets, GARBAGE)
    assert result and all(isinstance(v, float) and math.isfinite(v) for v in result.values())


def test_postprocessors_map_garbage_to_wrong_values():
    assert postprocessors.string_to_float("3.8") == pytest.approx(3.8)
    assert postprocessors.string_to_float("three") == -1.0
    assert postprocessors.string_to_float("nan") == -1.0
    assert postprocessors.string_label_to_class_id("neutral", ("entailment", "neutral")) == 1
    assert postprocessors.string_label_to_class_id("Neutral", ("entailment", "neutral")) == -1
    assert postprocessors.multirc("True", example={"idx/question": 7}, is_target=True) == {"value": 1, "group": 7}
    assert postprocessors.multirc("maybe") == {"value": -1}
    example = {"answers": [b"Paris"], "idx/passage": 3, "idx/query": 9}
    assert postprocessors.record("Paris", example=example, is_target=True) == {"value": ["Paris"], "group": (3, 9)}
    assert postprocessors.record("Rome", example=example) == {"value": "Rome"}


def test_wsc_simple_postprocessor():
    example = {"targets_pretokenized": b"the fuzzy bunny", "label": 1}
    assert postprocessors.wsc_simple("", example=example, is_target=True) == 1
    assert postprocessors.wsc_simple("Bunny", example=example) == 1
    assert postprocessors.wsc_simple("the cat", example=example) == 0
    assert postprocessors.wsc_simple("the", example=example) == -1
    assert postprocessors.wsc_simple("bunny's", example=example) == 0


def _bleu_from_segment_statistics(targets, predictions):
    """BLEU from n-gram statistics summed by hand over segments, each scored alone against exactly its refs."""
    totals = {"correct": [0] * 4, "total": [0] * 4, "sys_len": 0, "ref_len": 0}
    for refs, prediction in zip(targets, predictions):
        segment = sacrebleu.corpus_bleu([prediction], [[ref] for ref in refs], tokenize="intl")
        totals["correct"] = [a + b for a, b in zip(totals["correct"], segment.counts)]
        totals["total"] = [a + b for a, b in zip(totals["total"], segment.totals)]
        totals["sys_len"] += segment.sys_len
        totals["ref_len"] += segment.ref_len
    return BLEU.compute_bleu(**totals, smooth_method="exp").score


@pytest.mark.parametrize("targets, predictions", [
    # the smallest case: the first example's second reference is the exact prediction
    ([["the cat sat on the mat", "a cat was sitting on the mat"], ["the dog ran in the park"]],
     ["a cat was sitting on the mat", "the dog ran in the park"]),
    # one, three and two references; the longest list is not the first
    ([["It is raining today in Paris."], ["The cat sat on the mat.", "A cat is on a mat.", "On the mat sat a cat."],
      ["He reads a book.", "He is reading the book now."]],
     ["It rains in Paris today.", "A cat sat on a mat.", "He is reading a book now."]),
])
def test_bleu_with_a_varying_number_of_references(targets, predictions):
    expected = _bleu_from_segment_statistics(targets, predictions)
    assert metrics.bleu(targets, predictions)["bleu"] == pytest.approx(expected)
    assert metrics.bleu([list(reversed(t)) for t in targets], predictions)["bleu"] == pytest.approx(expected)


def test_bleu_issue_case_scores_100_and_missing_references_score_zero():
    targets = [["the cat sat on the mat", "a cat was sitting on the mat"], ["the dog ran in the park"]]
    predictions = ["a cat was sitting on the mat", "the dog ran in the park"]
    assert metrics.bleu(targets, predictions)["bleu"] == pytest.approx(100.0)
    assert metrics.bleu([[], []], predictions)["bleu"] == 0.0
