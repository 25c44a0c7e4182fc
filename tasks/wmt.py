"""WMT translation tasks as in T5: 'translate English to German: {en}' -> German, scored with sacrebleu BLEU."""
import functools
from typing import Dict, Tuple

import seqio
import tensorflow as tf

from tasks import metrics, vocab

LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian"}

# task name -> (TFDS name, source language, target language). T5 trained en-de on `wmt_t2t_translate`
# (WMT14 data + newstest2013 dev) and en-fr on WMT15 for the paper; the WMT14 variants are the plain ones.
TASKS: Dict[str, Tuple[str, str, str]] = {
    "wmt14_ende_v003": ("wmt14_translate/de-en:1.0.0", "en", "de"),
    "wmt14_enfr_v003": ("wmt14_translate/fr-en:1.0.0", "en", "fr"),
    "wmt16_enro_v003": ("wmt16_translate/ro-en:1.0.0", "en", "ro"),
    "wmt15_enfr_v003": ("wmt15_translate/fr-en:1.0.0", "en", "fr"),
    "wmt_t2t_ende_v003": ("wmt_t2t_translate/de-en:1.0.0", "en", "de"),
    "wmt19_ende_v003": ("wmt19_translate/de-en:1.0.0", "en", "de"),
}


def translation_prefix(source_language: str, target_language: str) -> str:
    """'translate English to German: ' for ('en', 'de')."""
    return f"translate {LANGUAGE_NAMES[source_language]} to {LANGUAGE_NAMES[target_language]}: "


@seqio.map_over_dataset
def translate(x, source_language: str, target_language: str):
    """TFDS translation pair -> {'inputs': prefix + source sentence, 'targets': target sentence}."""
    prefix = translation_prefix(source_language, target_language)
    return {
        "inputs": tf.strings.join([prefix, x[source_language]]),
        "targets": x[target_language],
    }


def register() -> Tuple[str, ...]:
    """Registers every task in TASKS; returns their names."""
    for name, (tfds_name, source_language, target_language) in TASKS.items():
        seqio.TaskRegistry.add(
            name,
            source=seqio.TfdsDataSource(tfds_name=tfds_name),
            preprocessors=[
                functools.partial(translate, source_language=source_language, target_language=target_language),
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=vocab.output_features(),
            metric_fns=[metrics.bleu],
        )
    return tuple(TASKS)


TASK_NAMES = register()
