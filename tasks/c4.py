"""C4 / Wikipedia pretraining tasks (the `t5` library's and this project's) and a helper to pretrain on any
plain-text source."""
from __future__ import annotations

import functools
from typing import Optional, Union

import seqio

from tasks import custom, span_corruption, vocab as vocab_lib
from text2text.errors import UserError

C4_TFDS_NAME = "c4/en:3.1.0"
C4_V220_TFDS_NAME = "c4/en:2.2.0"
# t5's unsupervised tasks: the C4 variant each `c4*_v020_unsupervised` task reads (t5 names
# 'c4/en.realnewslike' and 'c4/en.webtextlike', configs TFDS never had; these are the real ones).
UNSUPERVISED_SOURCES = {
    "c4_v020_unsupervised": "c4/en:2.2.0",
    "c4_noclean_v020_unsupervised": "c4/en.noclean:2.2.0",
    "c4_realnewslike_v020_unsupervised": "c4/realnewslike:2.2.0",
    "c4_webtextlike_v020_unsupervised": "c4/webtextlike:2.2.0",
    "wikipedia_20190301.en_v003_unsupervised": "wikipedia/20190301.en:1.0.0",
}

_OBJECTIVES = {
    "span_corruption": span_corruption.span_corruption,
    "iid_denoising": span_corruption.iid_denoising,
    "prefix_lm": span_corruption.prefix_lm,
}
# As in t5: the text becomes 'targets' and 'inputs' is an empty string (tokenized to no tokens).
text_as_targets = functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"})


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


def register_t5_tasks(vocabulary: Optional[seqio.Vocabulary] = None) -> tuple:
    """Registers the `t5` library's C4 and Wikipedia tasks; returns their names.

    `c4_v220_{span_corruption,iid_denoising,prefix_lm}` apply that objective then EOS; `c4_v220_full_lm`
    (targets only) cuts EOS-separated documents into full-length pieces. The `*_unsupervised` tasks apply
    what t5's gin hook `unsupervised` applies when nothing is bound to it, i.e. nothing: each document is one
    example, targets = its tokens cut to the targets length + EOS, inputs = EOS alone.
    """
    features = vocab_lib.output_features(vocabulary)
    tasks = {f"c4_v220_{objective}": (C4_V220_TFDS_NAME, [_OBJECTIVES[objective]], features)
             for objective in ("span_corruption", "iid_denoising", "prefix_lm")}
    tasks.update({name: (tfds_name, [], features) for name, tfds_name in UNSUPERVISED_SOURCES.items()})
    for name, (tfds_name, objective, output_features) in tasks.items():
        seqio.TaskRegistry.add(
            name,
            source=seqio.TfdsDataSource(tfds_name=tfds_name),
            preprocessors=[text_as_targets, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()]
            + objective + [seqio.preprocessors.append_eos_after_trim],
            output_features=output_features,
            metric_fns=[],
        )
    seqio.TaskRegistry.add(
        "c4_v220_full_lm",
        source=seqio.TfdsDataSource(tfds_name=C4_V220_TFDS_NAME),
        preprocessors=[text_as_targets, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                       span_corruption.full_lm],
        output_features={"targets": features["targets"]},
        metric_fns=[],
    )
    return tuple(tasks) + ("c4_v220_full_lm",)


T5_TASK_NAMES = register_t5_tasks()
