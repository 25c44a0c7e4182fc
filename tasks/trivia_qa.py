"""TriviaQA (reading comprehension) as the `t5` library's `trivia_qa_v010`: one example per (context, answer)
pair whose answer occurs in the context, 'question: q context: c' -> answer, inputs cut around the answer."""
from typing import Mapping

import seqio
import tensorflow as tf

from tasks import preprocessors, vocab

TFDS_NAME = "trivia_qa/rc:1.1.0"
TASK_NAME = "trivia_qa_v010"
_CONTEXT_FIELDS = (("entity_pages", "wiki_context"), ("search_results", "search_context"))
_RE2_SPECIAL = r"([\\.+*?()|\[\]{}^$])"


def contains_text(texts: tf.Tensor, parts: tf.Tensor) -> tf.Tensor:
    """bool [n]: whether texts[i] contains parts[i] as literal text (both 1-D string tensors of length n)."""
    patterns = tf.strings.join([".*", tf.strings.regex_replace(parts, _RE2_SPECIAL, r"\\\1"), ".*"])
    return tf.map_fn(lambda pair: tf.strings.regex_full_match(pair[0], pair[1]), (texts, patterns),
                     fn_output_signature=tf.bool)


def trivia_qa(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """TFDS trivia_qa/rc -> {'inputs': 'question: q context: c', 'targets': answer} for every wiki context, then

    every search context, crossed with every normalized answer alias (context-major order), keeping the pairs
    whose spaced, ASCII-lowercased context contains the spaced, lowercased answer. Question, contexts and
    answers get spaces around punctuation (`preprocessors.pad_punctuation`), as in t5's `trivia_qa`.
    """

    def expand(x):
        contexts = tf.concat([x[group][field] for group, field in _CONTEXT_FIELDS if group in x], axis=0)
        contexts = preprocessors.pad_punctuation(contexts)
        answers = preprocessors.pad_punctuation(x["answer"]["normalized_aliases"])
        pair_contexts = tf.repeat(contexts, tf.size(answers))
        pair_answers = tf.tile(answers, [tf.size(contexts)])
        found = contains_text(tf.strings.lower(pair_contexts), tf.strings.lower(pair_answers))
        question = preprocessors.pad_punctuation(x["question"])
        inputs = preprocessors.string_join(["question:", question, "context:", pair_contexts])
        return {"inputs": tf.boolean_mask(inputs, found), "targets": tf.boolean_mask(pair_answers, found)}

    return dataset.map(expand, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def truncate_inputs(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Token preprocessor (t5's `trivia_qa_truncate_inputs`): inputs longer than sequence_length['inputs'] are cut

    to a window of that many tokens holding the first occurrence of the target tokens, its start uniform among
    the windows that do; examples whose answer is not in the inputs (or is longer than the window) are dropped.
    """
    del output_features
    window = int(sequence_length["inputs"])

    @seqio.map_over_dataset(num_seeds=1)
    def truncate(x, seed):
        inputs, answer = x["inputs"], x["targets"]
        num_inputs, num_answer = tf.size(inputs), tf.size(answer)
        answer_start = preprocessors.first_true(preprocessors.subsequence_matches(answer, inputs))
        low = tf.maximum(0, answer_start - (window - num_answer))
        high = tf.minimum(answer_start, num_inputs - window) + 1
        start = tf.random.stateless_uniform([], minval=low, maxval=tf.maximum(high, low + 1), dtype=tf.int32,
                                            seed=seed)
        can_cut = tf.logical_and(answer_start >= 0, num_answer <= window)
        cut = tf.cond(can_cut, lambda: inputs[start:start + window], lambda: inputs[:0])
        return {"inputs": tf.cond(num_inputs > window, lambda: cut, lambda: inputs), "targets": answer}

    return truncate(dataset).filter(lambda x: tf.size(x["inputs"]) > 0)


trivia_qa_v010 = seqio.TaskRegistry.add(
    TASK_NAME,
    source=seqio.TfdsDataSource(tfds_name=TFDS_NAME),
    preprocessors=[
        trivia_qa,
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        truncate_inputs,
        seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=vocab.output_features(),
    metric_fns=[],
)
