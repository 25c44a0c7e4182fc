"""T5 evaluation metrics: each takes (targets, predictions) lists and returns {name: float}, garbage-tolerant."""
import collections
import itertools
import math
import re
import string
import warnings
from typing import Any, Callable, Dict, Sequence

import numpy as np

MetricFn = Callable[[Sequence, Sequence], Dict[str, float]]


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"metric got {len(targets)} targets but {len(predictions)} predictions; they must match.")


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def _as_float(value: Any, default: float = -1.0) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def _as_label(value: Any) -> int:
    """Integer class id, or -1 for anything that is not one (so it counts as wrong)."""
    return int(value) if isinstance(value, (bool, np.bool_, int, np.integer)) else -1


def _finite_or_zero(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def accuracy(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    """Percentage of predictions equal to their target (works for class ids and strings)."""
    _check_lengths(targets, predictions)
    if len(targets) == 0:
        return {"accuracy": 0.0}
    correct = sum(1 for t, p in zip(targets, predictions) if _equal(t, p))
    return {"accuracy": 100.0 * correct / len(targets)}


def _equal(target: Any, prediction: Any) -> bool:
    try:
        return bool(target == prediction)
    except (TypeError, ValueError):
        return False


def f1_score_with_invalid(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    """Binary F1 ×100 of the positive class 1; any prediction other than 0/1 is flipped to the wrong class."""
    _check_lengths(targets, predictions)
    t = np.array([_as_label(x) for x in targets], dtype=np.int64)
    p = np.array([_as_label(x) for x in predictions], dtype=np.int64)
    invalid = (p != 0) & (p != 1)
    p[invalid] = np.where(t[invalid] == 1, 0, 1)
    true_pos = int(np.sum((t == 1) & (p == 1)))
    false_pos = int(np.sum((t != 1) & (p == 1)))
    false_neg = int(np.sum((t == 1) & (p != 1)))
    denominator = 2 * true_pos + false_pos + false_neg
    return {"f1": 100.0 * 2 * true_pos / denominator if denominator else 0.0}


def matthews_corrcoef(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    """Matthews correlation ×100 (CoLA); invalid predictions (-1) act as an extra, always-wrong class."""
    import sklearn.metrics

    _check_lengths(targets, predictions)
    if len(targets) == 0:
        return {"matthews_corrcoef": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = sklearn.metrics.matthews_corrcoef([_as_label(x) for x in targets], [_as_label(x) for x in predictions])
    return {"matthews_corrcoef": 100.0 * _finite_or_zero(value)}


def _correlation(name: str, fn, targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    _check_lengths(targets, predictions)
    t = np.array([_as_float(x) for x in targets])
    p = np.array([_as_float(x) for x in predictions])
    if len(t) < 2 or np.all(t == t[0]) or np.all(p == p[0]):
        return {name: 0.0}
    return {name: 100.0 * _finite_or_zero(fn(t, p)[0])}


def pearson_corrcoef(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    """Pearson r ×100 (STS-B); unparseable values count as -1, an undefined correlation (constant input) as 0."""
    import scipy.stats

    return _correlation("pearson_corrcoef", scipy.stats.pearsonr, targets, predictions)


def spearman_corrcoef(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    """Spearman rho ×100 (STS-B); unparseable values count as -1, an undefined correlation (constant input) as 0."""
    import scipy.stats

    return _correlation("spearman_corrcoef", scipy.stats.spearmanr, targets, predictions)


def mean_multiclass_f1(num_classes: int) -> MetricFn:
    """Metric: unweighted mean over classes 0..num_classes-1 of per-class F1, ×100 (CB uses 3 classes)."""
    name = f"mean_{num_classes}class_f1"

    def fn(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
        import sklearn.metrics

        _check_lengths(targets, predictions)
        if len(targets) == 0:
            return {name: 0.0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = sklearn.metrics.fbeta_score(
                [_as_label(x) for x in targets], [_as_label(x) for x in predictions], beta=1,
                labels=list(range(num_classes)), average="macro", zero_division=0)
        return {name: 100.0 * float(value)}

    return fn


def all_match(targets: Sequence, predictions: Sequence) -> Dict[str, float]:
    """100 if every prediction equals its target, else 0."""
    _check_lengths(targets, predictions)
    return {"exact_match": 100.0 * float(all(_equal(t, p) for t, p in zip(targets, predictions)))}


def mean_group_metric(metric_fn: MetricFn, group_key: str = "group", value_key: str = "value") -> MetricFn:
    """Metric: `metric_fn` computed separately on each group of {'group','value'} dicts, then averaged over groups."""

    def fn(targets: Sequence[dict], predictions: Sequence[dict]) -> Dict[str, float]:
        _check_lengths(targets, predictions)
        groups = collections.OrderedDict()
        for t, p in zip(targets, predictions):
            group_t, group_p = groups.setdefault(t[group_key], ([], []))
            group_t.append(t[value_key])
            group_p.append(_value(p, value_key))
        scores = collections.defaultdict(list)
        for group_targets, group_predictions in groups.values():
            for name, value in metric_fn(group_targets, group_predictions).items():
                scores[name].append(value)
        return {name: float(np.mean(values)) for name, values in scores.items()}

    return fn


def deduplicate_metric(metric_fn: MetricFn, group_key: str = "group", value_key: str = "value") -> MetricFn:
    """Metric: `metric_fn` on the first example of each group only (ReCoRD repeats inputs once per answer)."""

    def fn(targets: Sequence[dict], predictions: Sequence[dict]) -> Dict[str, float]:
        _check_lengths(targets, predictions)
        seen = set()
        kept_targets, kept_predictions = [], []
        for t, p in zip(targets, predictions):
            if t[group_key] in seen:
                continue
            seen.add(t[group_key])
            kept_targets.append(t[value_key])
            kept_predictions.append(_value(p, value_key))
        return metric_fn(kept_targets, kept_predictions)

    return fn


def _value(prediction: Any, value_key: str) -> Any:
    return prediction.get(value_key) if isinstance(prediction, dict) else prediction


def multirc_f1_over_all_answers(targets: Sequence[dict], predictions: Sequence[dict]) -> Dict[str, float]:
    """MultiRC F1a: binary F1 over every answer option, ignoring the question grouping."""
    return f1_score_with_invalid([t["value"] for t in targets], [_value(p, "value") for p in predictions])


multirc_exact_match = mean_group_metric(all_match)


def normalize_squad(text: Any) -> str:
    """Official SQuAD answer normalisation: lowercase, drop punctuation, drop a/an/the, squeeze whitespace."""
    text = _as_text(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def _token_f1(target: str, prediction: str) -> float:
    prediction_tokens, target_tokens = prediction.split(), target.split()
    common = collections.Counter(prediction_tokens) & collections.Counter(target_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Dict[str, float]:
    """SQuAD exact match ('em') and token F1 ('f1') ×100, each the max over an example's reference answers."""
    _check_lengths(targets, predictions)
    if len(targets) == 0:
        return {"em": 0.0, "f1": 0.0}
    em, f1 = [], []
    for answers, prediction in zip(targets, predictions):
        answers = [answers] if isinstance(answers, (str, bytes)) else list(answers)
        answers = [normalize_squad(a) for a in answers]
        prediction = normalize_squad(prediction)
        em.append(max((float(a == prediction) for a in answers), default=0.0))
        f1.append(max((_token_f1(a, prediction) for a in answers), default=0.0))
    return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


record = deduplicate_metric(squad)


def _span_words(text: Any) -> list:
    return re.sub(r"\W", " ", _as_text(text)).split()


def _span_text(context_words: Sequence[str], prediction_words: Sequence[str]) -> str:
    """Context words prediction_words[1] .. prediction_words[3] (inclusive); '' unless both are integers."""
    if len(prediction_words) < 4:
        return ""
    try:
        start, end = int(prediction_words[1]), int(prediction_words[3])
    except ValueError:
        return ""
    return " ".join(context_words[start:end + 1])


def span_squad(targets: Sequence[dict], predictions: Sequence[str]) -> Dict[str, float]:
    r"""SQuAD em/f1 of span predictions 'start: S end: E' (t5's `span_squad`): the prediction becomes the words

    S..E of the target's context, both split into words at Unicode non-word characters (Python `\W`, runs
    of them collapsed), then scored like `squad` against the target's answers; a malformed prediction is ''.
    """
    _check_lengths(targets, predictions)
    texts = [_span_text(_span_words(t["context"]), _span_words(p)) for t, p in zip(targets, predictions)]
    return squad([t["answers"] for t in targets], texts)


def bleu(targets: Sequence, predictions: Sequence[str], tokenizer: str = "intl") -> Dict[str, float]:
    """Corpus BLEU via sacrebleu with T5's settings (exp smoothing, intl tokenizer, cased, force=False).

    `targets` holds one reference string or a list of references per example; the number of references may
    vary between examples. sacrebleu takes equally long reference streams, and a `None` in a stream means "no
    reference here" (its documented way to give a variable number of references), so shorter lists are padded
    with None. An example with no reference at all gets one empty reference (its n-grams match nothing).
    """
    import sacrebleu

    _check_lengths(targets, predictions)
    if len(targets) == 0:
        return {"bleu": 0.0}
    per_example = [[_as_text(ref) for ref in t] if isinstance(t, (list, tuple)) else [_as_text(t)]
                   for t in targets]
    per_example = [refs or [""] for refs in per_example]
    streams = [list(stream) for stream in itertools.zip_longest(*per_example, fillvalue=None)]
    score = sacrebleu.corpus_bleu(
        [_as_text(p) for p in predictions], streams, smooth_method="exp", smooth_value=0.0, force=False,
        lowercase=False, tokenize=tokenizer, use_effective_order=False)
    return {"bleu": float(score.score)}


def _rouge_sentences(summary: str) -> str:
    return summary.replace(" . ", " .\n")


ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")


def rouge(targets: Sequence[str], predictions: Sequence[str], score_keys: Sequence[str] = ROUGE_KEYS
          ) -> Dict[str, float]:
    """Mean ROUGE F-measure ×100 (rouge-score, no stemming; ' . ' starts a new sentence for rougeLsum)."""
    from rouge_score import rouge_scorer

    _check_lengths(targets, predictions)
    if len(targets) == 0:
        return {key: 0.0 for key in score_keys}
    scorer = rouge_scorer.RougeScorer(list(score_keys))
    totals = collections.defaultdict(float)
    for target, prediction in zip(targets, predictions):
        scores = scorer.score(target=_rouge_sentences(_as_text(target)),
                              prediction=_rouge_sentences(_as_text(prediction)))
        for key in score_keys:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * totals[key] / len(targets) for key in score_keys}
