"""C4 pretraining tasks (span corruption, prefix LM) and a helper to pretrain on any plain-text source."""
from __future__ import annotations

import functools
from typing import Optional, Union

import seqio

from tasks import custom, span_corruption, vocab as vocab_lib
from text2text.errors import UserError

C4_TFDS_NAME = "c4/en:3.1.0"

_OBJECTIVES = {
    "span_corruption": span_corruption.span_corruption,
    "prefix_lm": span_corruption.prefix_lm,
}


def as_data_source(source: Union[str, seqio.DataSource]) -> seqio.DataSource:
    """A seqio.DataSource as is, or a TFDS name ('c4/en:3.1.0', optionally 'tfds:'-prefixed)."""
    if isinstance(source, seqio.DataSource):
        return source
    if isinstance(source, str) and source:
        return seqio.TfdsDataSource(tfds_name=source.removeprefix("tfds:"))
    raise UserError(f"text source must be a seqio.DataSource or a TFDS name like 'tfds:{C4_TFDS_NAME}', got {source!r}")


def register_pretraining_task(
    name: str,
    source: Union[str, seqio.DataSource],
    objective: str = "span_corruption",
    text_key: str = "text",
    vocabulary: Optional[seqio.Vocabulary] = None,
) -> seqio.Task:
    """Registers (or replaces) a Task applying a T5 unsupervised `objective` to the `text_key` field of `source`.

    Pipeline: rekey text -> targets, tokenize, cache point, objective, append EOS.
    """
    if objective not in _OBJECTIVES:
        raise UserError(f"unknown pretraining objective {objective!r}; expected one of {sorted(_OBJECTIVES)}")
    return custom.add_task(
        name,
        source=as_data_source(source),
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            _OBJECTIVES[objective],
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=vocab_lib.output_features(vocabulary),
        metric_fns=[],
    )


def register_span_corruption_task(
    name: str,
    source: Union[str, seqio.DataSource],
    text_key: str = "text",
    vocabulary: Optional[seqio.Vocabulary] = None,
) -> seqio.Task:
    """Registers T5 span corruption (15% noise, mean span 3) on any plain-text source."""
    return register_pretraining_task(name, source, "span_corruption", text_key, vocabulary)


c4_span_corruption = register_span_corruption_task("c4_span_corruption", C4_TFDS_NAME)
c4_prefix_lm = register_pretraining_task("c4_prefix_lm", C4_TFDS_NAME, objective="prefix_lm")
