"""Test-only oracle: the `t5` library (0.9.4) side by side with this project, on the same rows and vocabulary.

Both libraries register into seqio's global TaskRegistry/MixtureRegistry under the same names. `registries()`
takes this project's entries out, imports t5 (which registers its own), keeps t5's objects and puts this
project's entries back exactly as they were, so the rest of the test session never sees t5's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Rows every task reads besides tfds's random mock rows: empty fields, non-ASCII, punctuation only, very long.
EDGE_STRINGS = (
    "",
    "é – naïve Zoë, 東京 “quoted” straße ½",
    "?!.,;:—…()",
    "_",
    "Tom's dog (a big one) said: \"it's fine\", didn't it? Yes!",
    " ".join(["word"] * 300) + " end.",
)
MOCK_EXAMPLES = 2


@dataclasses.dataclass(frozen=True)
class Registries:
    """Task and mixture objects of each side, by name."""
    tasks: Dict[str, Any]
    mixtures: Dict[str, Any]
    t5_tasks: Dict[str, Any]
    t5_mixtures: Dict[str, Any]

    @property
    def shared_tasks(self) -> List[str]:
        return sorted(set(self.tasks) & set(self.t5_tasks))

    @property
    def shared_mixtures(self) -> List[str]:
        return sorted(set(self.mixtures) & set(self.t5_mixtures))


def _entries(registry) -> Dict[str, Any]:
    return {name: registry.get(name) for name in registry.names()}


def _replace_entries(registry, entries: Mapping[str, Any]) -> None:
    for name in list(registry.names()):
        registry.remove(name)
    for name, provider in entries.items():
        registry.add_provider(name, provider)


@functools.lru_cache(maxsize=None)
def registries() -> Registries:
    """This project's and t5's registered tasks and mixtures; seqio's registries are left holding only ours."""
    import seqio
    import tasks  # noqa: F401  registers this project's tasks and mixtures

    assert "t5.data.tasks" not in sys.modules, "t5 must be imported only through t5_oracle.registries()"
    ours_tasks, ours_mixtures = _entries(seqio.TaskRegistry), _entries(seqio.MixtureRegistry)
    try:
        _replace_entries(seqio.MixtureRegistry, {})
        _replace_entries(seqio.TaskRegistry, {})
        import t5.data.mixtures  # noqa: F401  registers t5's tasks and mixtures
        t5_tasks, t5_mixtures = _entries(seqio.TaskRegistry), _entries(seqio.MixtureRegistry)
    finally:
        _replace_entries(seqio.MixtureRegistry, {})
        _replace_entries(seqio.TaskRegistry, ours_tasks)
        _replace_entries(seqio.MixtureRegistry, ours_mixtures)
    return Registries(ours_tasks, ours_mixtures, t5_tasks, t5_mixtures)


def point_vocabularies_at(tasks: Sequence[Any], path: str, extra_ids: int = 100) -> None:
    """Make t5's SentencePiece vocabularies (hard-coded gs:// files) read the local model `path`.

    They are retargeted in place, not replaced, because t5's `*_1_sentinel` postprocessors hold the original
    vocabulary objects. t5's prefix-LM objective vocabulary (a model with the 100 sentinels built in, 0 extra
    ids) gets `extra_ids` like the others, which gives the same ids.
    """
    import seqio

    for task in tasks:
        for feature in task.output_features.values():
            vocabulary = feature.vocabulary
            if type(vocabulary) is seqio.SentencePieceVocabulary:
                vocabulary._sentencepiece_model_file = path
                vocabulary._extra_ids = extra_ids
                vocabulary._model = None


# ----------------------------------------------------------------------------------------------- rows


def _fill(spec, row: int, leaf: List[int]) -> Any:
    """A value for a tfds tensor spec: edge strings (row-dependent, leaf-dependent for row >= len), 0/1 ints."""
    if isinstance(spec, dict):
        return {key: _fill(value, row, leaf) for key, value in spec.items()}
    leaf[0] += 1
    index = row if row < len(EDGE_STRINGS) else row + leaf[0]
    if spec.dtype.name == "string":
        if spec.shape.rank == 0:
            return EDGE_STRINGS[index % len(EDGE_STRINGS)]
        return [EDGE_STRINGS[(index + k) % len(EDGE_STRINGS)] for k in range(2)]
    value = (row + leaf[0]) % 2
    if spec.shape.rank == 0:
        return float(value) + 0.5 if spec.dtype.is_floating else value
    return [value, 1 - value]


# Rows that satisfy a preprocessor's assumptions (a pronoun the sentence contains, an answer inside the
# context, ReCoRD highlights), merged over a generic row; keyed by TFDS builder name[/config].
WELL_FORMED_ROWS: Dict[str, List[dict]] = {
    "definite_pronoun_resolution": [
        {"sentence": "Tom asked Bob if he could lend some money.", "pronoun": "he",
         "candidates": ["Tom", "Bob"], "label": 0},
        {"sentence": "Zoë told Émile that she, not he, was late.", "pronoun": "she",
         "candidates": ["Zoë", "Émile"], "label": 0},
        {"sentence": "The bird ate the cat food because it was hungry", "pronoun": "it",
         "candidates": ["The bird", "the cat"], "label": 1},
    ],
    "glue/wnli": [
        {"sentence1": "The cat sat on the mat because it was tired.", "sentence2": "The cat was tired.", "label": 1},
        {"sentence1": "Zoë told Anne that she was late.", "sentence2": "Anne was late.", "label": 0},
        {"sentence1": "They said: the bird, it flew!", "sentence2": "The bird flew!", "label": 1},
    ],
    "super_glue/wsc.fixed": [
        {"text": "The trophy does not fit in the suitcase because it is too big.", "span1_text": "The trophy",
         "span1_index": 0, "span2_text": "it", "span2_index": 9, "label": 1},
        {"text": "Zoë thanked Émile because he had helped her.", "span1_text": "Émile", "span1_index": 2,
         "span2_text": "he", "span2_index": 4, "label": 1},
        {"text": "Bob's dog chased the cat until it was tired.", "span1_text": "the cat", "span1_index": 3,
         "span2_text": "it", "span2_index": 6, "label": 0},
    ],
    "squad": [
        {"context": "Zoë lives in Paris (France), since 2019.", "question": "Where does Zoë live?",
         "answers": {"text": ["Paris", "Paris (France)"], "answer_start": [13, 13]}},
        {"context": "The answer is at the very end: forty-two", "question": "What is it?",
         "answers": {"text": ["forty-two"], "answer_start": [31]}},
    ],
    "super_glue/record": [
        {"passage": "Zoë wins the prize.\n@highlight\nShe is happy\n@highlight\nParis cheers!",
         "query": "@placeholder won the prize", "entities": ["Zoë", "Paris"], "answers": ["Zoë", "Zoë"]},
    ],
}


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: _merge(base[key], override[key]) if key in override else base[key] for key in base}
    return override


def edge_rows(tensor_spec, builder: str = "") -> List[dict]:
    """One row per edge string (every text field that string), one mixing them across fields, and the builder's

    WELL_FORMED_ROWS (`builder`: TFDS name, or name/config).
    """
    rows = [_fill(tensor_spec, row, [0]) for row in range(len(EDGE_STRINGS) + 1)]
    well_formed = WELL_FORMED_ROWS.get(builder, WELL_FORMED_ROWS.get(builder.split("/")[0], []))
    return rows + [_merge(rows[0], row) for row in well_formed]


def builder_key(builder) -> str:
    """'glue/wnli' for a builder with a config, else its name."""
    return f"{builder.name}/{builder.builder_config.name}" if builder.builder_config else builder.name


@contextlib.contextmanager
def mock_rows(random_rows: bool = True, texts: Optional[Sequence[str]] = None,
              well_formed_only: bool = False) -> Iterator[None]:
    """tfds.testing.mock_data: MOCK_EXAMPLES random rows per split (if `random_rows`), then the edge_rows,

    or with `texts` one row per text (every text field that text) instead of the edge rows, or with
    `well_formed_only` only the builder's WELL_FORMED_ROWS.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_builder

    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        random_as_dataset = dataset_builder.FileReaderBuilder._as_dataset

        def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
            spec = self.info.features.get_tensor_spec()
            if texts is None:
                rows = edge_rows(spec, builder_key(self))
                rows = rows[len(EDGE_STRINGS) + 1:] if well_formed_only else rows
            else:
                rows = [_merge(_fill(spec, 0, [0]), {key: text for key in spec}) for text in texts]
            ds = tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)
            if random_rows:
                ds = random_as_dataset(self, split, decoders=decoders, read_config=read_config,
                                       shuffle_files=shuffle_files, **kwargs).concatenate(ds)
            return ds

        with tfds.testing.mock_data(as_dataset_fn=as_dataset):
            yield


def read(task, split: str, sequence_length: Mapping[str, int], seed: Optional[int] = 7, precache: bool = False,
         skip_errors: bool = False):
    """The task's examples as numpy dicts (up to the cache point with `precache`; without the examples that

    raise with `skip_errors`), or the exception it raised.
    """
    try:
        if precache:
            ds = task.preprocess_precache(task.source.get_dataset(split=split, shuffle=False), seed=seed)
        else:
            ds = task.get_dataset(sequence_length, split=split, shuffle=False, seed=seed, try_in_mem_cache=False,
                                  use_cached=False)
        return list((ds.ignore_errors() if skip_errors else ds).as_numpy_iterator())
    except Exception as e:  # noqa: BLE001  compared with the other side's outcome
        return e


# ------------------------------------------------------------------------------------------ compare


def same(a: Any, b: Any, rel: float = 1e-6) -> bool:
    """Deep equality of example values / metrics: NaN equals NaN, floats to `rel`, bytes == str, arrays elementwise."""
    if isinstance(a, bytes):
        a = a.decode("utf-8", "replace")
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        return all(same(x, y, rel) for x, y in zip(a.ravel().tolist(), b.ravel().tolist()))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return bool(a) == bool(b) and type(a) is type(b)
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
    return type(a) is type(b) and a == b


def example_differences(ours, theirs) -> List[str]:
    """Human-readable differences between two read() results (examples or exceptions)."""
    if isinstance(ours, Exception) or isinstance(theirs, Exception):
        if isinstance(ours, Exception) and isinstance(theirs, Exception):
            return []
        return [f"only one side raised: ours={_short(ours)} t5={_short(theirs)}"]
    if len(ours) != len(theirs):
        return [f"{len(ours)} examples vs t5's {len(theirs)}"]
    out = []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if set(a) != set(b):
            out.append(f"example {i}: keys {sorted(a)} vs t5's {sorted(b)}")
            continue
        out += [f"example {i} {key}: {_short(a[key])} vs t5's {_short(b[key])}"
                for key in a if not same(a[key], b[key])]
    return out


def _short(value: Any, n: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# ---------------------------------------------------------------------------- postprocess, metrics

UNPARSEABLE = ("", "garbage é", "nan", "inf", "-1", "1e400", "True", "<unk>", "  entailment ", "start: 3 end: x")


def prediction_sets(examples: Sequence[dict]) -> Dict[str, List[str]]:
    """Predictions to score: gold, shifted by one (wrong but well formed), unparseable, and a mix of the three."""
    gold = [_text(ex["targets_pretokenized"]) for ex in examples]
    shifted = gold[1:] + gold[:1]
    junk = [UNPARSEABLE[i % len(UNPARSEABLE)] for i in range(len(gold))]
    mixed = [(gold, shifted, junk)[i % 3][i] for i in range(len(gold))]
    return {"gold": gold, "shifted": shifted, "unparseable": junk, "mixed": mixed}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def evaluate(task, examples: Sequence[dict], predictions: Sequence[str]) -> Tuple[Any, Any, Any]:
    """(postprocessed targets, predictions, merged metric dict) as seqio's Evaluator computes them (text as str);

    each part is the exception instead if it raised.
    """
    def attempt(fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  compared with the other side's outcome
            return e

    targets = attempt(lambda: [task.postprocess_fn(_text(ex["targets_pretokenized"]), example=ex, is_target=True)
                               for ex in examples])
    preds = attempt(lambda: [task.postprocess_fn(p, example=ex, is_target=False)
                             for p, ex in zip(predictions, examples)])

    def metrics():
        merged = {}
        for fn in task.predict_metric_fns:
            merged.update(fn(targets, preds))
        return merged

    scores = attempt(metrics) if not isinstance(targets, Exception) and not isinstance(preds, Exception) else None
    return targets, preds, scores


def outcome_differences(ours, theirs) -> List[str]:
    """Differences between two evaluate() results, part by part."""
    out = []
    for part, a, b in zip(("targets", "predictions", "metrics"), ours, theirs):
        if isinstance(a, Exception) or isinstance(b, Exception):
            if not (isinstance(a, Exception) and isinstance(b, Exception)):
                out.append(f"{part}: only one side raised: ours={_short(a)} t5={_short(b)}")
        elif not same(a, b):
            out.append(f"{part}: {_short(a, 300)} vs t5's {_short(b, 300)}")
    return out


# ------------------------------------------------------------------------------------------- tasks

# Tasks whose preprocessing after the cache point is random: compared exactly up to it (statistics after).
STOCHASTIC_TASKS = ("c4_v220_span_corruption", "c4_v220_iid_denoising", "c4_v220_prefix_lm",
                    "c4_prefix_lm_objective_encoder_decoder_architecture",
                    "c4_prefix_lm_objective_decoder_architecture")


@dataclasses.dataclass
class TaskComparison:
    """One task read by both sides on the same rows: what was compared and what differed."""
    name: str
    split: str
    examples: int = 0  # examples compared (equal count on both sides)
    raised: bool = False  # some row raised on a side: examples that raise were dropped on both
    differences: List[str] = dataclasses.field(default_factory=list)
    ours: List[dict] = dataclasses.field(default_factory=list)
    theirs: List[dict] = dataclasses.field(default_factory=list)


def split_for(task) -> str:
    """The split to read: the first one the task lists, else 'validation' (preprocessing ignores the split)."""
    explicit = getattr(task.source, "_splits", None)
    return next(iter(explicit)) if explicit else "validation"


def compare_task(ours, theirs, sequence_length: Mapping[str, int], well_formed_only: bool = False) -> TaskComparison:
    """Read `ours` and `theirs` on mock + edge rows (only WELL_FORMED_ROWS with `well_formed_only`) and compare
    every example field.

    If a side raises (a row breaks a preprocessor's assumption), both are read again dropping the examples
    that raise (tf.data `ignore_errors`), so one side failing on a row shows as a different example count.
    """
    split = split_for(ours)
    precache = ours.name in STOCHASTIC_TASKS
    result = TaskComparison(ours.name, split)
    with mock_rows(random_rows=not well_formed_only, well_formed_only=well_formed_only):
        a, b = (read(task, split, sequence_length, precache=precache) for task in (ours, theirs))
        if isinstance(a, Exception) or isinstance(b, Exception):
            result.raised = True
            a, b = (read(task, split, sequence_length, precache=precache, skip_errors=True)
                    for task in (ours, theirs))
    result.differences = example_differences(a, b)
    if not result.differences and not isinstance(a, Exception):
        result.examples, result.ours, result.theirs = len(a), a, b
    return result
