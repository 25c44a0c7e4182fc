"""GLUE tasks `glue_<config>_v002`, formatted, postprocessed and scored as in the T5 paper / `t5` library."""
import functools
from typing import Callable, Dict, List, Optional, Tuple

import seqio
import tensorflow_datasets as tfds

from tasks import metrics, postprocessors, preprocessors, vocab

TFDS_VERSION = "2.0.0"
CONFIG_NAMES = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte",
                "wnli", "ax")
_DEFAULT_SPLITS = ("train", "validation", "test")
SPLITS: Dict[str, Tuple[str, ...]] = {
    "mnli": ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
    "mnli_matched": ("validation", "test"),
    "mnli_mismatched": ("validation", "test"),
    "ax": ("test",),
}
METRICS: Dict[str, List[Callable]] = {
    "cola": [metrics.matthews_corrcoef],
    "sst2": [metrics.accuracy],
    "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
    "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
    "stsb": [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    "mnli": [metrics.accuracy],
    "mnli_matched": [metrics.accuracy],
    "mnli_mismatched": [metrics.accuracy],
    "qnli": [metrics.accuracy],
    "rte": [metrics.accuracy],
    "wnli": [metrics.accuracy],
    "ax": [],  # test split only: no labels to score against
}


def task_name(config: str) -> str:
    """T5's registry name for a GLUE config, e.g. 'mnli' -> 'glue_mnli_v002'."""
    return f"glue_{config}_v002"


def label_names(config: str) -> Optional[Tuple[str, ...]]:
    """Class names in TFDS label order (None for the regression task stsb)."""
    classes = tfds.builder_cls("glue").builder_configs[config].label_classes
    return tuple(classes) if classes else None


def benchmark_name(config: str) -> str:
    """Input prefix: the MNLI variants and the AX diagnostic are phrased as 'mnli', the rest use their own name."""
    return "mnli" if "mnli" in config or config == "ax" else config


def text_preprocessor(config: str) -> Callable:
    """Dataset -> {'inputs', 'targets', 'idx'} text examples for one GLUE config."""
    if config == "stsb":
        return preprocessors.stsb
    return functools.partial(preprocessors.glue, benchmark_name=benchmark_name(config), label_names=label_names(config))


def postprocess_fn(config: str) -> Callable:
    """Decoded text -> metric value: float for stsb, else the class id (-1 when the text is not a label name)."""
    if config == "stsb":
        return postprocessors.string_to_float
    return functools.partial(postprocessors.string_label_to_class_id, label_classes=label_names(config))


def register(output_features: Optional[dict] = None) -> List[str]:
    """Register every GLUE task with seqio (default: the lazy T5 vocabulary); returns the task names."""
    output_features = output_features or vocab.output_features()
    names = []
    for config in CONFIG_NAMES:
        name = task_name(config)
        seqio.TaskRegistry.add(
            name,
            source=seqio.TfdsDataSource(tfds_name=f"glue/{config}:{TFDS_VERSION}",
                                        splits=SPLITS.get(config, _DEFAULT_SPLITS)),
            preprocessors=[
                text_preprocessor(config),
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features,
            postprocess_fn=postprocess_fn(config),
            metric_fns=METRICS[config],
        )
        names.append(name)
    return names


TASK_NAMES = tuple(register())
