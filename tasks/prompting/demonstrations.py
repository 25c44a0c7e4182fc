"""LM-BFF's demonstrations (Gao et al. 2021, sec. 6): for each query, k training examples per class (default one),
each written as the template filled with its class's label words (Template.filled), concatenated AFTER the query's
prompt as LM-BFF does: "<prompt(x)> <demo 1> <demo 2> ..." (shuffled order of classes, seeded per query and set).

With `similar_half`, a query draws only from the most similar half of each class's training examples (LM-BFF's
"top 50% per class" sampling, sec. 6.2) by cosine similarity of sentence embeddings; the embedder is any callable
texts -> float [n, d] (default: the model's own encoder states mean-pooled over non-pad tokens). At inference each
query is scored with M demonstration sets and the class scores are averaged: by default the class
log-likelihoods (LM-BFF averages its pre-softmax label-word logits over the sets), or the class probabilities.
"""
from __future__ import annotations

import functools
import math
import random
from typing import Any, Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tasks.prompting import engine
from tasks.prompting.core import Example, Template, Verbalizer, sample_demonstrations
from text2text.errors import UserError

Embedder = Callable[[Sequence[str]], np.ndarray]
AVERAGES = ("log_likelihood", "probability")


@functools.lru_cache(maxsize=16)
def _encode_program(prompt_model: engine.PromptModel) -> Callable:
    module = prompt_model.model.module

    def mean_pooled(params, tokens):
        states = module.apply({"params": params}, tokens, enable_dropout=False, method="encode")
        mask = (tokens > 0).astype(jnp.float32)[..., None]
        return jnp.sum(states.astype(jnp.float32) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)

    return jax.jit(mean_pooled)


def encoder_embedder(prompt_model: engine.PromptModel, params: Any) -> Embedder:
    """texts -> float32 [n, d]: the encoder's output states averaged over each text's non-pad tokens (EOS
    included), in fixed-size batches (one compiled program per PromptModel)."""
    program, size = _encode_program(prompt_model), prompt_model.batch_size

    def embed(texts: Sequence[str]) -> np.ndarray:
        tokens = prompt_model.tokens(texts, prompt_model.feature_lengths["inputs"], "text")
        out = []
        for start in range(0, len(tokens), size):
            chunk = tokens[start:start + size]
            out.append(np.asarray(program(params, np.pad(chunk, ((0, size - len(chunk)), (0, 0)))))[:len(chunk)])
        return np.concatenate(out)

    return embed


def example_text(example: Example, text_fields: Sequence[str]) -> str:
    """The text an example is embedded by: its text fields joined by spaces."""
    return " ".join(str(example[f]) for f in text_fields)


def check_demonstration_counts(train_labels: np.ndarray, classes: Sequence[Any], k: int, exclude_self: bool) -> None:
    """UserError naming the first class with fewer than k training examples (one fewer when a query is itself a
    training example and never its own demonstration)."""
    for c, cls in enumerate(classes):
        available = int(np.sum(np.asarray(train_labels) == c)) - int(exclude_self)
        if available < k:
            raise UserError(f"demonstrations: class {cls!r} has {available} training example(s) to draw from, "
                            f"fewer than k={k}")


def similar_pools(query_embeddings: np.ndarray, train_embeddings: np.ndarray, train_labels: np.ndarray,
                  num_classes: int, k: int = 1, exclude: Optional[Sequence[int]] = None) -> List[np.ndarray]:
    """Per query, int indices of the training examples it may draw from: of each class the ceil(half) (at least
    k) most cosine-similar to the query, most similar first; `exclude[i]` (a training index, or -1) is never in
    query i's pool. Embeddings float [q, d] and [n, d]; labels int [n]."""
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = unit(query_embeddings) @ unit(train_embeddings).T
    labels = np.asarray(train_labels)
    pools = []
    for i, row in enumerate(similarity):
        order = np.argsort(-row, kind="stable")
        if exclude is not None:
            order = order[order != exclude[i]]
        keep = []
        for c in range(num_classes):
            members = order[labels[order] == c]
            keep.append(members[:max(k, math.ceil(len(members) / 2))])
        pool = np.concatenate(keep)
        pools.append(pool[np.argsort(-row[pool], kind="stable")])
    return pools


def demonstration_pools(queries: Sequence[Example], train: Sequence[Example], train_labels: np.ndarray,
                        classes: Sequence[Any], text_fields: Sequence[str], k: int = 1, similar_half: bool = True,
                        embedder: Optional[Embedder] = None, queries_are_train: bool = False) -> List[np.ndarray]:
    """Per query, the training indices its demonstrations come from: all (but itself when queries_are_train) or,
    with similar_half, `similar_pools` under `embedder` (required then). UserError naming a class with fewer than
    k examples."""
    check_demonstration_counts(train_labels, classes, k, queries_are_train)
    exclude = list(range(len(queries))) if queries_are_train else None
    if not similar_half:
        everyone = np.arange(len(train))
        return [everyone[everyone != exclude[i]] if exclude else everyone for i in range(len(queries))]
    if embedder is None:
        raise UserError("demonstrations: similar_half needs an embedder")
    return similar_pools(embedder([example_text(q, text_fields) for q in queries]),
                         embedder([example_text(t, text_fields) for t in train]), train_labels, len(classes), k,
                         exclude)


def demonstration_inputs(queries: Sequence[Example], train: Sequence[Example], pools: Sequence[np.ndarray],
                         template: Template, verbalizer: Verbalizer, num_sets: int, seed: Any = 0, k: int = 1,
                         label_key: str = "label", separator: str = " ") -> List[List[str]]:
    """[queries][num_sets] model inputs: the query's prompt, then a demonstration set drawn from its pool with
    random.Random(f"{seed}/{query}/{set}") (k per class, filled by the template, shuffled; `seed` any value, e.g.
    tagged by split). UserError naming a cloze template without its sentinel."""
    template.check()
    out = []
    for i, query in enumerate(queries):
        prompt, pool = template.format_inputs(query), [train[j] for j in pools[i]]
        out.append([prompt + separator + sample_demonstrations(pool, template, verbalizer, k,
                                                               random.Random(f"{seed}/{i}/{m}"), label_key,
                                                               separator=separator)
                    for m in range(num_sets)])
    return out


def check_average(average: str) -> None:
    """UserError unless `average` (how class scores are averaged over demonstration sets) is one of AVERAGES."""
    if average not in AVERAGES:
        raise UserError(f"demonstrations: average={average!r}; expected one of {AVERAGES}")


def averaged_class_scores(prompt_model: engine.PromptModel, params: Any, inputs: Sequence[Sequence[str]],
                          class_targets: Sequence[str], average: str = "log_likelihood") -> np.ndarray:
    """float64 [queries, C]: each query's class log-likelihoods (average="log_likelihood") or class
    probabilities ("probability") averaged over its demonstration sets inputs[i] (all queries the same count).
    UserError as `check_average`."""
    check_average(average)
    sets = len(inputs[0])
    flat = [text for row in inputs for text in row]
    scores = engine.class_log_likelihoods(prompt_model, params, flat, class_targets)
    if average == "probability":
        scores = np.exp(scores - np.logaddexp.reduce(scores, axis=1, keepdims=True))
    return scores.reshape(len(inputs), sets, len(class_targets)).mean(axis=1)


__all__ = ["Embedder", "AVERAGES", "encoder_embedder", "example_text", "check_demonstration_counts",
           "similar_pools", "demonstration_pools", "demonstration_inputs", "check_average", "averaged_class_scores"]
