"""Soft prompt transfer (SPoT; Vu et al. 2022, "SPoT: Better Frozen Model Adaptation through Soft Prompt Transfer").

Prompt tuning (Lester et al. 2021) trains only P prompt vectors in front of a frozen T5's input embeddings. SPoT keeps
a library of source prompts, each trained on a source task, with one task embedding per source. For a target task it
trains a prompt briefly to get the target's task embedding, ranks the sources by cosine similarity of task
embeddings, initialises the target prompt from the most similar source's prompt and prompt-tunes it on the target
(SPoT sec. 4: task prompts as task embeddings, "cosine similarity of average tokens", best-source retrieval).

Task embedding: the prompt after a short training on the task (an early checkpoint), averaged over its P tokens:
float32 [width]. Every task embedding starts from the same initial prompt (rows of the base's vocabulary embedding
drawn with `EmbeddingRecipe.init_seed`) and trains the recipe's steps at its learning rate and batch size, so the
similarities compare what the tasks taught the prompt rather than two random draws. A source prompt continues its own
short training to its full number of steps, so its early checkpoint is its task embedding.

The library's storage (one PEFT file per source plus a JSON index) is `tasks.prompting.spot_library`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.prompting import engine
from tasks.prompting.core import Example, Template
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting, details, evaluate
from tasks.prompting.problems import template_fields
from tasks.prompting.spot_library import INDEX, EmbeddingRecipe, PromptLibrary, SourcePrompt, average_prompt
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel
from text2text.peft import PeftConfig, PromptTuningConfig, peft_optimizer, prompt_tuning

Params = Any
DEFAULT_PROMPT_LENGTH = 20
DEFAULT_LEARNING_RATE = 0.3  # Lester et al. 2021 tune prompts with Adafactor at 0.3


@dataclasses.dataclass(frozen=True)
class SourceTask:
    """A task a prompt is trained on: classification when `problem` is given (KL to the labels over its
    verbalizer's classes under problem.templates[0], as engine.train) or generative when `template` is given
    (seq2seq cross-entropy of template.format_inputs(example) -> example[target_key]). Exactly one of the two."""
    name: str
    examples: Tuple[Example, ...]
    problem: Optional[Problem] = None
    template: Optional[Template] = None
    target_key: str = "label"

    def __post_init__(self):
        object.__setattr__(self, "examples", tuple(self.examples))
        if (self.problem is None) == (self.template is None):
            raise UserError(f"SPoT source task {self.name!r}: give exactly one of problem= (classification) or "
                            "template= (generative)")
        if not self.examples:
            raise UserError(f"SPoT source task {self.name!r} has no examples")
        if self.template is not None and any(self.target_key not in ex for ex in self.examples):
            raise UserError(f"SPoT source task {self.name!r}: an example has no target field {self.target_key!r}")


def prompt_tuning_model(base: engine.PromptModel, length: int) -> engine.PromptModel:
    """The base T5 with a tuned prompt of `length` tokens in front of its encoder inputs (same vocabulary, feature
    lengths and batch size). One object per (base, length), so engine's compiled steps are reused across seeds.
    UserError for a class-head base or one that already has PEFT parameters."""
    model = base.model
    if base.has_class_head or not isinstance(model, EncoderDecoderModel) or model.config.peft is not None:
        raise UserError("SPoT needs a plain encoder-decoder base model (no class head, no PEFT methods); got "
                        f"{type(model).__name__} with peft={getattr(model.config, 'peft', None)}")
    return engine.peft_variant(base, PeftConfig(prompt_tuning=PromptTuningConfig(length=length)))


@functools.lru_cache(maxsize=16)
def prompt_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adafactor at a constant `learning_rate` on the prompt only (one object per rate: engine caches on it)."""
    return peft_optimizer(engine.default_optimizer(learning_rate), "prompt_tuning")


def with_prompt(params: Params, prompt: np.ndarray) -> Params:
    """`params` (a base T5's, or a prompt-tuning T5's) with encoder/prompt_tuning/prompt set to `prompt` [P, width]."""
    encoder = {**params["encoder"], "prompt_tuning": {"prompt": jnp.asarray(prompt, jnp.float32)[None]}}
    return {**params, "encoder": encoder}


def prompt_of(params: Params) -> np.ndarray:
    """float32 [P, width]: the tuned prompt of a prompt-tuning T5's params."""
    return np.asarray(jax.device_get(params["encoder"]["prompt_tuning"]["prompt"]), np.float32)[0]


def initial_params(setting: Setting, length: int, init_seed: int) -> Params:
    """The frozen base params with a prompt [P, width] of vocabulary embedding rows drawn with `init_seed`
    (text2text.peft.prompt_tuning's 'vocab' initialisation)."""
    embedding = setting.base_params["token_embedder"]["embedding"]
    prompt = prompt_tuning.initial_prompt(jax.random.PRNGKey(init_seed), embedding, PromptTuningConfig(length=length))
    return with_prompt(setting.base_params, np.asarray(prompt)[0])


def _generative_batches(prompt_model: engine.PromptModel, task: SourceTask, batch_size: int, seed: int):
    lengths = prompt_model.feature_lengths
    enc = prompt_model.tokens([task.template.format_inputs(ex) for ex in task.examples], lengths["inputs"], "input")
    dec = prompt_model.tokens([str(ex[task.target_key]) for ex in task.examples], lengths["targets"], "target")

    @functools.lru_cache(maxsize=None)
    def epoch(i: int) -> np.ndarray:
        return np.random.default_rng((seed, i)).permutation(len(enc))

    def batch(step: int) -> engine.Batch:
        positions = range(step * batch_size, (step + 1) * batch_size)
        rows = np.asarray([epoch(p // len(enc))[p % len(enc)] for p in positions])
        return prompt_model.pair_batch(enc[rows], dec[rows])

    return batch


def prompt_tune(setting: Setting, task: SourceTask, params: Params, steps: int, learning_rate: float,
                batch_size: int, seed: int = 0) -> Params:
    """`params` (base + prompt [1, P, width]) after `steps` steps of prompt tuning on `task` (only the prompt
    trains; engine.train). A generative task trains with engine.train's auxiliary LM loss at alpha = 1 on its
    (input, target) pairs: its class term is a one-class task, whose KL is identically zero."""
    length = prompt_of(params).shape[0]
    prompt_model = prompt_tuning_model(setting.base, length)
    tx = prompt_optimizer(float(learning_rate))
    if task.problem is not None:
        return engine.train(prompt_model, params, task.problem.class_task(task.examples), steps, batch_size, tx,
                            seed).params
    inputs = [task.template.format_inputs(ex) for ex in task.examples]
    one_class = engine.ClassTask(inputs, [str(task.examples[0][task.target_key])], np.zeros(len(inputs), int))
    return engine.train(prompt_model, params, one_class, steps, batch_size, tx, seed, alpha=1.0,
                        lm_batches=_generative_batches(prompt_model, task, batch_size, seed)).params


def _early_checkpoint(setting: Setting, task: SourceTask, recipe: EmbeddingRecipe, length: int, seed: int) -> Params:
    params = initial_params(setting, length, recipe.init_seed)
    return prompt_tune(setting, task, params, recipe.steps, recipe.learning_rate, recipe.batch_size, seed)


def task_embedding(setting: Setting, task: SourceTask, recipe: EmbeddingRecipe = EmbeddingRecipe(),
                   length: int = DEFAULT_PROMPT_LENGTH, seed: int = 0) -> np.ndarray:
    """float32 [width]: the average over its tokens of a prompt trained `recipe.steps` steps on `task` from the
    recipe's shared initial prompt (`seed` orders the examples). SPoT's average-token task embedding."""
    return average_prompt(prompt_of(_early_checkpoint(setting, task, recipe, length, seed)))


def train_source_prompt(setting: Setting, task: SourceTask, steps: int, recipe: EmbeddingRecipe = EmbeddingRecipe(),
                        length: int = DEFAULT_PROMPT_LENGTH, seed: int = 0) -> SourcePrompt:
    """A library entry for `task`: its task embedding (the recipe's early checkpoint, averaged) and its prompt
    [length, width] after `steps` steps in all (the early checkpoint trained on for steps - recipe.steps more, at
    the recipe's learning rate and batch size). UserError if steps < recipe.steps."""
    if steps < recipe.steps:
        raise UserError(f"SPoT source {task.name!r}: steps={steps} is fewer than the embedding's {recipe.steps}")
    params = _early_checkpoint(setting, task, recipe, length, seed)
    embedding = average_prompt(prompt_of(params))
    if steps > recipe.steps:
        params = prompt_tune(setting, task, params, steps - recipe.steps, recipe.learning_rate, recipe.batch_size,
                             seed + 1)
    return SourcePrompt(task.name, prompt_of(params), embedding, recipe, steps)


def build_library(setting: Setting, sources: Sequence[SourceTask], directory: Optional[str] = None,
                  steps: Optional[int] = None, recipe: EmbeddingRecipe = EmbeddingRecipe(),
                  length: int = DEFAULT_PROMPT_LENGTH, seed: int = 0) -> PromptLibrary:
    """A PromptLibrary with one source prompt per task in `sources` (train_source_prompt, `steps` each, default
    setting.steps), saved to `directory` when given. UserError for no sources or a repeated name."""
    if not sources:
        raise UserError("SPoT: build_library was given no source tasks")
    library = PromptLibrary(recipe)
    for task in sources:
        library.add(train_source_prompt(setting, task, steps or setting.steps, recipe, length, seed))
    if directory is not None:
        library.save(directory)
    return library


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """The target's trained params (base + prompt), the chosen source, the ranking ((name, cosine), best first) and
    the target's task embedding float32 [width]."""
    params: Params
    source: str
    ranking: Tuple[Tuple[str, float], ...]
    embedding: np.ndarray


def transfer(setting: Setting, library: PromptLibrary, task: SourceTask, steps: int,
             length: Optional[int] = None, learning_rate: float = DEFAULT_LEARNING_RATE,
             batch_size: Optional[int] = None, seed: int = 0, embedding_steps: Optional[int] = None) -> TransferResult:
    """SPoT on a target `task`: its task embedding (the library's recipe, `embedding_steps` overriding its steps),
    the sources ranked by cosine similarity, the target prompt initialised from the best source's prompt and then
    prompt-tuned `steps` steps (0: left at the source's values) at `learning_rate` with `batch_size` examples
    (default setting.batch_size). `length` defaults to the library's prompt length.

    UserError for an empty library or a source whose prompt length or width differs from the target's.
    """
    width = int(setting.base_params["token_embedder"]["embedding"].shape[1])
    length = library.check(length, width)
    recipe = library.recipe if embedding_steps is None else dataclasses.replace(library.recipe, steps=embedding_steps)
    embedding = task_embedding(setting, task, recipe, length, seed)
    ranking = library.rank(embedding)
    best = ranking[0][0]
    params = with_prompt(setting.base_params, library[best].prompt)
    if steps > 0:
        params = prompt_tune(setting, task, params, steps, learning_rate, batch_size or setting.batch_size, seed)
    return TransferResult(params, best, ranking, embedding)


def spot(setting: Setting, problem: Problem, data: FewShotData, seed: int, *,
         library: Union[str, PromptLibrary], prompt_length: Optional[int] = None,
         embedding_steps: Optional[int] = None, learning_rate: float = DEFAULT_LEARNING_RATE,
         steps: Optional[int] = None, demo_library_if_missing: bool = False) -> MethodResult:
    """SPoT as a few-shot method: transfer from `library` (a PromptLibrary or its directory) to `problem`'s K
    training examples, then test accuracy by rank classification under the main pattern.

    Options: prompt_length (default: the library's), embedding_steps (the target's short training; default: the
    library's recipe, which keeps its embedding comparable with the sources'), learning_rate (prompt tuning,
    default 0.3), steps (target training, default setting.steps; batch size setting.batch_size).
    demo_library_if_missing: when `library` is a directory without a library, first build one there from the
    demo's training families (demo_sources(), prompt length `prompt_length` or 20, setting.steps steps each,
    at least the embedding recipe's).
    Details: source (the chosen one), ranking ([name, cosine] best first), prompt_length.
    """
    if not isinstance(library, PromptLibrary):
        if demo_library_if_missing and not os.path.isfile(os.path.join(library, INDEX)):
            build_library(setting, demo_sources(), library, steps=max(setting.steps, EmbeddingRecipe().steps),
                          length=prompt_length or 20, seed=0)
        library = PromptLibrary.load(library)
    target = SourceTask(problem.name, data.train, problem=problem)
    result = transfer(setting, library, target, setting.steps if steps is None else steps, prompt_length,
                      learning_rate, setting.batch_size, seed, embedding_steps)
    length = prompt_of(result.params).shape[0]
    accuracy = evaluate(prompt_tuning_model(setting.base, length), result.params, problem, data.test)
    return MethodResult(accuracy, details(source=result.source, prompt_length=length,
                                          ranking=[[name, sim] for name, sim in result.ranking]))


def demo_sources(examples_per_family: int = 256, generative: bool = False) -> Tuple[SourceTask, ...]:
    """Source tasks from the demo's training families (tasks.demo.families): the classification ones (word_polarity,
    word_topic, entailment) as Problems over their training templates and verbalizers; with `generative`, the
    others too, under their first template with the answer text as target. The first `examples_per_family`
    training examples of each."""
    from tasks.demo import families  # the demo's generators, only when a demo library is built

    out = []
    for family in families.FAMILIES:
        if family.held_out or (family.verbalizer is None and not generative):
            continue
        examples = families.generate(family.name, "train")[:examples_per_family]
        templates = family.train_templates
        if family.verbalizer is None:
            out.append(SourceTask(family.name, examples, template=templates[0]))
        else:
            fields = tuple(dict.fromkeys(f for t in templates for f in template_fields(t)))
            out.append(SourceTask(family.name, examples, Problem(family.name, templates, family.verbalizer, fields)))
    return tuple(out)


__all__ = ["SourceTask", "TransferResult", "prompt_tuning_model", "prompt_optimizer", "with_prompt", "prompt_of",
           "initial_params", "prompt_tune", "task_embedding", "train_source_prompt", "build_library", "transfer",
           "spot", "demo_sources", "EmbeddingRecipe", "PromptLibrary", "SourcePrompt", "average_prompt"]
