"""The few-shot engine every prompt-based method shares: a model with its vocabulary, class scores by rank
classification, and a small in-memory training loop with a class-distribution loss.

T5 has no MLM head, so a pattern-verbalizer pair's class distribution is the softmax over the classes' target
sequence log-likelihoods (PET's and LM-BFF's loss for an encoder-decoder):

    p(c | x) = softmax_c( log p_model(targets_c | pattern(x)) )

Training minimises KL(q || p) over a batch of examples, q the class distribution each example is given: one-hot
for labelled examples (then KL is the cross-entropy), soft labels for PET's distillation. An optional auxiliary
language-modelling loss on unlabelled text gives PET's L = (1 - alpha) * KL + alpha * LM.

A model whose class distribution comes from a head (a `LinearProbeModel`, also with a trainable encoder:
standard fine-tuning) is trained with the same loss on its own `class_log_probs`.

Everything runs on host numpy inputs with one jitted program per (model, optimizer, loss shape): few-shot runs
repeat the same shapes many times, so a method's second seed compiles nothing.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.core.meta as meta
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from tasks.prompting.core import truncate
from text2text import optim, peft, pretrained
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel

Params = Any
Batch = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class PromptModel:
    """A model (EncoderDecoderModel or LinearProbeModel), its vocabulary and the text lengths it reads.

    feature_lengths: {"inputs": encoder tokens, "targets": decoder tokens} (longer texts are truncated, EOS kept).
    batch_size: rows per scoring call (examples x classes). Hashed by identity: jitted programs are cached on it.
    """
    model: Any
    vocabulary: seqio.Vocabulary
    feature_lengths: Mapping[str, int]
    batch_size: int = 64

    @property
    def has_class_head(self) -> bool:
        """True for a classifier head (LinearProbeModel): its classes come from the model, not target texts."""
        return hasattr(self.model, "class_log_probs")

    def encode(self, text: str, what: str = "text") -> Tuple[int, ...]:
        """Token ids of `text` without EOS; UserError naming `what` if it encodes to nothing."""
        ids = tuple(int(i) for i in self.vocabulary.encode(text))
        if not ids:
            raise UserError(f"{what} {text!r} encodes to no tokens")
        return ids

    def tokens(self, texts: Sequence[str], length: int, what: str = "text") -> np.ndarray:
        """int32 [len(texts), length]: each text's ids cut to length - 1, then EOS, then 0 padding
        (`core.truncate`: UserError naming `what` if the cut would drop a cloze mask <extra_id_N>)."""
        out = np.zeros((len(texts), length), np.int32)
        for i, text in enumerate(texts):
            ids = truncate(self.encode(text, what), length, self.vocabulary, what)
            out[i, :len(ids)] = ids
        return out

    def class_target_tokens(self, class_targets: Sequence[str]) -> np.ndarray:
        """int32 [C, targets length]: `tokens` of the classes' target texts, which must fit uncut and differ.

        UserError naming the class target that is longer than the targets length - 1 (a cut target could equal
        another class's: PET and LM-BFF score whole label words), or two classes whose targets tokenize alike."""
        length = self.feature_lengths["targets"]
        for text in class_targets:
            count = len(self.encode(text, "class target"))
            if count > length - 1:
                raise UserError(f"class target {text!r} is {count} tokens; the targets length {length} holds "
                                f"{length - 1} and EOS: raise it or use shorter label words")
        rows = self.tokens(class_targets, length, "class target")
        for c in range(len(rows)):
            for other in range(c):
                if np.array_equal(rows[c], rows[other]):
                    raise UserError(f"class targets {class_targets[other]!r} and {class_targets[c]!r} tokenize "
                                    "alike, so rank classification cannot tell their classes apart")
        return rows

    def pair_batch(self, inputs: np.ndarray, targets: np.ndarray) -> Batch:
        """A teacher-forced batch from encoder tokens [b, Li] and target tokens [b, Lt]."""
        return {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
                "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
                "decoder_loss_weights": (targets > 0).astype(np.float32)}

    @functools.cached_property
    def score_fn(self) -> Callable[[Params, Batch], jax.Array]:
        """jit(model.score_batch): [b] summed target log-likelihood."""
        return jax.jit(self.model.score_batch)

    @functools.cached_property
    def head_fn(self) -> Callable[[Params, Batch], jax.Array]:
        """jit(model.class_log_probs): [b, classes] (class-head models only)."""
        return jax.jit(self.model.class_log_probs)


@functools.lru_cache(maxsize=64)
def peft_variant(base: PromptModel, peft_config: peft.PeftConfig) -> PromptModel:
    """`base` with `peft_config` as its model's PEFT config (a LinearProbeModel for a linear probe, else an
    EncoderDecoderModel with the base's loss settings), same vocabulary, lengths and batch size. One object per
    (base, config), so every seed and method reuses its compiled programs."""
    model = base.model
    config = dataclasses.replace(model.config, peft=peft_config)
    if peft_config.linear_probe is not None:
        variant = peft.LinearProbeModel(config)
    else:
        variant = EncoderDecoderModel(config, model.z_loss, model.label_smoothing, model.loss_normalizing_factor)
    return PromptModel(variant, base.vocabulary, base.feature_lengths, base.batch_size)


def init_params(prompt_model: PromptModel, checkpoint: Optional[str] = None, seed: int = 0) -> Params:
    """Unboxed params of the model (random with `seed`), then, with `checkpoint`, the base T5 read from it
    (a text2text, T5X or Hugging Face checkpoint; PEFT parameters keep their initialisation)."""
    lengths = prompt_model.feature_lengths
    shapes = {"inputs": (1, lengths["inputs"]), "targets": (1, lengths["targets"])}
    params = meta.unbox(prompt_model.model.init_variables(jax.random.PRNGKey(seed), shapes)["params"])
    if checkpoint is None:
        return params
    return pretrained.load_params(checkpoint, prompt_model.model.config, params)


@dataclasses.dataclass(frozen=True)
class ClassTask:
    """Rank-classification data: prompt texts [n], the classes' target texts [C], class distributions [n, C].

    `labels` are class indices (one-hot distributions) or an [n, C] float array of soft labels (rows sum to 1).
    """
    inputs: Tuple[str, ...]
    class_targets: Tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "class_targets", tuple(self.class_targets))
        labels = np.asarray(self.labels)
        if labels.ndim == 1:
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_targets)):
                raise UserError(f"class indices must lie in [0, {len(self.class_targets)}); got {sorted(set(labels))}")
            labels = np.eye(len(self.class_targets), dtype=np.float32)[labels.astype(int)]
        if labels.shape != (len(self.inputs), len(self.class_targets)):
            raise UserError(f"labels of shape {labels.shape} for {len(self.inputs)} inputs and "
                            f"{len(self.class_targets)} classes")
        object.__setattr__(self, "labels", labels.astype(np.float32))

    @property
    def num_classes(self) -> int:
        return len(self.class_targets)

    def hard_labels(self) -> np.ndarray:
        """int [n]: each example's most likely class."""
        return np.argmax(self.labels, axis=1)


def class_log_likelihoods(prompt_model: PromptModel, params: Params, inputs: Sequence[str],
                          class_targets: Sequence[str]) -> np.ndarray:
    """float64 [n, C]: log p(class target text | input) for every input and class (a class-head model gives its
    log-softmax over classes instead). Scored in fixed-size batches (one compiled program)."""
    lengths = prompt_model.feature_lengths
    enc = prompt_model.tokens(inputs, lengths["inputs"], "input")
    size = prompt_model.batch_size
    if prompt_model.has_class_head:
        out = []
        for start in range(0, len(enc), size):
            chunk = enc[start:start + size]
            padded = np.pad(chunk, ((0, size - len(chunk)), (0, 0)))
            out.append(np.asarray(prompt_model.head_fn(params, {"encoder_input_tokens": padded}))[:len(chunk)])
        return np.concatenate(out).astype(np.float64)
    dec = prompt_model.class_target_tokens(class_targets)
    num_classes = len(class_targets)
    rows_enc = np.repeat(enc, num_classes, axis=0)
    rows_dec = np.tile(dec, (len(enc), 1))
    scores = []
    for start in range(0, len(rows_enc), size):
        chunk_enc, chunk_dec = rows_enc[start:start + size], rows_dec[start:start + size]
        real = len(chunk_enc)
        batch = prompt_model.pair_batch(np.pad(chunk_enc, ((0, size - real), (0, 0))),
                                        np.pad(chunk_dec, ((0, size - real), (0, 0))))
        scores.append(np.asarray(prompt_model.score_fn(params, batch), np.float64)[:real])
    return np.concatenate(scores).reshape(len(enc), num_classes)


def accuracy(prompt_model: PromptModel, params: Params, task: ClassTask) -> float:
    """Percent of `task`'s examples whose most likely class is their (hard) label."""
    predicted = np.argmax(class_log_likelihoods(prompt_model, params, task.inputs, task.class_targets), axis=1)
    return 100.0 * float(np.mean(predicted == task.hard_labels()))


def kl_to_targets(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over rows of KL(targets || exp(log_probs)); log_probs, targets [b, C] (targets rows sum to 1)."""
    safe = jnp.where(targets > 0, targets, 1.0)
    return jnp.mean(jnp.sum(targets * (jnp.log(safe) - log_probs), axis=-1))


def _class_log_probs(prompt_model: PromptModel, params: Params, batch: Mapping[str, jax.Array],
                     num_classes: int) -> jax.Array:
    if prompt_model.has_class_head:
        return prompt_model.model.class_log_probs(params, batch)
    scores = prompt_model.model.score_batch(params, batch)
    return jax.nn.log_softmax(scores.reshape(-1, num_classes), axis=-1)


def _lm_loss(prompt_model: PromptModel, params: Params, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Token-mean cross-entropy of a teacher-forced batch (PET's auxiliary language-modelling loss)."""
    loss, metrics = prompt_model.model.loss_fn(params, batch, None)
    del loss
    return metrics["loss_sum"] / jnp.maximum(metrics["weight_sum"], 1.0)


@functools.lru_cache(maxsize=64)
def _train_step(prompt_model: PromptModel, tx: optax.GradientTransformation, num_classes: int, alpha: float):
    def loss_fn(params, batch, lm_batch):
        kl = kl_to_targets(_class_log_probs(prompt_model, params, batch, num_classes), batch["class_targets"])
        if lm_batch is None:
            return kl, (kl, jnp.zeros(()))
        lm = _lm_loss(prompt_model, params, lm_batch)
        return (1.0 - alpha) * kl + alpha * lm, (kl, lm)

    def step(params, opt_state, batch, lm_batch):
        (loss, (kl, lm)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, lm_batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "kl": kl, "lm": lm}

    return jax.jit(step, donate_argnums=(0, 1))


def training_batch(prompt_model: PromptModel, task: ClassTask, rows: np.ndarray) -> Batch:
    """The training batch of `task`'s examples `rows`: encoder tokens (repeated once per class for rank
    classification) with every class's targets, and "class_targets" [b, C] float32."""
    lengths = prompt_model.feature_lengths
    enc = prompt_model.tokens([task.inputs[i] for i in rows], lengths["inputs"], "input")
    labels = task.labels[rows]
    if prompt_model.has_class_head:
        return {"encoder_input_tokens": enc, "class_targets": labels}
    dec = prompt_model.class_target_tokens(task.class_targets)
    batch = prompt_model.pair_batch(np.repeat(enc, task.num_classes, axis=0), np.tile(dec, (len(rows), 1)))
    return {**batch, "class_targets": labels}


def default_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """T5's fine-tuning optimizer: Adafactor at a constant learning rate (no warmup)."""
    return optim.adafactor(learning_rate=optim.constant_schedule(learning_rate))


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Trained params and the per-step losses (float [steps]: total, class KL, auxiliary LM)."""
    params: Params
    losses: np.ndarray
    kl: np.ndarray
    lm: np.ndarray


def train(prompt_model: PromptModel, params: Params, task: ClassTask, steps: int, batch_size: int = 8,
          tx: Optional[optax.GradientTransformation] = None, seed: int = 0, alpha: float = 0.0,
          lm_batches: Optional[Callable[[int], Batch]] = None) -> TrainResult:
    """Trains on `task` for `steps` steps of `batch_size` examples (epochs of a `seed`-shuffled order), minimising
    KL(labels || model's class distribution), plus `alpha` x the LM loss of `lm_batches(step)` when given.

    tx: the optimizer (default `default_optimizer()`; a masked one trains only PEFT parameters). Reuse the same
    tx object across calls to reuse the compiled step. Raises UserError for no examples, steps < 1,
    batch_size < 1 or alpha outside [0, 1].
    """
    if not task.inputs:
        raise UserError("few-shot training: no training examples")
    if steps < 1 or batch_size < 1 or not 0.0 <= alpha <= 1.0 or (alpha > 0.0 and lm_batches is None):
        raise UserError(f"few-shot training: steps={steps} (>= 1), batch_size={batch_size} (>= 1), alpha={alpha} "
                        f"(in [0, 1], > 0 needs lm_batches)")
    tx = tx or _default_tx()
    step_fn = _train_step(prompt_model, tx, task.num_classes, float(alpha))
    opt_state = tx.init(params)
    params = jax.tree.map(jnp.array, params)  # donated below: never the caller's buffers
    rng = np.random.default_rng(seed)
    order: list = []
    history = []
    for step in range(steps):
        rows = []
        while len(rows) < batch_size:
            if not order:
                order = list(rng.permutation(len(task.inputs)))
            rows.append(order.pop())
        batch = training_batch(prompt_model, task, np.asarray(rows))
        lm_batch = lm_batches(step) if lm_batches is not None and alpha > 0.0 else None
        params, opt_state, metrics = step_fn(params, opt_state, batch, lm_batch)
        history.append(metrics)
    values = jax.device_get(history)
    return TrainResult(params, *(np.asarray([m[k] for m in values], np.float64) for k in ("loss", "kl", "lm")))


@functools.lru_cache(maxsize=None)
def _default_tx() -> optax.GradientTransformation:
    return default_optimizer()


__all__ = ["PromptModel", "ClassTask", "TrainResult", "peft_variant", "init_params", "class_log_likelihoods",
           "accuracy", "kl_to_targets", "training_batch", "default_optimizer", "train"]
