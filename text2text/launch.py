"""Command-line front end: parse flags, load gin files and bindings, run the configured mode.

Every user error ends as one line on stderr and exit code 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
import importlib
import inspect
import io
import logging
import os
import re
import sys
import tokenize
from typing import Sequence

import gin
from gin import resource_reader

from text2text import errors
from text2text.errors import UserError

# OSErrors the user fixes on their machine: one line, like a UserError, instead of a traceback.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
GIN_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")

# mode name -> (module, function); gin files choose the mode with `launch.run.mode = "..."`.
MODES = {
    "train": ("text2text.trainer", "train"),
    "eval": ("text2text.modes", "evaluate_checkpoints"),
    "infer": ("text2text.modes", "infer_checkpoint"),
    "score": ("text2text.modes", "score_checkpoint"),
    "demo": ("text2text.demo", "run_demo"),
}

USAGE = """usage: python run.py --gin_file=FILE [--gin_file=FILE ...] [--gin.KEY=VALUE ...]
                     [--gin_search_paths=DIR[,DIR...]] [--debug]

Runs the mode a gin file selects (train, eval, infer, score, demo), e.g.
  python run.py --gin_file=gin_configs/demo.gin
  python run.py --gin_file=glue/t5_1_1_small_finetune.gin --gin.MODEL_DIR='"/tmp/glue"'
"""


@dataclasses.dataclass
class Flags:
    """What the command line asked for."""

    gin_files: list[str] = dataclasses.field(default_factory=list)
    gin_bindings: list[str] = dataclasses.field(default_factory=list)
    gin_search_paths: list[str] = dataclasses.field(default_factory=list)
    debug: bool = False
    help: bool = False


def parse_flags(argv: Sequence[str]) -> Flags:
    """Parses T5X-style flags: --gin_file, --gin.KEY=VALUE, --gin_bindings, --gin_search_paths, --debug."""
    flags = Flags()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            flags.help = True
            continue
        if arg == "--debug":
            flags.debug = True
            continue
        name, has_value, value = arg.partition("=")
        if name.startswith("--gin.") and len(name) > len("--gin."):
            if not has_value:
                raise UserError(f"flag {arg!r}: expected --gin.KEY=VALUE")
            flags.gin_bindings.append(f"{name[len('--gin.'):]} = {value}")
            continue
        if name in ("--gin_file", "--gin_bindings", "--gin_search_paths"):
            if not has_value:
                if not args:
                    raise UserError(f"flag {name} needs a value")
                value = args.pop(0)
            if name == "--gin_file":
                flags.gin_files.append(value)
            elif name == "--gin_bindings":
                flags.gin_bindings.append(value)
            else:
                flags.gin_search_paths.extend(p for p in value.split(",") if p)
            continue
        known = ["--gin_file", "--gin.KEY=VALUE", "--gin_bindings", "--gin_search_paths", "--debug", "--help"]
        raise UserError(f"unknown flag {name!r}; known flags: {', '.join(known)}")
    if not flags.gin_files and not flags.help:
        raise UserError("no --gin_file given; e.g. --gin_file=gin_configs/demo.gin")
    return flags


def _search_paths(flags: Flags) -> list[str]:
    return [*flags.gin_search_paths, os.getcwd(), GIN_CONFIGS_DIR]


def resolve_gin_file(path: str, search_paths: Sequence[str]) -> str:
    """Finds a gin file as given or under a search path; a missing one names the closest files."""
    candidates = [path] + [os.path.join(d, path) for d in search_paths if not os.path.isabs(path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            if not os.access(candidate, os.R_OK):
                raise UserError(f"gin file {candidate!r} is not readable")
            try:
                with open(candidate, encoding="utf-8") as f:
                    f.read()
            except UnicodeDecodeError as exc:
                raise UserError(f"gin file {candidate!r} is not UTF-8 text (byte {exc.start}); expected a gin "
                                "config file") from exc
            except OSError as exc:
                raise UserError(f"gin file {candidate!r} cannot be read: {exc.strerror}") from exc
            return candidate
    known = []
    for root in search_paths:
        for dirpath, _, files in os.walk(root):
            known += [os.path.relpath(os.path.join(dirpath, f), root) for f in files if f.endswith(".gin")]
    close = difflib.get_close_matches(path.removeprefix("gin_configs/"), known, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UserError(f"gin file {path!r} not found (searched {', '.join(search_paths)}){hint}")


def _registered_configurables() -> list[str]:
    """Selectors gin knows (including their parameters), for "did you mean" hints."""
    names = []
    for selector, configurable in gin.config._REGISTRY.items():  # pylint: disable=protected-access
        names.append(selector)
        try:
            params = inspect.signature(configurable.wrapped).parameters
        except (TypeError, ValueError):
            params = {}
        names += [f"{selector}.{p}" for p in params]
    return names


def _gin_error(exc: Exception) -> UserError:
    """Turns a gin exception into one line naming the key, with the closest registered names."""
    message = str(exc).strip().splitlines()
    first = message[0] if message else type(exc).__name__
    macro = re.search(r"No bindings specified for '([^'/]+)/gin\.macro'", first)
    required = re.search(r"^([A-Za-z_][\w.]*)/macro\.value set to `%gin\.REQUIRED`", first)
    if required:
        name = required.group(1)
        return UserError(f"gin macro {name} is %gin.REQUIRED but not bound; pass --gin.{name}=VALUE or bind it in a gin file")
    if macro:
        return UserError(f"gin macro {macro.group(1)} is used but never bound; bind it in a gin file or with "
                         f"--gin.{macro.group(1)}=VALUE (MODEL comes from a model file such as models/t5_1_1/small.gin)")
    location = next((line.strip() for line in message[1:] if "line" in line and ("In " in line or "file" in line)), "")
    match = re.search(r"matching '([^']+)'|'([^']+)' doesn't have a parameter named '([^']+)'", first)
    hint = ""
    if match:
        key = match.group(1) or f"{match.group(2)}.{match.group(3)}"
        close = difflib.get_close_matches(key, _registered_configurables(), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
    where = f" ({location})" if location else ""
    return UserError(f"gin: {first}{where}{hint}")


def _package_gin_file_exists(path: str) -> bool:
    """gin's test for a gin file inside a Python package, without its TypeError on namespace packages

    (a folder such as the demo's `runs/` output would otherwise break `include "runs/finetune.gin"`)."""
    try:
        return resource_reader.system_path_file_exists(path)
    except TypeError:
        return False


def _use_safe_gin_file_readers() -> None:
    readers = gin.config._FILE_READERS  # pylint: disable=protected-access
    readers[:] = [(read, _package_gin_file_exists if exists is resource_reader.system_path_file_exists else exists)
                  for read, exists in readers]


def load_gin(flags: Flags) -> None:
    """Parses gin files and bindings into the global gin config (imports the task registry first)."""
    importlib.import_module("tasks")
    _use_safe_gin_file_readers()
    search_paths = _search_paths(flags)
    for path in search_paths:
        if os.path.isdir(path):
            gin.add_config_file_search_path(path)
    files = [resolve_gin_file(f, search_paths) for f in flags.gin_files]
    try:
        gin.parse_config_files_and_bindings(files, flags.gin_bindings, finalize_config=False)
        gin.finalize()
    except (ValueError, KeyError, SyntaxError, OSError) as exc:
        raise _gin_error(exc) from exc
    except tokenize.TokenError as exc:  # an unclosed bracket or string runs to the end of the input
        raise UserError(_unclosed_binding_message(flags.gin_bindings, exc)) from exc


def _unclosed_binding_message(bindings: Sequence[str], exc: tokenize.TokenError) -> str:
    """Names the --gin binding whose bracket or string is never closed (gin only reports end of input)."""
    for binding in bindings:
        try:
            list(tokenize.generate_tokens(io.StringIO(binding).readline))
        except tokenize.TokenError:
            key, _, value = binding.partition(" = ")
            return f"--gin.{key}={value}: unclosed bracket or string in the value"
    return f"gin: {exc.args[0]} (an unclosed bracket or string in a gin file)"


def run(mode: str = "train", cache_dirs: Sequence[str] = (), coordinator_address: str | None = None,
        num_processes: int | None = None, process_id: int | None = None):
    """Runs one mode's entry point with its gin bindings.

    First joins a multi-host job (the explicit coordinator_address/num_processes/process_id, else what
    SLURM, Open MPI, Cloud TPU or JAX_COORDINATOR_ADDRESS provide) and adds `cache_dirs` to seqio's cache
    directories, where `use_cached=True` reads tasks cached by `python -m tasks.cache`.
    """
    if mode not in MODES:
        close = difflib.get_close_matches(mode, MODES, n=2)
        raise UserError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}" + (f" (did you mean {close[0]}?)" if close else ""))
    partitioning = importlib.import_module("text2text.partitioning")
    partitioning.maybe_initialize_distributed(coordinator_address, num_processes, process_id)
    if cache_dirs:
        importlib.import_module("seqio").add_global_cache_dirs([cache_dirs] if isinstance(cache_dirs, str)
                                                               else list(cache_dirs))
    module_name, function_name = MODES[mode]
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        return gin.get_configurable(function)()
    except RuntimeError as exc:
        if str(exc).startswith("Required bindings"):
            raise _gin_error(exc) from exc
        raise


def main(argv: Sequence[str]) -> int:
    """Runs the command line; returns the process exit code."""
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "orbax", "jax", "tensorflow"):  # their INFO chatter buries the progress lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        flags = parse_flags(argv)
        if flags.help:
            print(USAGE)
            return 0
        load_gin(flags)
        gin.get_configurable(run)()
        return 0
    except UserError as exc:
        if debug:
            raise
        # gin appends "In call to configurable ..." lines to errors raised inside configurables; drop them.
        print("error: " + re.sub(r"\n\s*In call to configurable .*", "", str(exc)), file=sys.stderr)
        return 2
    except OSError as exc:
        code = re.match(r"\[Errno (\d+)\]", str(exc))  # also in gin's re-raised proxies, whose .errno is None
        if debug or not code or int(code.group(1)) not in _ENVIRONMENT_ERRNOS:
            raise
        message = re.sub(r"\n\s*In call to configurable .*", "", str(exc))
        print(f"error: {message}; free space or fix the permissions, then rerun", file=sys.stderr)
        return 2
    except Exception as exc:  # a UserError raised inside tf.data arrives wrapped in a TensorFlow error
        message = errors.wrapped_user_error(exc)
        if debug or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
