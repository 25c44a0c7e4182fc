"""The pattern-verbalizer core: cloze templates, verbalizers, rank classification, demonstrations, prompted tasks.

    template = Template("{sentence} It was <extra_id_0>.")           # targets: "<extra_id_0> {label} <extra_id_1>"
    verbalizer = Verbalizer({"pos": "great", "neg": "not good"})     # label words may span several tokens
    register_rank_classification_task("sst_rank", {"validation": rows}, template, verbalizer)

Examples are dicts of text fields plus a class key under `label_key`. Rank classification scores every class's
target text (EncoderDecoderModel.score_batch) and predicts the class with the highest log-likelihood (optionally
divided by its number of target tokens); as seqio tasks, each input becomes one example per class carrying
`idx` (the input's position in the split, so ids are unique across hosts: an input's candidates are sharded
together), `label` and `is_correct`. Demonstrations follow LM-BFF: k training examples per class, formatted by
the template with their label words filled in, follow the query's prompt (seeded per example).
"""
from __future__ import annotations

import dataclasses
import functools
import random
import string
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf

from tasks import metrics as metrics_lib
from tasks import vocab as vocab_lib
from tasks.custom import add_task
from tasks.mixtures import register_mixture
from text2text.errors import UserError

SENTINEL = "<extra_id_0>"
DEFAULT_TARGETS = "<extra_id_0> {label} <extra_id_1>"
Example = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Template:
    """A pattern: `inputs` formats an example's fields ("{field}"); `targets` formats the label words ("{label}").

    A cloze pattern has the sentinel <extra_id_0> in its inputs and targets "<extra_id_0> {label} <extra_id_1>"
    (T5's span filling, the default); an instruction pattern has targets "{label}": the answer follows the prompt.
    """
    inputs: str
    targets: str = DEFAULT_TARGETS

    @property
    def is_cloze(self) -> bool:
        """True when the targets fill the sentinel's span (the label words replace <extra_id_0> in the inputs)."""
        return SENTINEL in self.targets

    def check(self) -> "Template":
        """self; UserError naming the template when inputs or targets are not format strings of named fields
        (a lone "{" or "}", a positional "{}" or "{0}", a conversion other than !r, !s, !a), targets use a field
        other than "{label}" or lack it, or a cloze pattern's inputs lack the sentinel."""
        self._check_fields("inputs", self.inputs)
        self._check_fields("targets", self.targets, ("label",))
        if "{label}" not in self.targets:
            raise UserError(f"template {self.inputs!r}: targets {self.targets!r} have no {{label}}")
        if self.is_cloze and SENTINEL not in self.inputs:
            raise UserError(f"template {self.inputs!r} has no {SENTINEL}, which its targets {self.targets!r} fill")
        return self

    def _check_fields(self, part: str, text: str, allowed: Optional[Tuple[str, ...]] = None) -> None:
        where = f"template {self.inputs!r}" + ("" if part == "inputs" else f": targets {text!r}")
        try:
            fields = [(name, conversion) for _, name, _, conversion in string.Formatter().parse(text)
                      if name is not None]
        except ValueError as e:
            raise UserError(f"{where} is not a valid format string ({e}; write a literal brace as {{{{ or }}}})") \
                from e
        for name, conversion in fields:
            root = name.split(".")[0].split("[")[0]
            if not root or root.isdigit():
                raise UserError(f"{where} has a positional field {{{name}}}; fields are named, e.g. "
                                f"{{{allowed[0] if allowed else 'text'}}}")
            if conversion not in (None, "r", "s", "a"):
                raise UserError(f"{where}: field {{{name}!{conversion}}} has an unknown conversion (!r, !s or !a)")
            if allowed is not None and root not in allowed:
                raise UserError(f"{where} uses field {{{name}}}; only {', '.join(f'{{{a}}}' for a in allowed)} is "
                                f"filled there")

    def format_inputs(self, example: Example) -> str:
        """The prompt text for `example`: UserError naming the template for a field the example lacks or an
        inputs text that cannot format it (see `check`)."""
        try:
            return self.inputs.format_map(example)
        except KeyError as e:
            raise UserError(f"template {self.inputs!r} uses field {e.args[0]!r}; the example has {sorted(example)}") \
                from e
        except (IndexError, ValueError, AttributeError, TypeError) as e:
            self._check_fields("inputs", self.inputs)
            raise UserError(f"template {self.inputs!r} cannot format an example with fields {sorted(example)}: "
                            f"{e}") from e

    def format_targets(self, label_words: str) -> str:
        """The target text for a class's label words; UserError naming the template when the targets are not a
        format string whose only field is {label} (see `check`)."""
        try:
            return self.targets.format(label=label_words)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            self._check_fields("targets", self.targets, ("label",))
            raise UserError(f"template {self.inputs!r}: targets {self.targets!r} cannot format label words "
                            f"{label_words!r}: {e}") from e

    def filled(self, example: Example, label_words: str) -> str:
        """The prompt answered with the label words (a demonstration): a cloze pattern's sentinel replaced by
        them, an instruction pattern's prompt followed by them. UserError as `check`."""
        prompt = self.check().format_inputs(example)
        return prompt.replace(SENTINEL, label_words) if self.is_cloze else f"{prompt} {label_words}"


@dataclasses.dataclass(frozen=True)
class Verbalizer:
    """Class -> label words; `words` may be given as a mapping (kept in its order)."""
    words: Any

    def __post_init__(self):
        pairs = tuple(self.words.items()) if isinstance(self.words, Mapping) else tuple(map(tuple, self.words))
        if len(pairs) < 2 or len({c for c, _ in pairs}) != len(pairs) or not all(w for _, w in pairs):
            raise UserError(f"a verbalizer needs >= 2 distinct classes, each with non-empty label words; got {pairs}")
        object.__setattr__(self, "words", pairs)

    @property
    def classes(self) -> Tuple[Any, ...]:
        return tuple(c for c, _ in self.words)

    def word(self, label: Any) -> str:
        """Label words of class `label` (UserError if unknown)."""
        for cls, words in self.words:
            if cls == label:
                return words
        raise UserError(f"label {label!r} is not a verbalizer class; classes are {list(self.classes)}")

    def index(self, label: Any) -> int:
        """Position of class `label` in `classes`."""
        self.word(label)
        return self.classes.index(label)


def prompted_examples(examples: Sequence[Example], template: Template, verbalizer: Verbalizer,
                      label_key: str = "label") -> List[Dict[str, str]]:
    """{'inputs', 'targets'} text for prompted training: the prompt and the true class's target text."""
    return [{"inputs": template.format_inputs(ex), "targets": template.format_targets(verbalizer.word(ex[label_key]))}
            for ex in examples]


def rank_classification_examples(examples: Sequence[Example], template: Template, verbalizer: Verbalizer,
                                 label_key: str = "label") -> List[Dict[str, Any]]:
    """One example per (input, class): inputs, targets (that class's text), idx (input position), label, is_correct."""
    out = []
    for idx, ex in enumerate(examples):
        inputs, gold = template.format_inputs(ex), verbalizer.index(ex[label_key])
        for label, (_, words) in enumerate(verbalizer.words):
            out.append({"inputs": inputs, "targets": template.format_targets(words), "idx": idx, "label": label,
                        "is_correct": int(label == gold)})
    return out


def sample_demonstrations(train_examples: Sequence[Example], template: Template, verbalizer: Verbalizer, k: int,
                          rng: random.Random, label_key: str = "label", exclude: Optional[Example] = None,
                          separator: str = " ") -> str:
    """k training examples per class (never `exclude`), each filled in by the template, shuffled and joined."""
    demos = []
    for cls, words in verbalizer.words:
        pool = [ex for ex in train_examples if ex[label_key] == cls and ex != exclude]
        if len(pool) < k:
            raise UserError(f"demonstrations: class {cls!r} has {len(pool)} training examples, fewer than k={k}")
        demos += [template.filled(ex, words) for ex in rng.sample(pool, k)]
    rng.shuffle(demos)
    return separator.join(demos)


def add_demonstrations(examples: Sequence[Example], train_examples: Sequence[Example], template: Template,
                       verbalizer: Verbalizer, k: int = 1, seed: int = 0, label_key: str = "label",
                       separator: str = " ") -> Tuple[List[Dict[str, Any]], Template]:
    """(examples with a 'demonstrations' field, the template with " {demonstrations}" after its inputs: the
    query's prompt first, then the demonstrations, as LM-BFF concatenates them (sec. 6), so a row that is too long
    loses demonstrations before the query's mask); example i draws its demonstrations with
    random.Random(f"{seed}/{i}"), so the result does not depend on batching or hosts."""
    out = []
    for i, ex in enumerate(examples):
        rng = random.Random(f"{seed}/{i}")
        demos = sample_demonstrations(train_examples, template, verbalizer, k, rng, label_key, ex, separator)
        out.append({**ex, "demonstrations": demos})
    return out, dataclasses.replace(template, inputs=template.inputs + separator + "{demonstrations}")


def rank_predictions(idx: Sequence[int], label: Sequence[int], scores: Sequence[float],
                     lengths: Optional[Sequence[int]] = None) -> Dict[int, int]:
    """{idx: label with the highest score} (scores divided by lengths when given; ties go to the first label)."""
    best: Dict[int, Tuple[float, int]] = {}
    for i, (group, cls, score) in enumerate(zip(idx, label, scores)):
        value = float(score) / max(int(lengths[i]), 1) if lengths is not None else float(score)
        if int(group) not in best or value > best[int(group)][0]:
            best[int(group)] = (value, int(cls))
    return {group: cls for group, (_, cls) in best.items()}


def _accuracy_and_f1(gold: Mapping[int, int], predicted: Mapping[int, int], num_classes: int) -> Dict[str, float]:
    keys = sorted(gold)
    correct = [gold[k] == predicted[k] for k in keys]
    f1s = []
    for cls in range(num_classes):
        tp = sum(gold[k] == cls and predicted[k] == cls for k in keys)
        fp = sum(gold[k] != cls and predicted[k] == cls for k in keys)
        fn = sum(gold[k] == cls and predicted[k] != cls for k in keys)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": 100.0 * float(np.mean(correct)), "macro_f1": 100.0 * float(np.mean(f1s))}


def rank_classification_postprocessor(output: Any, example: Optional[Mapping] = None, is_target: bool = False):
    """Targets become (idx, label, is_correct, number of target tokens); model outputs pass through."""
    if not is_target:
        return output
    return (int(example["idx"]), int(example["label"]), int(example["is_correct"]),
            int(np.count_nonzero(example["targets"])))


def rank_classification_metric(num_classes: int, length_normalize: bool = False) -> Callable:
    """seqio score metric over rank_classification_postprocessor targets: accuracy and macro-F1 (percent)."""

    def rank_classification(targets: Sequence[Tuple[int, int, int, int]], scores: Sequence[float]):
        idx, label, correct, lengths = zip(*targets)
        predicted = rank_predictions(idx, label, scores, lengths if length_normalize else None)
        gold = {int(i): int(c) for i, c, ok in zip(idx, label, correct) if ok}
        return _accuracy_and_f1(gold, predicted, num_classes)

    return rank_classification


@seqio.map_over_dataset
def prepend_task_index(x: Mapping[str, tf.Tensor], task_index: int) -> Dict[str, tf.Tensor]:
    """Puts the raw id `task_index` before the tokenized inputs (multi-task prompt tuning reads it; run after
    tokenize and before append_eos_after_trim)."""
    return {**x, "inputs": tf.concat([tf.constant([task_index], x["inputs"].dtype), x["inputs"]], axis=0)}


def in_memory_source(rows_by_split: Mapping[str, Sequence[Mapping[str, Any]]]) -> seqio.FunctionDataSource:
    """In-memory seqio source: split -> list of flat dicts (strings, ints, or equal-length lists of them)."""
    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed
        rows = rows_by_split[split]
        return tf.data.Dataset.from_tensor_slices({k: [row[k] for row in rows] for k in rows[0]})

    empty = [s for s, rows in rows_by_split.items() if not rows]
    if empty or not rows_by_split:
        raise UserError(f"prompted task: split(s) {empty or '(none)'} have no examples")
    return seqio.FunctionDataSource(dataset_fn, splits=tuple(rows_by_split),
                                    num_input_examples={s: len(r) for s, r in rows_by_split.items()})


def _unbatch(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.unbatch()


def register_prompted_task(name: str, examples_by_split: Mapping[str, Sequence[Example]], template: Template,
                           verbalizer: Verbalizer, label_key: str = "label", task_index: Optional[int] = None,
                           vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A generative task (prompt -> true class's target text, accuracy); task_index prepends a prompt-tuning task id."""
    rows = {split: prompted_examples(exs, template, verbalizer, label_key) for split, exs in examples_by_split.items()}
    preprocessors = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()]
    if task_index is not None:
        preprocessors.append(functools.partial(prepend_task_index, task_index=task_index))
    return add_task(name, source=in_memory_source(rows), output_features=vocab_lib.output_features(vocabulary),
                    preprocessors=preprocessors + [seqio.preprocessors.append_eos_after_trim],
                    metric_fns=[metrics_lib.accuracy])


def register_rank_classification_task(name: str, examples_by_split: Mapping[str, Sequence[Example]],
                                      template: Template, verbalizer: Verbalizer, label_key: str = "label",
                                      length_normalize: bool = False, task_index: Optional[int] = None,
                                      vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A score-based eval task: one example per (input, class), metric = rank-classification accuracy/macro-F1."""
    num_classes = len(verbalizer.classes)
    rows = {}
    for split, exs in examples_by_split.items():
        flat = rank_classification_examples(exs, template, verbalizer, label_key)
        rows[split] = [{k: [r[k] for r in flat[i:i + num_classes]] for k in flat[0]}
                       for i in range(0, len(flat), num_classes)]  # one row per input: its candidates stay together
    preprocessors = [_unbatch, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()]
    if task_index is not None:
        preprocessors.append(functools.partial(prepend_task_index, task_index=task_index))
    return add_task(name, source=in_memory_source(rows), output_features=vocab_lib.output_features(vocabulary),
                    preprocessors=preprocessors + [seqio.preprocessors.append_eos_after_trim],
                    postprocess_fn=rank_classification_postprocessor,
                    metric_fns=[rank_classification_metric(num_classes, length_normalize)])


@dataclasses.dataclass(frozen=True)
class PromptedDataset:
    """A classification dataset with its prompt templates and verbalizer, for multi-template mixtures."""
    examples_by_split: Mapping[str, Sequence[Example]]
    templates: Sequence[Template]
    verbalizer: Verbalizer
    label_key: str = "label"


def register_multi_template_mixture(name: str, datasets: Mapping[str, PromptedDataset],
                                    held_out: Sequence[str] = (), train_split: str = "train",
                                    eval_split: str = "validation") -> Dict[str, List[str]]:
    """Prompted training on every template of every dataset except `held_out`, and zero-shot rank-classification
    eval tasks for each template of the held-out datasets.

    Registers tasks `{name}_{dataset}_t{i}` (training, mixed equally in the mixture `name`) and
    `{name}_{dataset}_t{i}_rank` (eval); returns {'mixture': [name], 'train': [...], 'held_out': [...]}.
    """
    unknown = sorted(set(held_out) - set(datasets))
    if unknown:
        raise UserError(f"held_out dataset(s) {unknown} are not among {sorted(datasets)}")
    train, evaluation = [], []
    for key, data in datasets.items():
        for i, template in enumerate(data.templates):
            task = f"{name}_{key}_t{i}"
            if key in held_out:
                register_rank_classification_task(f"{task}_rank", {eval_split: data.examples_by_split[eval_split]},
                                                  template, data.verbalizer, data.label_key)
                evaluation.append(f"{task}_rank")
            else:
                register_prompted_task(task, {train_split: data.examples_by_split[train_split]}, template,
                                       data.verbalizer, data.label_key)
                train.append(task)
    if not train:
        raise UserError(f"multi-template mixture {name!r} has no training dataset left after holding out {held_out}")
    register_mixture(name, train, default_rate=1.0)
    return {"mixture": [name], "train": train, "held_out": evaluation}


def _encode(vocabulary: Optional[seqio.Vocabulary], text: str) -> Tuple[int, ...]:
    ids = tuple(int(i) for i in (vocabulary or vocab_lib.get_default_vocabulary()).encode(text))
    if not ids:
        raise UserError(f"text {text!r} encodes to no tokens")
    return ids


def label_token_ids(words: Sequence[str], vocabulary: Optional[seqio.Vocabulary] = None) -> Tuple[Tuple[int, ...], ...]:
    """Token ids of each label text (no EOS): for PromptTuningConfig(init='labels') and LinearProbeConfig."""
    return tuple(_encode(vocabulary, w) for w in words)


def text_token_ids(text: str, vocabulary: Optional[seqio.Vocabulary] = None) -> Tuple[int, ...]:
    """Token ids of `text` (no EOS): for PromptTuningConfig(init='text')."""
    return _encode(vocabulary, text)


def truncate(ids: Sequence[int], length: int, vocabulary: Optional[seqio.Vocabulary], what: str = "text") -> List[int]:
    """`ids` (a text's token ids without EOS) cut to length - 1, then EOS: T5's truncation of a row of `length`.

    UserError naming `what` when the cut would drop a sentinel <extra_id_N> (ids at or above vocab_size -
    extra_ids): a cloze pattern's mask, without which the pattern's class scores mean nothing (PET and LM-BFF
    shorten the text instead; here the row must be made to fit: a longer length or a shorter text)."""
    ids = list(ids)
    if len(ids) > length - 1:
        vocabulary = vocabulary or vocab_lib.get_default_vocabulary()
        first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
        dropped = [i for i in ids[length - 1:] if i >= first_sentinel]
        if vocabulary.extra_ids and dropped:
            raise UserError(f"{what} of {len(ids)} tokens does not fit a row of {length} (EOS included) without "
                            f"losing its mask {vocabulary.decode([dropped[0]])}: raise the inputs length or shorten "
                            f"the text (it starts {vocabulary.decode(ids[:12])!r})")
    return ids[:length - 1] + [vocab_lib.EOS_ID]


def _pad(rows: Sequence[Sequence[int]], length: int, vocabulary: Optional[seqio.Vocabulary], what: str) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        row = truncate(row, length, vocabulary, what)
        out[i, :len(row)] = row
    return out


def rank_classify(model: Any, params: Any, inputs: Sequence[str], label_texts: Sequence[str],
                  feature_lengths: Mapping[str, int], vocabulary: Optional[seqio.Vocabulary] = None,
                  batch_size: int = 32, length_normalize: bool = False,
                  score_fn: Optional[Callable] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(predicted class index [n], log-likelihood [n, classes]) of each input text against every label text
    (the targets, e.g. Template.format_targets(words)), scored with model.score_batch in fixed-size batches."""
    encode = functools.partial(_encode, vocabulary)
    pairs = [(encode(x), encode(t)) for x in inputs for t in label_texts]
    score = score_fn or jax.jit(model.score_batch)
    scores, lengths = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        targets = _pad([t for _, t in chunk], feature_lengths["targets"], vocabulary, "label text")
        batch = {"encoder_input_tokens": _pad([x for x, _ in chunk], feature_lengths["inputs"], vocabulary, "input"),
                 "decoder_target_tokens": targets,
                 "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
                 "decoder_loss_weights": (targets > 0).astype(np.float32)}
        scores.extend(np.asarray(score(params, batch), np.float64)[:real].tolist())
        lengths.extend((targets[:real] > 0).sum(axis=1).tolist())
    scores_matrix = np.asarray(scores).reshape(len(inputs), len(label_texts))
    ranked = scores_matrix / np.asarray(lengths).reshape(scores_matrix.shape) if length_normalize else scores_matrix
    return np.argmax(ranked, axis=1), scores_matrix
