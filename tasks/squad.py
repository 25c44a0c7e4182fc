"""SQuAD v1.1 as T5's `squad_v010_allanswers`: 'question: q context: c' -> first answer, scored on all answers."""
import seqio

from tasks import metrics, postprocessors, preprocessors, vocab

TFDS_NAME = "squad/v1.1:3.0.0"
TASK_NAME = "squad_v010_allanswers"


@seqio.map_over_dataset
def squad(x):
    """T5's SQuAD format: question, context and answers get spaces around punctuation, then

    inputs = 'question: {q} context: {c}' (single spaces), targets = the first answer; the
    spaced answers, question, context and id are kept for the metric.
    """
    answers = preprocessors.pad_punctuation(x["answers"]["text"])
    question = preprocessors.pad_punctuation(x["question"])
    context = preprocessors.pad_punctuation(x["context"])
    return {
        "inputs": preprocessors.string_join(["question:", question, "context:", context]),
        "targets": answers[0],
        "id": x["id"],
        "question": question,
        "context": context,
        "answers": answers,
    }


squad_v010_allanswers = seqio.TaskRegistry.add(
    TASK_NAME,
    source=seqio.TfdsDataSource(tfds_name=TFDS_NAME),
    preprocessors=[
        squad,
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=vocab.output_features(),
    postprocess_fn=postprocessors.qa,
    metric_fns=[metrics.squad],
)
