"""Command-line front end: parse flags, load gin files and bindings, run the configured mode.

Every user error ends as one line on stderr and exit code 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
import gc
import importlib
import re
import sys
import traceback
from typing import Sequence

import gin

from text2text import console, gin_load, gin_sources
from text2text.errors import UserError, embedded_user_error

# OSErrors the user fixes on their machine: one line, like a UserError, instead of a traceback.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
GIN_CONFIGS_DIR = gin_sources.GIN_CONFIGS_DIR
MAX_COLLECTIONS = 4  # garbage-collection passes `cli` runs before returning

# mode name -> (module, function); gin files choose the mode with `launch.run.mode = "..."`.
MODES = {
    "train": ("text2text.trainer", "train"),
    "eval": ("text2text.modes", "evaluate_checkpoints"),
    "infer": ("text2text.modes", "infer_checkpoint"),
    "score": ("text2text.modes", "score_checkpoint"),
    "demo": ("text2text.demo", "run_demo"),
    "export": ("text2text.export", "export_checkpoint"),
    "fewshot": ("tasks.prompting.fewshot", "run_fewshot"),
}

USAGE = """usage: .venv/bin/python run.py --gin_file=FILE [--gin_file=FILE ...] [--gin.KEY=VALUE ...]
                               [--gin_search_paths=DIR[,DIR...]] [--verbose] [--debug]

Runs the mode a gin file selects (train, eval, infer, score, demo, export, fewshot), e.g.
  .venv/bin/python run.py --gin_file=gin_configs/demo.gin
  .venv/bin/python run.py --gin_file=glue/t5_1_1_small_finetune.gin --gin.MODEL_DIR='"/tmp/glue"'

Gin files are looked up as given, then under --gin_search_paths, the current directory and gin_configs/.
A string value needs gin quotes inside shell quotes: --gin.MODEL_DIR='"runs/x"'.
--verbose shows library log messages; --debug also shows the traceback of an error.
"""


@dataclasses.dataclass
class Flags:
    """What the command line asked for."""

    gin_files: list[str] = dataclasses.field(default_factory=list)
    gin_bindings: list[str] = dataclasses.field(default_factory=list)
    gin_search_paths: list[str] = dataclasses.field(default_factory=list)
    binding_flags: list[str] = dataclasses.field(default_factory=list)  # the flag each gin binding came from
    debug: bool = False
    verbose: bool = False
    help: bool = False


def parse_flags(argv: Sequence[str]) -> Flags:
    """Parses T5X-style flags: --gin_file, --gin.KEY=VALUE, --gin_bindings, --gin_search_paths, --verbose,
    --debug (implies --verbose)."""
    flags = Flags()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            flags.help = True
            continue
        if arg in ("--debug", "--verbose"):
            flags.debug = flags.debug or arg == "--debug"
            flags.verbose = True
            continue
        name, has_value, value = arg.partition("=")
        if name.startswith("--gin.") and len(name) > len("--gin."):
            if not has_value:
                raise UserError(f"flag {arg!r}: expected --gin.KEY=VALUE")
            flags.gin_bindings.append(f"{name[len('--gin.'):]} = {value}")
            flags.binding_flags.append(arg)
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
                flags.binding_flags.append(f"--gin_bindings={value}")
            else:
                flags.gin_search_paths.extend(p for p in value.split(",") if p)
            continue
        known = ["--gin_file", "--gin.KEY=VALUE", "--gin_bindings", "--gin_search_paths", "--verbose", "--debug",
                 "--help"]
        raise UserError(f"unknown flag {name!r}; known flags: {', '.join(known)}")
    if not flags.gin_files and not flags.help:
        raise UserError("no --gin_file given; e.g. --gin_file=gin_configs/demo.gin")
    return flags


def _import_registry(flags: Flags) -> None:
    """Imports the task registry (and with it TensorFlow, seqio and JAX) and keeps TensorFlow off the GPUs, with
    their native start-up chatter hidden unless --verbose/--debug."""
    with console.quiet_native_stderr(enabled=not flags.verbose):
        importlib.import_module("tasks")
        importlib.import_module("text2text.data").hide_gpus_from_tensorflow()


def load_gin(flags: Flags) -> gin_sources.Index:
    """Checks and binds the gin files and bindings into the global gin config (imports the task registry first);
    returns the index of bindings used to explain later gin errors. Raises UserError (one line) on a mistake."""
    labels = flags.binding_flags + [f"--gin_bindings={b}" for b in flags.gin_bindings[len(flags.binding_flags):]]
    return gin_load.load(flags.gin_files, list(zip(labels, flags.gin_bindings)),
                            flags.gin_search_paths, import_registry=lambda: _import_registry(flags))


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
    return gin.get_configurable(function)()


def cli(argv: Sequence[str]) -> int:
    """run.py's entry point: `main`, printing the traceback --debug lets out (exit code 1, as Python's own), then
    freeing what an error's traceback kept alive before the interpreter exits.

    An error's frames (reference cycles) hold e.g. a training run's tf.data iterators, whose pipelines call Python
    (packing, example checks). Freed only at interpreter exit, they wait on threads that can no longer take the
    GIL, and the process hangs instead of exiting (seen under load, about 1 exit in 20).

    Collects at least twice, then until a pass finds nothing (at most MAX_COLLECTIONS passes): an iterator's
    finalizer releases the GIL while its pipeline shuts down, and a thread running meanwhile can hold a reference
    into the garbage for a moment; CPython then keeps those objects for a later pass (PEP 442 resurrection), and
    the pass that kept them may have found nothing else.
    """
    try:
        code = main(argv)
    except Exception:  # pylint: disable=broad-except  # only --debug lets one out of main
        traceback.print_exc()
        code = 1
    for collection in range(MAX_COLLECTIONS):
        if not gc.collect() and collection > 0:
            break
    return code


def main(argv: Sequence[str]) -> int:
    """Runs the command line; returns the process exit code: 0, 2 for a user error, 130 when interrupted.

    Raises the error instead with --debug. `cli` also frees the error's frames (use it to end a process).
    """
    debug = "--debug" in argv
    verbose = debug or "--verbose" in argv
    console.set_native_log_level(verbose)
    console.configure_logging(verbose)
    try:
        flags = parse_flags(argv)
        if flags.help:
            print(USAGE)
            return 0
        index = load_gin(flags)
        try:
            gin.get_configurable(run)()
        except RuntimeError as exc:  # gin: a parameter bound to %gin.REQUIRED was never given a value
            if not str(exc).startswith("Required bindings"):
                raise
            message = gin_load.required_message(exc, index) or f"gin: {str(exc).splitlines()[0]}"
            raise UserError(message) from exc
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a UserError raised inside tf.data reaches here inside TensorFlow's error
        embedded = embedded_user_error(exc)
        if debug or embedded is None:
            raise
        print(f"error: {embedded}", file=sys.stderr)
        return 2
