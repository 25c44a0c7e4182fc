"""SPoT's prompt library (Vu et al. 2022, sec. 4): source prompts with their task embeddings, ranked for a target by
cosine similarity of task embeddings ("cosine similarity of average tokens").

On disk a library is a directory: one PEFT safetensors file per source (text2text.peft.io; its one leaf
encoder/prompt_tuning/prompt [1, P, width] loads into any prompt-tuning T5 of that length and width) and
`index.json`: the embedding recipe every source shares and, per source, its name, file, prompt length, width,
training steps and task embedding (a list of `width` floats).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from text2text.errors import UserError
from text2text.peft import read_peft_file, save_peft_params

FORMAT = "text2text-spot-library"
INDEX = "index.json"
PROMPT_LEAF = "encoder/prompt_tuning/prompt"


@dataclasses.dataclass(frozen=True)
class EmbeddingRecipe:
    """How a task embedding is made: `steps` steps of prompt tuning at `learning_rate` (Adafactor, constant) with
    `batch_size` examples, from the prompt drawn with `init_seed`. Sources and targets compared by one library
    share it. UserError for steps < 1, batch_size < 1 or learning_rate <= 0."""
    steps: int = 20
    init_seed: int = 0
    learning_rate: float = 0.3
    batch_size: int = 8

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise UserError(f"SPoT embedding recipe: steps={self.steps} and batch_size={self.batch_size} must be "
                            f">= 1, learning_rate={self.learning_rate} > 0")


@dataclasses.dataclass(frozen=True, eq=False)
class SourcePrompt:
    """One library entry: `prompt` float32 [P, width] trained `steps` steps on source task `name`, and its task
    embedding float32 [width] made by `recipe`."""
    name: str
    prompt: np.ndarray
    embedding: np.ndarray
    recipe: EmbeddingRecipe
    steps: int

    def __post_init__(self):
        object.__setattr__(self, "prompt", np.asarray(self.prompt, np.float32))
        object.__setattr__(self, "embedding", np.asarray(self.embedding, np.float32))
        if self.prompt.ndim != 2 or self.embedding.shape != (self.prompt.shape[1],):
            raise UserError(f"SPoT source {self.name!r}: prompt of shape {self.prompt.shape} (expected [P, width]) "
                            f"with a task embedding of shape {self.embedding.shape} (expected [width])")

    @property
    def length(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def width(self) -> int:
        return int(self.prompt.shape[1])


def average_prompt(prompt: np.ndarray) -> np.ndarray:
    """float32 [width]: a prompt [P, width] averaged over its tokens (SPoT's average-token task embedding)."""
    return np.asarray(prompt, np.float32).mean(axis=0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """a . b / (|a| |b|) of two vectors [width], computed in float64 (0 when either is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else 0.0


def _file_name(index: int, name: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.safetensors"


class PromptLibrary:
    """Source prompts by name (insertion order), all made with one embedding recipe."""

    def __init__(self, recipe: Optional[EmbeddingRecipe] = None, sources: Iterable[SourcePrompt] = ()):
        self._recipe = recipe
        self._sources: Dict[str, SourcePrompt] = {}
        for source in sources:
            self.add(source)

    def add(self, source: SourcePrompt) -> None:
        """Adds `source`; UserError if its name is taken or its recipe is not the library's."""
        if source.name in self._sources:
            raise UserError(f"SPoT library already has a source named {source.name!r}")
        if self._recipe is None:
            self._recipe = source.recipe
        elif source.recipe != self._recipe:
            raise UserError(f"SPoT source {source.name!r} was embedded with {source.recipe}, the library with "
                            f"{self._recipe}")
        self._sources[source.name] = source

    @property
    def recipe(self) -> EmbeddingRecipe:
        """The shared embedding recipe (the default one for an empty library made without one)."""
        return self._recipe or EmbeddingRecipe()

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, name: str) -> SourcePrompt:
        if name not in self._sources:
            raise UserError(f"SPoT library has no source {name!r}; it has {list(self._sources)}")
        return self._sources[name]

    def _require_sources(self) -> None:
        if not self._sources:
            raise UserError("SPoT: the prompt library is empty; build one with tasks.prompting.spot.build_library")

    def check(self, length: Optional[int], width: int) -> int:
        """The target prompt length (`length`, or the sources' when None) after checking that every source has that
        length and `width`. UserError for an empty library or naming the first source that differs."""
        self._require_sources()
        length = next(iter(self._sources.values())).length if length is None else int(length)
        for source in self._sources.values():
            if source.length != length or source.width != width:
                raise UserError(f"SPoT source {source.name!r} has a prompt of length {source.length} and width "
                                f"{source.width}; the target's has length {length} and width {width}")
        return length

    def rank(self, embedding: np.ndarray) -> Tuple[Tuple[str, float], ...]:
        """((source name, cosine similarity of its task embedding with `embedding` [width]), ...), most similar first
        (ties in insertion order). UserError for an empty library or a source of another width."""
        self._require_sources()
        scored: List[Tuple[str, float]] = []
        for source in self._sources.values():
            if source.embedding.shape != np.shape(embedding):
                raise UserError(f"SPoT source {source.name!r} has a task embedding of width {source.width}; the "
                                f"target's has {np.shape(embedding)[0]}")
            scored.append((source.name, cosine_similarity(source.embedding, embedding)))
        return tuple(sorted(scored, key=lambda item: -item[1]))

    def save(self, directory: str) -> None:
        """Writes one PEFT file per source and index.json into `directory` (created if missing)."""
        os.makedirs(directory, exist_ok=True)
        entries = []
        for i, source in enumerate(self._sources.values()):
            file_name = _file_name(i, source.name)
            save_peft_params(os.path.join(directory, file_name),
                             {"encoder": {"prompt_tuning": {"prompt": source.prompt[None]}}}, "prompt_tuning")
            entries.append({"name": source.name, "file": file_name, "prompt_length": source.length,
                            "width": source.width, "steps": source.steps,
                            "embedding": [float(x) for x in source.embedding]})
        index = {"format": FORMAT, "recipe": dataclasses.asdict(self.recipe), "sources": entries}
        with open(os.path.join(directory, INDEX), "w") as f:
            json.dump(index, f, indent=1)

    @classmethod
    def load(cls, directory: str) -> "PromptLibrary":
        """The library saved in `directory`. UserError naming the file for a missing, foreign, invalid (not JSON)
        or incomplete index (a missing key or a value of the wrong type), or a missing prompt file."""
        path = os.path.join(directory, INDEX)
        if not os.path.isfile(path):
            raise UserError(f"SPoT prompt library {directory}: no {INDEX}")
        try:
            with open(path) as f:
                index = json.load(f)
        except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
            raise UserError(f"{path} is not a valid SPoT prompt library index: invalid JSON ({e})") from e
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        if found != FORMAT:
            raise UserError(f"{path} is not a SPoT prompt library index (format={found!r})")
        try:
            recipe = EmbeddingRecipe(**index["recipe"])
            entries = [(str(entry["name"]), str(entry["file"]), np.asarray(entry["embedding"], np.float32),
                        int(entry["steps"])) for entry in index["sources"]]
        except KeyError as e:
            raise UserError(f"{path}: the SPoT prompt library index has no key {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: malformed SPoT prompt library index ({e})") from e
        library = cls(recipe)
        for name, file_name, embedding, steps in entries:
            leaves, _ = read_peft_file(os.path.join(directory, file_name))
            if PROMPT_LEAF not in leaves:
                raise UserError(f"SPoT source {name!r}: {file_name} holds no {PROMPT_LEAF}")
            library.add(SourcePrompt(name, leaves[PROMPT_LEAF][0], embedding, recipe, steps))
        return library


__all__ = ["EmbeddingRecipe", "SourcePrompt", "PromptLibrary", "average_prompt", "cosine_similarity"]
