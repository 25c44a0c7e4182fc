"""Shared T5 text-formatting preprocessors: GLUE-style `name key: value` inputs, STS-B targets, spacing helpers,
and the validation of indices (labels, word positions) that preprocessors look up in an example."""
import collections
import logging
from typing import Callable, Optional, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from text2text.errors import UserError

UNK_LABEL = "<unk>"
NO_LABEL = -1
# Examples left out by `validate` with skip_invalid_examples.skip = True, per check name (e.g. 'wsc').
SKIPPED_INVALID: collections.Counter = collections.Counter()


@gin.configurable
def skip_invalid_examples(skip: bool = False) -> bool:
    """Whether examples with an index that does not fit their text are left out (each logged with a running
    count) rather than stopping with an error; gin: `skip_invalid_examples.skip = True`. Read when a task's
    dataset is built."""
    return skip


def _python(value) -> object:
    value = value.numpy()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value.item()


def validate(dataset: tf.data.Dataset, name: str, check: Callable[[dict], Tuple[tf.Tensor, list]],
             describe: Callable[..., str]) -> tf.data.Dataset:
    """`dataset` with its valid examples unchanged; the first invalid one raises a UserError (inside tf.data:
    TensorFlow wraps it, `text2text.errors.embedded_user_error` recovers its line), or with
    `skip_invalid_examples()` each invalid one is left out with a warning and counted in SKIPPED_INVALID[name].

    `check(x)` gives a scalar tf.bool (valid?) and a list of scalar tensors; `describe(*values)` turns their
    Python values (str for strings) into the problem, e.g. "idx 3: span2_index 3 points at 'if', not 'he'".
    Only invalid examples reach Python (tf.py_function), so valid ones cost one tf.cond each.
    """
    skip = skip_invalid_examples()

    def report(*values):
        problem = f"{name} example {describe(*map(_python, values))}"
        if not skip:
            raise UserError(f"{problem}. Fix the data, or bind skip_invalid_examples.skip = True to leave such "
                            "examples out")
        SKIPPED_INVALID[name] += 1
        logging.warning("%s; skipped it (%d %s example(s) skipped so far)", problem, SKIPPED_INVALID[name], name)
        return False

    def keep(x):
        ok, values = check(x)
        return tf.cond(ok, lambda: tf.constant(True),
                       lambda: tf.reshape(tf.py_function(report, values, tf.bool), []))

    return dataset.filter(keep)


def idx_text(x) -> tf.Tensor:
    """An example's `idx` as text: '3', or 'answer=1,paragraph=0,question=5' for a dict of ids (MultiRC); '?'
    if it has none."""
    idx = x.get("idx")
    if idx is None:
        return tf.constant("?")
    if isinstance(idx, dict):
        return tf.strings.join([f"{key}=" + tf.strings.as_string(idx[key]) for key in sorted(idx)], separator=",")
    return tf.strings.as_string(idx)


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


def glue(dataset: tf.data.Dataset, benchmark_name: str, label_names: Sequence[str],
         feature_names: Optional[Sequence[str]] = None, id_key: Optional[str] = "idx") -> tf.data.Dataset:
    """T5's GLUE/SuperGLUE format: inputs `benchmark k1: v1 k2: v2` (keys sorted unless given), targets = label name.

    MultiRC additionally drops its HTML markup and keeps idx/paragraph, idx/question, idx/answer for grouping.
    A label that is neither -1 (no label) nor a class index is an invalid example (see `validate`).
    """
    def check(x):
        label = tf.cast(x["label"], tf.int64)
        ok = tf.equal(label, NO_LABEL) | ((label >= 0) & (label < len(label_names)))
        return ok, [idx_text(x), label]

    def describe(idx, label):
        return f"idx {idx}: label {label} is neither -1 (no label) nor a class index 0..{len(label_names) - 1}"

    dataset = validate(dataset, benchmark_name, check, describe)
    return dataset.map(lambda x: _glue_example(x, benchmark_name, label_names, feature_names, id_key),
                       num_parallel_calls=tf.data.AUTOTUNE)


def _glue_example(x, benchmark_name: str, label_names: Sequence[str], feature_names: Optional[Sequence[str]],
                  id_key: Optional[str]):
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
