"""Turn decoded model strings (and, for targets, the full example) into values the metrics compare, as T5 does."""
import math
from typing import Any, Mapping, Optional, Sequence

INVALID = -1


def as_text(value: Any) -> str:
    """bytes / numpy bytes / str -> str (examples from tf.data carry bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def string_to_float(string: Any, default: float = -1.0, **unused_kwargs) -> float:
    """Parse a float; unparseable or non-finite text -> `default` (scored as a wrong answer)."""
    try:
        value = float(as_text(string))
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def string_label_to_class_id(string_label: Any, label_classes: Sequence[str], default: int = INVALID,
                             **unused_kwargs) -> int:
    """Index of the label name in `label_classes`, or `default` (-1, always wrong) for anything else."""
    text = as_text(string_label)
    return list(label_classes).index(text) if text in label_classes else default


def multirc(string_label: Any, example: Optional[Mapping] = None, is_target: bool = False) -> dict:
    """MultiRC: {'value': 0/1/-1} plus, for targets, the question index as 'group' for per-question metrics."""
    out = {"value": string_label_to_class_id(string_label, label_classes=("False", "True"))}
    if is_target:
        out["group"] = int(example["idx/question"])
    return out


def record(answer: Any, example: Optional[Mapping] = None, is_target: bool = False) -> dict:
    """ReCoRD: prediction {'value': text}; target {'value': all answers, 'group': (passage idx, query idx)}."""
    if is_target:
        return {
            "value": [as_text(a) for a in example["answers"]],
            "group": (int(example["idx/passage"]), int(example["idx/query"])),
        }
    return {"value": as_text(answer)}


def qa(answer: Any, example: Optional[Mapping] = None, is_target: bool = False):
    """QA (SQuAD): prediction text; target = list of all reference answers from the example."""
    if is_target:
        return [as_text(a) for a in example["answers"]]
    return as_text(answer)


def span_qa(answer: Any, example: Optional[Mapping] = None, is_target: bool = False):
    """SQuAD span task: prediction text ('start: S end: E'); target = {'answers': all answers, 'context': text}."""
    if is_target:
        return {"answers": [as_text(a) for a in example["answers"]], "context": as_text(example["context"])}
    return as_text(answer)


_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some", "that", "the", "their",
    "these", "this", "those", "which", "whose", "your",
})


def _strip_determiners(text: Any) -> str:
    words = as_text(text).strip().lower().split(" ")
    return " ".join(w for w in words if w not in _DETERMINERS)


def wsc_simple(prediction: Any, example: Optional[Mapping] = None, is_target: bool = False) -> int:
    """WSC/DPR 'simple': target = gold label; prediction = 1 if it names the candidate referent, 0 if not, -1 if empty.

    Case and determiners are ignored and either word set may contain the other ('fuzzy bunny' ~ 'bunny'), but a
    possessive on only one side ("Bob" vs "Bob's hat") never matches.
    """
    if is_target:
        return int(example["label"])
    predicted = _strip_determiners(prediction)
    if not predicted:
        return INVALID
    referent = _strip_determiners(example["targets_pretokenized"])
    if ("'" in predicted) != ("'" in referent):
        return 0
    p_words, r_words = set(predicted.split(" ")), set(referent.split(" "))
    return int(p_words <= r_words or r_words <= p_words)
