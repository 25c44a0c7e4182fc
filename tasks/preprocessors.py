"""Shared T5 text-formatting preprocessors: GLUE-style `name key: value` inputs, STS-B targets, spacing helpers."""
from typing import Optional, Sequence

import seqio
import tensorflow as tf

UNK_LABEL = "<unk>"
NO_LABEL = -1


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
    """Put spaces around ASCII punctuation and collapse whitespace (T5's SQuAD/TriviaQA normalisation).

    Follows the `t5` library since 2022: RE2's POSIX class `[[:punct:]]` is ASCII punctuation only, so
    `_` is padded while non-ASCII characters (`é`, the en dash `–`) are left alone.
    """
    text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
    return tf.strings.regex_replace(text, r"\s+", " ")


def subsequence_matches(needle: tf.Tensor, haystack: tf.Tensor) -> tf.Tensor:
    """bool [max(len(haystack) - len(needle) + 1, 0)]: whether `needle` (1-D) occurs in `haystack` (1-D, same

    dtype, any of int/string) starting at each position.
    """
    num_starts = tf.maximum(tf.size(haystack) - tf.size(needle) + 1, 0)
    windows = tf.gather(haystack, tf.range(num_starts)[:, tf.newaxis] + tf.range(tf.size(needle))[tf.newaxis, :])
    return tf.reduce_all(tf.equal(windows, needle[tf.newaxis, :]), axis=1)


def first_true(mask: tf.Tensor) -> tf.Tensor:
    """Index (int32 scalar) of the first True in a 1-D bool tensor, -1 if there is none."""
    hits = tf.where(mask)
    return tf.cond(tf.size(hits) > 0, lambda: tf.cast(hits[0, 0], tf.int32), lambda: tf.constant(-1))


def string_join(parts: Sequence) -> tf.Tensor:
    """Join string tensors with single spaces, collapsing runs of whitespace into one space."""
    return tf.strings.regex_replace(tf.strings.join(list(parts), separator=" "), r"\s+", " ")


def label_to_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
    """Class index -> its name; the TFDS 'no label' value -1 (test splits) -> '<unk>'."""
    names = tf.constant(list(label_names))
    label = tf.cast(label, tf.int32)
    name = tf.gather(names, tf.maximum(label, 0))
    return tf.where(tf.equal(label, NO_LABEL), tf.constant(UNK_LABEL), name)


def key_value_text(prefix: str, x, keys: Sequence[str]) -> tf.Tensor:
    """`prefix key1: v1 key2: v2 ...` joined with single spaces (values are not re-spaced)."""
    parts = [prefix]
    for key in keys:
        parts += [f"{key}:", x[key]]
    return tf.strings.join(parts, separator=" ")


@seqio.map_over_dataset
def glue(x, benchmark_name: str, label_names: Sequence[str], feature_names: Optional[Sequence[str]] = None,
         id_key: Optional[str] = "idx"):
    """T5's GLUE/SuperGLUE format: inputs `benchmark k1: v1 k2: v2` (keys sorted unless given), targets = label name.

    MultiRC additionally drops its HTML markup and keeps idx/paragraph, idx/question, idx/answer for grouping.
    """
    keys = list(feature_names) if feature_names else sorted(set(x.keys()) - {"label", "idx"})
    inputs = key_value_text(benchmark_name, x, keys)
    out = {}
    if benchmark_name == "multirc":
        inputs = tf.strings.regex_replace(inputs, "<br>", " ")
        inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
        for part in ("paragraph", "question", "answer"):
            out[f"idx/{part}"] = x["idx"][part]
    elif id_key:
        out["idx"] = x[id_key]
    out["inputs"] = inputs
    out["targets"] = label_to_text(x["label"], label_names)
    return out


def stsb_label_text(label: tf.Tensor) -> tf.Tensor:
    """Similarity score -> nearest multiple of 0.2 written with one decimal ('3.8'), as T5 does."""
    return tf.as_string(tf.round(label * 5) / 5, precision=1)


@seqio.map_over_dataset
def stsb(x):
    """STS-B as 26-way text classification: `stsb sentence1: A sentence2: B` -> e.g. '3.8'."""
    return {
        "inputs": key_value_text("stsb", x, ["sentence1", "sentence2"]),
        "targets": stsb_label_text(x["label"]),
        "idx": x["idx"],
    }
