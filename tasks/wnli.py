"""GLUE WNLI rewritten as WSC-style referent generation: the `t5` library's `glue_wnli_v002_simple_eval`.

WNLI pairs a premise holding a pronoun with a hypothesis that replaces the pronoun by a candidate; the task
marks the pronoun in the premise (`wsc: The fish ate the worm. *It* was tasty.`) and asks for the candidate
(`The worm`). Evaluation only: like t5, it is scored with the WSC-simple postprocessor (does the prediction
name the candidate?) against WNLI's label (is the candidate the referent?).
"""
import collections
import re
from typing import List, Sequence, Tuple

import seqio
import tensorflow as tf

from tasks import glue, metrics, postprocessors, vocab

TASK_NAME = "glue_wnli_v002_simple_eval"
PRONOUNS = frozenset({"he", "she", "they", "it", "her", "his", "their", "them", "him"})
_END_PUNCTUATION = (".", ",", "?", "!")

Match = collections.namedtuple("Match", ["score", "index", "context"])


def clean_words(text: str) -> List[str]:
    """Lowercased space-separated words, each without one trailing . , ? or !; empty words dropped."""
    words = (re.sub(r"[.,?!]$", "", w) for w in text.strip().lower().split(" "))
    return [w for w in words if w]


def _matching_prefix_size(words: Sequence[str], text: str) -> int:
    """Largest k such that the first k words, joined by spaces, occur in `text` (plain substring test)."""
    size = 0
    while size < len(words) and " ".join(words[:size + 1]) in text:
        size += 1
    return size


def _pronoun_match(premise: List[str], hypothesis: List[str], index: int) -> Match:
    """How many words around premise[index] recur in the hypothesis (before: compared in reversed word order)."""
    before, after = premise[:index], premise[index + 1:]
    before_size = _matching_prefix_size(before[::-1], " ".join(hypothesis[::-1]))
    after_size = _matching_prefix_size(after, " ".join(hypothesis))
    return Match(before_size + after_size, index, (before, after, before_size, after_size))


def _candidate_words(hypothesis: List[str], before, after, before_size: int, after_size: int) -> str:
    """The hypothesis words between the matched context words, '' if no pattern matches.

    As in t5 the words are used as regular expressions, and with no matching word before the pronoun all the
    words before it form the left context.
    """
    left = before[-before_size:] if before_size else before
    right = after[:after_size]
    text = " ".join(hypothesis)
    for pattern in (left + ["(.+)"] + right, ["^(.+)"] + right, left + ["(.+)$"]):
        found = re.search(" ".join(pattern), text)
        if found:
            return found.group(1)
    return ""


def _from_last_article(candidate: str) -> str:
    """Drops the words before the latest first occurrence of 'a', 'an' or 'the' (extraction can overshoot)."""
    words = candidate.split(" ")
    starts = [words.index(article) for article in ("a", "an", "the") if article in words]
    return " ".join(words[max(starts, default=0):])


def _as_written(candidate: str, hypothesis: str) -> str:
    """The candidate with the hypothesis's capitalisation, without end punctuation or a possessive `'`/`'s`."""
    pattern = " ".join(re.escape(word) + r"[.,?!]?" for word in candidate.split(" "))
    found = re.search(f"({pattern})", hypothesis, re.IGNORECASE)
    if not found:
        raise ValueError(f"WNLI simple: candidate {candidate!r} not found in hypothesis {hypothesis!r}")
    text = found.group(1)
    if text.endswith(_END_PUNCTUATION):
        text = text[:-1]
    for suffix in ("'", "'s"):
        if text.endswith(suffix):
            return text[:-len(suffix)]
    return text


def _mark(premise: str, index: int) -> str:
    """The premise with its index-th space-separated word starred, end punctuation kept outside: '*It* .'."""
    words = premise.split(" ")
    word = words[index]
    if not word:
        raise ValueError(f"WNLI simple: word {index} of premise {premise!r} is empty (repeated spaces)")
    if word.endswith(_END_PUNCTUATION):
        words[index] = f"*{word[:-1]}* {word[-1]}"
    else:
        words[index] = f"*{word}*"
    return " ".join(words)


def wnli_inputs_and_targets(premise: str, hypothesis: str, label: str = "wsc:") -> Tuple[str, str]:
    """(inputs, targets) as t5's `wnli_simple`: the pronoun whose neighbouring words best recur in the hypothesis

    (first on ties) is starred; the target is the hypothesis text standing in its place.
    Raises ValueError (as t5 fails) when the premise has no pronoun, the candidate cannot be located, or
    repeated spaces make the pronoun's index point at an empty word.
    """
    premise_words, hypothesis_words = clean_words(premise), clean_words(hypothesis)
    indices = [i for i, word in enumerate(premise_words) if word in PRONOUNS]
    if not indices:
        raise ValueError(f"WNLI simple: no pronoun in premise {premise!r}")
    best = max((_pronoun_match(premise_words, hypothesis_words, i) for i in indices), key=lambda m: m.score)
    candidate = _candidate_words(hypothesis_words, *best.context) if best.score else ""
    targets = _as_written(_from_last_article(candidate), hypothesis)
    return f"{label} {_mark(premise, best.index)}", targets


@seqio.map_over_dataset
def wnli_simple(x, label: str = "wsc:"):
    """glue/wnli row -> {'inputs', 'targets', 'premise', 'hypothesis', 'label', 'idx'} (wnli_inputs_and_targets)."""

    def compute(premise, hypothesis):
        return wnli_inputs_and_targets(premise.numpy().decode("utf-8"), hypothesis.numpy().decode("utf-8"), label)

    inputs, targets = tf.py_function(compute, inp=[x["sentence1"], x["sentence2"]], Tout=[tf.string, tf.string])
    return {
        "inputs": tf.reshape(inputs, []),
        "targets": tf.reshape(targets, []),
        "premise": x["sentence1"],
        "hypothesis": x["sentence2"],
        "label": x["label"],
        "idx": x["idx"],
    }


glue_wnli_v002_simple_eval = seqio.TaskRegistry.add(
    TASK_NAME,
    source=seqio.TfdsDataSource(tfds_name=f"glue/wnli:{glue.TFDS_VERSION}", splits=["validation", "test"]),
    preprocessors=[
        wnli_simple,
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=vocab.output_features(),
    postprocess_fn=postprocessors.wsc_simple,
    metric_fns=[metrics.accuracy],
)
