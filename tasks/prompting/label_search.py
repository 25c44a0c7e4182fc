"""LM-BFF's automatic label words for T5 (Gao et al. 2021, sec. 5.1), and the decoder step it shares with
template search.

T5 has no MLM head; the cloze slot's distribution is the decoder's next-token distribution at the label position
of the targets: right after the target text before "{label}" ("<extra_id_0> " for the default cloze targets), the
prefix teacher-forced. For each class c, vocabulary word v is ranked by

    sum over training examples x of class c of log p(first target token = v | template(x), prefix)

the top k per class are kept, one-word-per-class mappings (distinct words) are pruned to the n with the best
zero-shot training accuracy under those same label-position scores (LM-BFF's MLM prediction), and the final
mapping is the one with the best dev accuracy after prompt-based fine-tuning of a few of them (a budget).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from tasks import vocab as vocab_lib
from tasks.prompting import engine
from tasks.prompting.core import Example, Template, Verbalizer
from text2text.errors import UserError

Params = Any


@functools.lru_cache(maxsize=16)
def _next_token_program(prompt_model: engine.PromptModel) -> Callable:
    module = prompt_model.model.module

    def log_probs_at(params, encoder_tokens, decoder_targets, positions):
        decoder_inputs = jnp.pad(decoder_targets[:, :-1], ((0, 0), (1, 0)))
        logits = module.apply({"params": params}, encoder_tokens, decoder_inputs, decoder_targets,
                              enable_dropout=False)
        picked = jnp.take_along_axis(logits, positions[:, None, None], axis=1)[:, 0]
        return jax.nn.log_softmax(picked.astype(jnp.float32), axis=-1)

    return jax.jit(log_probs_at)


def next_token_log_probs(prompt_model: engine.PromptModel, params: Params, encoder_tokens: np.ndarray,
                         prefixes: Sequence[Sequence[int]], length: Optional[int] = None) -> np.ndarray:
    """float32 [n, vocabulary size]: log p(next target token | encoder input i, target prefix i) for every row.

    encoder_tokens: int32 [n, inputs length] (PromptModel.tokens); prefixes: the n teacher-forced target prefixes
    (token ids, no EOS), each shorter than `length` (default the targets feature length). One forward pass per
    chunk of `prompt_model.batch_size` rows (one compiled program per shape); ids past the vocabulary (embedding
    padding) are cut off. Needs an EncoderDecoderModel (UserError for a class-head model).
    """
    if prompt_model.has_class_head:
        raise UserError("LM-BFF search needs the model's decoder; a class-head model has no label position")
    length = length or prompt_model.feature_lengths["targets"]
    if any(len(p) >= length for p in prefixes):
        raise UserError(f"LM-BFF search: a target prefix of {max(map(len, prefixes))} tokens does not fit "
                        f"targets length {length}")
    targets = np.zeros((len(prefixes), length), np.int32)
    for i, prefix in enumerate(prefixes):
        targets[i, :len(prefix) + 1] = list(prefix) + [vocab_lib.EOS_ID]
    positions = np.asarray([len(p) for p in prefixes], np.int32)
    program, size = _next_token_program(prompt_model), prompt_model.batch_size
    out = []
    for start in range(0, len(targets), size):
        real = min(size, len(targets) - start)
        pad = ((0, size - real), (0, 0))
        chunk = program(params, np.pad(encoder_tokens[start:start + size], pad),
                        np.pad(targets[start:start + size], pad), np.pad(positions[start:start + size], pad[0]))
        out.append(np.asarray(chunk)[:real, :prompt_model.vocabulary.vocab_size])
    return np.concatenate(out)


def word_tokens(vocabulary: seqio.Vocabulary) -> Dict[int, str]:
    """{token id: word} for the tokens that decode to a word of letters and encode back to exactly that one token
    (so sentinels, EOS, pad, UNK, control and word-internal pieces are left out)."""
    out = {}
    for token in range(vocabulary.vocab_size):
        word = vocabulary.decode([token])
        if word.isalpha() and [int(i) for i in vocabulary.encode(word)] == [token]:
            out[token] = word
    return out


def check_label_words(prompt_model: engine.PromptModel, verbalizer: Verbalizer) -> None:
    """UserError naming the class whose label words tokenize to nothing."""
    for cls, words in verbalizer.words:
        if not len(prompt_model.vocabulary.encode(words)):
            raise UserError(f"label words {words!r} of class {cls!r} tokenize to nothing")


def label_prefix(prompt_model: engine.PromptModel, template: Template) -> Tuple[int, ...]:
    """Token ids of the target text before "{label}" (UserError naming a template without a label slot)."""
    template.check()
    return tuple(int(i) for i in prompt_model.vocabulary.encode(template.targets.split("{label}")[0]))


def label_position_log_probs(prompt_model: engine.PromptModel, params: Params, template: Template,
                             examples: Sequence[Example]) -> np.ndarray:
    """float32 [n, vocabulary size]: the decoder's log-softmax at the label position of each example's prompt."""
    prefix = label_prefix(prompt_model, template)
    tokens = prompt_model.tokens([template.format_inputs(ex) for ex in examples],
                                 prompt_model.feature_lengths["inputs"], "input")
    return next_token_log_probs(prompt_model, params, tokens, [prefix] * len(examples))


def rank_label_words(log_probs: np.ndarray, labels: np.ndarray, classes: Sequence[Any], words: Mapping[int, str],
                     k: int) -> Dict[Any, List[Tuple[str, int, float]]]:
    """{class: its top-k (word, token id, summed log-prob) best first} among `words` (word_tokens), summing
    log_probs [n, V] over the rows whose labels [n] (class indices) are that class. UserError naming a class
    without examples."""
    ids = np.asarray(sorted(words))
    ranking = {}
    for c, cls in enumerate(classes):
        rows = labels == c
        if not rows.any():
            raise UserError(f"label search: class {cls!r} has no training examples")
        totals = log_probs[rows][:, ids].sum(axis=0)
        best = np.argsort(-totals, kind="stable")[:k]
        ranking[cls] = [(words[int(ids[i])], int(ids[i]), float(totals[i])) for i in best]
    return ranking


def prune_mappings(log_probs: np.ndarray, labels: np.ndarray, candidates: Sequence[Sequence[int]], n: int,
                   max_partial: int = 2000) -> List[Tuple[Tuple[int, ...], float]]:
    """The n best one-token-per-class mappings (distinct tokens) as (token ids per class, percent zero-shot
    accuracy), best first: prediction = argmax over classes of log_probs [rows, V] at the classes' tokens; ties
    broken by the mean log-softmax over classes of the gold class. Mappings are grown class by class, keeping the
    best `max_partial` partial mappings (scored on the examples of the classes they cover): exhaustive whenever
    the number of combinations fits."""
    partial = np.zeros((1, 0), np.int64)
    for c, tokens in enumerate(candidates):
        grown = np.concatenate([np.repeat(partial, len(tokens), axis=0),
                                np.tile(np.asarray(tokens, np.int64), len(partial))[:, None]], axis=1)
        grown = grown[np.all(grown[:, :-1] != grown[:, -1:], axis=1)]
        accuracy, fit = _mapping_scores(log_probs, labels, grown)
        order = np.lexsort((-fit, -accuracy))[:max_partial if c + 1 < len(candidates) else n]
        partial = grown[order]
    accuracy, _ = _mapping_scores(log_probs, labels, partial)
    return [(tuple(int(t) for t in row), float(a)) for row, a in zip(partial, accuracy)]


def _mapping_scores(log_probs: np.ndarray, labels: np.ndarray, mappings: np.ndarray) -> Tuple[np.ndarray, ...]:
    rows = labels < mappings.shape[1]
    scores = log_probs[rows][:, mappings]  # [rows, mappings, classes covered]
    gold = labels[rows]
    correct = np.argmax(scores, axis=2) == gold[:, None]
    log_softmax = scores - np.logaddexp.reduce(scores, axis=2, keepdims=True)
    fit = np.take_along_axis(log_softmax, gold[:, None, None], axis=2)[..., 0]
    return 100.0 * correct.mean(axis=0), fit.mean(axis=0)


@dataclasses.dataclass(frozen=True)
class LabelSearchResult:
    """The chosen verbalizer; per class its top-k (word, summed log-prob); the pruned mappings best first as
    ({class: word}, zero-shot train accuracy, dev accuracy after prompt-based fine-tuning or None if not tuned)."""
    verbalizer: Verbalizer
    ranking: Dict[Any, List[Tuple[str, float]]]
    mappings: List[Tuple[Dict[Any, str], float, Optional[float]]]


def search_label_words(prompt_model: engine.PromptModel, params: Params, template: Template, classes: Sequence[Any],
                       train: Sequence[Example], train_labels: np.ndarray, dev: Sequence[Example],
                       dev_labels: np.ndarray, finetune: Callable[[engine.ClassTask], Params], k: int = 30,
                       n: int = 20, num_finetune: int = 4) -> LabelSearchResult:
    """LM-BFF's label-word search (sec. 5.1): top-k words per class, the n mappings with the best zero-shot
    training accuracy, then the best dev accuracy among the first `num_finetune` of them after
    `finetune(training task) -> params` (prompt-based fine-tuning from `params`; num_finetune=0 picks by
    zero-shot accuracy alone). Labels are class indices into `classes`. Raises UserError for a template without a
    cloze slot or a class without training examples."""
    log_probs = label_position_log_probs(prompt_model, params, template, train)
    ranked = rank_label_words(log_probs, np.asarray(train_labels), classes, word_tokens(prompt_model.vocabulary), k)
    pruned = prune_mappings(log_probs, np.asarray(train_labels), [[t for _, t, _ in ranked[c]] for c in classes], n)
    if not pruned:
        raise UserError(f"label search: no mapping of distinct words for classes {list(classes)} among the top {k}")
    decode = prompt_model.vocabulary.decode
    mappings = []
    for i, (tokens, zero_shot) in enumerate(pruned):
        verbalizer = Verbalizer({cls: decode([t]) for cls, t in zip(classes, tokens)})
        dev_accuracy = None
        if i < num_finetune:
            targets = [template.format_targets(w) for _, w in verbalizer.words]
            tuned = finetune(engine.ClassTask([template.format_inputs(ex) for ex in train], targets, train_labels))
            dev_accuracy = engine.accuracy(prompt_model, tuned, engine.ClassTask(
                [template.format_inputs(ex) for ex in dev], targets, dev_labels))
        mappings.append((dict(verbalizer.words), zero_shot, dev_accuracy))
    best = max(range(len(mappings)), key=lambda i: (-1.0 if mappings[i][2] is None else mappings[i][2], -i))
    ranking = {cls: [(w, s) for w, _, s in ranked[cls]] for cls in classes}
    return LabelSearchResult(Verbalizer(mappings[best][0]), ranking, mappings)


__all__ = ["next_token_log_probs", "word_tokens", "check_label_words", "label_prefix", "label_position_log_probs",
           "rank_label_words", "prune_mappings", "LabelSearchResult", "search_label_words"]
