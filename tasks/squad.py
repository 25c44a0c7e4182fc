"""SQuAD v1.1 tasks of the `t5` library: 'question: q context: c' -> first answer (scored on all answers),
the context-free variant, the deprecated `squad_v010`, and the space-token span variant."""
import functools

import seqio
import tensorflow as tf

from tasks import metrics, postprocessors, preprocessors, vocab

TFDS_NAME = "squad/v1.1:3.0.0"
TASK_NAME = "squad_v010_allanswers"
CONTEXT_FREE_TASK = "squad_v010_context_free"
SPAN_TASK = "squad_v010_allanswers_span"
DEPRECATED_TASK = "squad_v010"  # t5's first SQuAD task: scored on the first answer only, no postprocessor


@seqio.map_over_dataset
def squad(x, include_context: bool = True):
    """T5's SQuAD format: question, context and answers get spaces around punctuation, then

    inputs = 'question: {q} context: {c}' (or 'squad trivia question: {q}' without the context; single
    spaces), targets = the first answer; the spaced answers, question, context and id are kept for the metric.
    """
    answers = preprocessors.pad_punctuation(x["answers"]["text"])
    question = preprocessors.pad_punctuation(x["question"])
    context = preprocessors.pad_punctuation(x["context"])
    if include_context:
        inputs = preprocessors.string_join(["question:", question, "context:", context])
    else:
        inputs = preprocessors.string_join(["squad trivia question:", question])
    return {
        "inputs": inputs,
        "targets": answers[0],
        "id": x["id"],
        "question": question,
        "context": context,
        "answers": answers,
    }


def space_tokens(text: tf.Tensor) -> tf.Tensor:
    """Scalar string -> 1-D words: every non-word character (RE2 `\\W`, ASCII word characters) becomes a space,

    then the text is split at every single space, keeping the empty words between adjacent spaces (as t5 does).
    """
    return tf.strings.split(tf.strings.regex_replace(text, r"\W", " "), sep=" ")


def squad_span(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """T5's `squad_span_space_tokenized`: the SQuAD format with targets 'start: S end: E', the first and last

    space-token index (see `space_tokens`) of the first answer in the spaced context. Examples whose answer
    words are not found (including an answer at the very end of the context) are dropped.
    """

    def span(x):
        answer = space_tokens(x["targets"])
        # t5's search stops one short of the last possible start.
        start = preprocessors.first_true(preprocessors.subsequence_matches(answer, space_tokens(x["context"]))[:-1])
        end = start + tf.size(answer) - 1
        target = tf.strings.join(["start:", tf.strings.as_string(start), "end:", tf.strings.as_string(end)],
                                 separator=" ")
        return {**x, "targets": tf.where(start >= 0, target, "")}

    dataset = squad(dataset).map(span, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.filter(lambda x: tf.strings.length(x["targets"]) > 0)


def _tail() -> list:
    return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim]


def register(output_features=None):
    """Registers t5's four SQuAD v1.1 tasks; returns their names."""
    output_features = output_features or vocab.output_features()
    source = seqio.TfdsDataSource(tfds_name=TFDS_NAME)
    specs = {
        TASK_NAME: (squad, postprocessors.qa, metrics.squad),
        CONTEXT_FREE_TASK: (functools.partial(squad, include_context=False), postprocessors.qa, metrics.squad),
        SPAN_TASK: (squad_span, postprocessors.span_qa, metrics.span_squad),
        # t5 scores the first answer's text; metrics.squad reads a plain string target as that one answer.
        DEPRECATED_TASK: (squad, None, metrics.squad),
    }
    for name, (text_preprocessor, postprocess_fn, metric_fn) in specs.items():
        seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=[text_preprocessor] + _tail(),
            output_features=output_features,
            postprocess_fn=postprocess_fn,
            metric_fns=[metric_fn],
        )
    return tuple(specs)


TASK_NAMES = register()