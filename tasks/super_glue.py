"""SuperGLUE tasks `super_glue_<config>_v102` (+ T5's WSC/DPR 'simple' tasks), formatted and scored as in T5."""
import functools
from typing import Callable, Dict, List, Optional, Tuple

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import metrics, postprocessors, preprocessors, vocab

TFDS_VERSION = "1.0.2"
DPR_TFDS_NAME = "definite_pronoun_resolution:1.1.0"
CONFIG_NAMES = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb", "axg")
WSC_TRAIN_TASK = "super_glue_wsc_v102_simple_train"
WSC_EVAL_TASK = "super_glue_wsc_v102_simple_eval"
DPR_TASK = "dpr_v001_simple"
_DEFAULT_SPLITS = ("train", "validation", "test")
SPLITS: Dict[str, Tuple[str, ...]] = {"axb": ("test",), "axg": ("test",)}
FEATURE_ORDER: Dict[str, Tuple[str, ...]] = {
    "multirc": ("question", "answer", "paragraph"),
    "wic": ("sentence1", "sentence2", "word"),  # the word's start/end offsets are not used
}
METRICS: Dict[str, List[Callable]] = {
    "boolq": [metrics.accuracy],
    "cb": [metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy],
    "copa": [metrics.accuracy],
    "multirc": [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match],
    "record": [metrics.record],
    "rte": [metrics.accuracy],
    "wic": [metrics.accuracy],
    "axb": [],  # test split only
    "axg": [],  # test split only
}
# Two wsc.fixed texts whose span2_index does not point at the pronoun; T5 blanks these by hand.
_WSC_BLANKED_BY_HAND = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite loud. '
    '"Good for him," he said. ':
        'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite loud. '
        '"Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in an iron '
    'safe . Some day they might want to use it , but really for now, what more could they wish for?':
        'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in an iron '
        'safe . Some day they might want to use X , but really for now, what more could they wish for?',
}


def task_name(config: str) -> str:
    """T5's registry name for a SuperGLUE config, e.g. 'boolq' -> 'super_glue_boolq_v102'."""
    return f"super_glue_{config}_v102"


def label_names(config: str) -> Tuple[str, ...]:
    """Class names in TFDS label order, e.g. cb -> ('entailment', 'contradiction', 'neutral')."""
    return tuple(tfds.builder_cls("super_glue").builder_configs[config].label_classes)


def record_passage(passage: tf.Tensor) -> tf.Tensor:
    """ReCoRD passage with its '@highlight' separators turned into sentence breaks."""
    passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD -> one example per gold answer ('<unk>' if none), inputs `record query: Q entities: e1, e2 passage: P`.

    Every copy keeps all answers in 'answers' plus idx/passage and idx/query so eval can deduplicate.
    """
    def expand(x):
        inputs = tf.strings.join([
            "record query:", x["query"], "entities:", tf.strings.reduce_join(x["entities"], separator=", "),
            "passage:", record_passage(x["passage"])], separator=" ")
        answers = x["answers"]
        copies = tf.maximum(tf.size(answers), 1)
        return {
            "idx/passage": tf.fill([copies], x["idx"]["passage"]),
            "idx/query": tf.fill([copies], x["idx"]["query"]),
            "inputs": tf.fill([copies], inputs),
            "targets": tf.concat([answers, [preprocessors.UNK_LABEL]], axis=0)[:copies],
            "answers": tf.tile(answers[tf.newaxis], [copies, 1]),
        }

    return dataset.map(expand, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def wsc_blanked_text(x) -> tf.Tensor:
    """WSC text with the pronoun at span2_index (space-split words) replaced by 'X'."""
    words = tf.strings.split(x["text"], sep=" ")
    index = tf.cast(x["span2_index"], tf.int32)
    blanked = tf.strings.join([tf.strings.reduce_join(words[:index], separator=" "), "X",
                               tf.strings.reduce_join(words[index + 1:], separator=" ")], separator=" ")
    for text, fixed in _WSC_BLANKED_BY_HAND.items():
        blanked = tf.where(tf.equal(x["text"], text), tf.constant(fixed), blanked)
    return blanked


def _wsc_check(x) -> Tuple[tf.Tensor, list]:
    """Valid if the space-split word at span2_index is span2_text (as T5 asserts), or the text is blanked by hand."""
    words = tf.strings.split(x["text"], sep=" ")
    count = tf.size(words, out_type=tf.int64)
    index = tf.cast(x["span2_index"], tf.int64)
    inside = (index >= 0) & (index < count)
    word = tf.gather(tf.concat([words, [""]], axis=0), tf.where(inside, index, count))
    by_hand = tf.reduce_any(tf.equal(x["text"], list(_WSC_BLANKED_BY_HAND)))
    ok = by_hand | (inside & tf.equal(word, x["span2_text"]))
    return ok, [preprocessors.idx_text(x), index, count, word, x["span2_text"]]


def _wsc_problem(idx, index, count, word, span2_text) -> str:
    if not 0 <= index < count:
        return f"idx {idx}: span2_index {index} is outside the text's {count} words (0..{count - 1})"
    return f"idx {idx}: span2_index {index} points at {word!r}, not at span2_text {span2_text!r}"


def wsc_simple(dataset: tf.data.Dataset, label: str = "wsc:", correct_referent_only: bool = False) -> tf.data.Dataset:
    """WSC as referent generation: `wsc: ... *pronoun* ...` -> the candidate span1 text (label/idx kept for eval).

    With correct_referent_only (training) only examples whose candidate is the true referent are kept. An
    example whose span2_index does not point at span2_text is invalid (`preprocessors.validate`).
    """
    if correct_referent_only:
        dataset = dataset.filter(lambda x: tf.cast(x["label"], tf.bool))
    dataset = preprocessors.validate(dataset, "wsc", _wsc_check, _wsc_problem)

    def fn(x):
        marked = tf.strings.regex_replace(wsc_blanked_text(x), " X ", " *" + x["span2_text"] + "* ")
        return {
            "inputs": tf.strings.join([label, marked], separator=" "),
            "targets": tf.reshape(x["span1_text"], []),
            "label": x["label"],
            "idx": x["idx"],
        }

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _dpr_marked(x) -> tf.Tensor:
    """The sentence with the first ' pronoun' followed by a space, '.' or ',' starred."""
    return tf.strings.regex_replace(
        x["sentence"], tf.strings.join([" (", x["pronoun"], r")( |\.|,)"]), r" *\1*\2", replace_global=False)


def _dpr_check(x) -> Tuple[tf.Tensor, list]:
    """Valid if the pronoun occurs as a word (so it gets starred) and the label indexes a candidate."""
    label = tf.cast(x["label"], tf.int64)
    candidates = tf.size(x["candidates"], out_type=tf.int64)
    found = tf.not_equal(_dpr_marked(x), x["sentence"])
    return found & (label >= 0) & (label < candidates), [x["sentence"], x["pronoun"], label, candidates, found]


def _dpr_problem(sentence, pronoun, label, candidates, found) -> str:
    if not found:
        return f"{sentence!r}: pronoun {pronoun!r} does not occur as a word (followed by a space, '.' or ',')"
    return f"{sentence!r}: label {label} is not a candidate index 0..{candidates - 1}"


def dpr_simple(dataset: tf.data.Dataset, label: str = "wsc:") -> tf.data.Dataset:
    """Definite Pronoun Resolution: `wsc: ... *pronoun* ...` (first occurrence) -> the correct candidate.

    DPR examples have no idx, so an invalid one (`preprocessors.validate`) is named by its sentence."""
    def fn(x):
        return {
            "inputs": tf.strings.join([label, _dpr_marked(x)], separator=" "),
            "targets": tf.gather(x["candidates"], x["label"]),
        }

    dataset = preprocessors.validate(dataset, "dpr", _dpr_check, _dpr_problem)
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def text_preprocessors(config: str) -> List[Callable]:
    """Dataset -> text examples for one SuperGLUE config (axb is renamed to premise/hypothesis and read as RTE)."""
    if config == "record":
        return [record]
    steps = []
    if config == "axb":
        steps.append(functools.partial(seqio.preprocessors.rekey, key_map={
            "premise": "sentence1", "hypothesis": "sentence2", "label": "label", "idx": "idx"}))
    benchmark = "rte" if config in ("axb", "axg") else config
    steps.append(functools.partial(preprocessors.glue, benchmark_name=benchmark, label_names=label_names(config),
                                   feature_names=FEATURE_ORDER.get(config)))
    return steps


def postprocess_fn(config: str) -> Callable:
    """Decoded text -> metric value (class id, MultiRC/ReCoRD dicts with their eval groups)."""
    if config == "multirc":
        return postprocessors.multirc
    if config == "record":
        return postprocessors.record
    return functools.partial(postprocessors.string_label_to_class_id, label_classes=label_names(config))


def _tail() -> list:
    return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim]


def register(output_features: Optional[dict] = None) -> List[str]:
    """Register the SuperGLUE, WSC-simple and DPR-simple tasks with seqio; returns the task names."""
    output_features = output_features or vocab.output_features()
    names = []
    for config in CONFIG_NAMES:
        names.append(task_name(config))
        seqio.TaskRegistry.add(
            names[-1],
            source=seqio.TfdsDataSource(tfds_name=f"super_glue/{config}:{TFDS_VERSION}",
                                        splits=SPLITS.get(config, _DEFAULT_SPLITS)),
            preprocessors=text_preprocessors(config) + _tail(),
            output_features=output_features,
            postprocess_fn=postprocess_fn(config),
            metric_fns=METRICS[config],
        )
    wsc_source = f"super_glue/wsc.fixed:{TFDS_VERSION}"
    seqio.TaskRegistry.add(
        WSC_TRAIN_TASK,
        source=seqio.TfdsDataSource(tfds_name=wsc_source, splits=["train"]),
        preprocessors=[functools.partial(wsc_simple, correct_referent_only=True)] + _tail(),
        output_features=output_features,
        metric_fns=[],
    )
    seqio.TaskRegistry.add(
        WSC_EVAL_TASK,
        source=seqio.TfdsDataSource(tfds_name=wsc_source, splits=["validation", "test"]),
        preprocessors=[functools.partial(wsc_simple, correct_referent_only=False)] + _tail(),
        output_features=output_features,
        postprocess_fn=postprocessors.wsc_simple,
        metric_fns=[metrics.accuracy],
    )
    seqio.TaskRegistry.add(
        DPR_TASK,
        source=seqio.TfdsDataSource(tfds_name=DPR_TFDS_NAME, splits=["train", "test"]),
        preprocessors=[dpr_simple] + _tail(),
        output_features=output_features,
        metric_fns=[metrics.accuracy],
    )
    return names + [WSC_TRAIN_TASK, WSC_EVAL_TASK, DPR_TASK]


TASK_NAMES = tuple(register())
