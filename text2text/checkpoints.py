"""Training checkpoints with orbax: sharded train state + JSON data-iterator state, one directory per step.

Layout: `<directory>/<step>/state/` (orbax pytree of the train state, e.g. {'params', 'opt_state', 'step'};
each process writes its own shards) and `<directory>/<step>/data/` (JSON, e.g. {'batches_consumed': n};
written once, by process 0). Writes are atomic: orbax saves into `<step>.orbax-checkpoint-tmp` and renames
it to `<step>` only after every item and process has finished (on object stores, which lack rename, a
`commit_success.txt` marks completion), so a crash mid-save never leaves a half checkpoint that
`latest_step()` would pick up; leftover tmp directories are removed when a manager opens the directory.

Each save also writes `<step>/text2text_checksums.json` (size and CRC32 of every file of its items) into
the tmp directory just before the rename, so the manifest is part of the same atomic unit. On resume,
`restore_latest` checks the newest checkpoint against its manifest and restores it; a corrupted one is
reported in one warning line, moved aside to `<step>.corrupt-<time>` (never deleted) and the previous
checkpoint is used. A disk-full error while saving becomes a UserError; earlier checkpoints stay intact.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import zlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from text2text.errors import UserError

STATE_ITEM = 'state'
DATA_ITEM = 'data'
PARAMS_KEY = 'params'
MANIFEST_FILE = 'text2text_checksums.json'
CORRUPT_MARK = '.corrupt-'
_TMP_SUFFIX = '.orbax-checkpoint-tmp'
_COMMIT_FILE = 'commit_success.txt'
_TRASH = '.deleted'
_EMBEDDING = 'token_embedder/embedding'
_CHUNK = 1 << 24


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
    """Combine a tree of shapes (arrays or ShapeDtypeStructs) and a tree of shardings into restore targets."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with the arrays' shardings) for a tree of jax.Arrays, as a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _absolute(path: str | epath.PathLike) -> epath.Path:
    """Orbax needs absolute paths; cloud URLs (gs://...) are left as they are."""
    path = str(path)
    return epath.Path(path if "://" in path else os.path.abspath(path))


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match its manifest or cannot be read back."""


def _crc32(path: epath.Path) -> int:
    crc = 0
    with path.open('rb') as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(directory: epath.Path) -> list[epath.Path]:
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        found += _files(path) if path.is_dir() else [path]
    return found


def file_checksums(step_dir: str | epath.PathLike) -> dict[str, list[int]]:
    """{relative path: [size, crc32]} of every file in a step's item directories (state/, data/)."""
    step_dir = epath.Path(step_dir)
    return {str(path.relative_to(step_dir)): [path.stat().length, _crc32(path)]
            for item in (STATE_ITEM, DATA_ITEM) for path in _files(step_dir / item)}


def write_manifest(step_dir: str | epath.PathLike) -> None:
    """Write `<step_dir>/text2text_checksums.json` listing the size and CRC32 of the step's files."""
    step_dir = epath.Path(step_dir)
    (step_dir / MANIFEST_FILE).write_text(json.dumps(file_checksums(step_dir), sort_keys=True))


def verify_manifest(step_dir: str | epath.PathLike) -> bool:
    """Check a step's files against its manifest; False when there is no manifest (nothing to check against).

    Raises CorruptCheckpoint naming the first file that is missing, has another size or another checksum.
    """
    manifest = epath.Path(step_dir) / MANIFEST_FILE
    if not manifest.exists():
        return False
    try:
        expected = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f'unreadable {MANIFEST_FILE}: {e}') from e
    actual = file_checksums(step_dir)
    for name, (size, crc) in sorted(expected.items()):
        if name not in actual:
            raise CorruptCheckpoint(f'file {name} is missing')
        if actual[name][0] != size:
            raise CorruptCheckpoint(f'file {name} has {actual[name][0]} bytes, expected {size}')
        if actual[name][1] != crc:
            raise CorruptCheckpoint(f'file {name} fails its CRC32 check')
    return True


def _key_name(key: Any) -> str:
    for attr in ('key', 'name', 'idx'):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/encoder/...': shape} for the array leaves of a pytree (arrays, ShapeDtypeStructs, metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {'/'.join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves
            if getattr(leaf, 'shape', None) is not None}


def saved_shapes(state_dir: str | epath.PathLike) -> dict[str, tuple[int, ...]]:
    """Leaf shapes recorded in an orbax pytree directory's metadata (reads no array data)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(epath.Path(state_dir))
    finally:
        handler.close()
    return leaf_shapes(getattr(metadata, 'tree', metadata))


def check_shapes(saved: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
    """UserError naming the first parameter whose shape differs (or that only one side has) and both shapes."""
    order = sorted(set(saved) | set(expected),
                   key=lambda k: (not k.endswith(_EMBEDDING), not k.startswith(PARAMS_KEY), k))
    problems = []
    for key in order:
        mine, theirs = expected.get(key), saved.get(key)
        if mine == theirs:
            continue
        if key.endswith(_EMBEDDING) and mine and theirs and mine[1:] == theirs[1:]:
            problems.append(f'vocabulary size {theirs[0]} in the checkpoint but {mine[0]} in the model '
                            f'(T5Config.vocab_size); use the vocabulary and vocab_size the checkpoint was trained with')
        elif theirs is None:
            problems.append(f'the checkpoint has no {key}, which the model has with shape {mine} '
                            '(different number of layers, architecture or optimizer?)')
        elif mine is None:
            problems.append(f'the checkpoint has {key} with shape {theirs}, which the model lacks '
                            '(different number of layers, architecture or optimizer?)')
        else:
            problems.append(f'{key} has shape {theirs} in the checkpoint but {mine} in the model '
                            '(the checkpoint was written for another model config)')
    if problems:
        more = f' (and {len(problems) - 1} more mismatches)' if len(problems) > 1 else ''
        raise UserError(f'{where}: {problems[0]}{more}')


def _disk_full(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is 'no space left on device'."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if 'No space left on device' in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class CheckpointManager:
    """Saves/restores train state and data-iterator state, keeping the newest `max_to_keep` (None: all).

    `save` writes at steps that are multiples of `save_interval_steps`, when a preemption was signalled
    (multi-host jobs), or when forced. A writer removes leftover tmp directories of interrupted saves when
    it opens `directory`; readers that may run beside a training job (eval, infer) must pass
    `read_only=True` so they never delete a save in progress.

    With `async_save=True`, `save` returns once device arrays are copied to host memory and the files are
    written in a background thread; call `wait_until_finished()` before reading them and `close()` at the end.
    """

    def __init__(self, directory: str | epath.PathLike, save_interval_steps: int = 1000,
                 max_to_keep: int | None = None, async_save: bool = True, read_only: bool = False):
        if save_interval_steps < 1:
            raise UserError(f'checkpoint save_interval_steps must be >= 1, got {save_interval_steps}')
        if max_to_keep is not None and max_to_keep < 1:
            raise UserError(f'checkpoint max_to_keep must be >= 1 or None (keep all), got {max_to_keep}')
        self.directory = _absolute(directory)
        self._async_save = async_save
        self._read_only = read_only
        policies = ocp.checkpoint_managers
        # Always the async checkpointer: its post-finalization hook writes the manifest before the rename.
        # Old checkpoints are first renamed into `.deleted/` (atomic on local disks) and removed from there,
        # so a crash mid-deletion never leaves a partial step directory.
        self._local = '://' not in str(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True, read_only=read_only,
            todelete_subdir=_TRASH if self._local and not read_only else None,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_pending_manifest),
            cleanup_tmp_directories=not read_only, create=not read_only, save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(save_interval_steps), policies.PreemptionCheckpointingPolicy()]))
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))
        except OSError as e:
            raise UserError(f'checkpoint directory {self.directory}: {e.strerror or e}') from e
        self._empty_trash()

    def _empty_trash(self) -> None:
        """Remove checkpoints that max_to_keep retired (already renamed out of the step namespace)."""
        trash = self.directory / _TRASH
        if not self._read_only and jax.process_index() == 0 and trash.is_dir():
            for path in trash.iterdir():
                if path.is_dir():
                    path.rmtree()
                else:
                    path.unlink()

    def _pending_dirs(self) -> list[epath.Path]:
        """Directories of saves not yet committed: `<step>.orbax-checkpoint-tmp`, or on object stores (no
        rename) step directories that lack orbax's commit marker."""
        children = list(self.directory.iterdir()) if self.directory.exists() else []
        if self._local:
            return [p for p in children if p.name.endswith(_TMP_SUFFIX)]
        return [p for p in children if p.name.isdigit() and not (p / _COMMIT_FILE).exists()]

    def _write_pending_manifest(self) -> None:
        """Runs on the primary host after all items are written and before the save is committed."""
        for path in self._pending_dirs():
            write_manifest(path)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without force would write a checkpoint."""
        return self._manager.should_save(step)

    def _finish_failed_writes(self) -> None:
        """Orbax stops waiting at a save's first failed write; let the others end before touching its files."""
        async_manager = getattr(getattr(self._manager, '_checkpointer', None), '_async_manager', None)
        for commit in getattr(async_manager, '_commit_futures', None) or []:
            try:
                commit.result(timeout=600)
            except Exception:  # pylint: disable=broad-except  # the first failure is already being reported
                pass

    def _disk_full_error(self, exc: BaseException) -> UserError:
        """UserError for a save that ran out of space, after removing that save's uncommitted tmp directory."""
        self._finish_failed_writes()
        pending = [p for p in self._pending_dirs() if p.name.endswith(_TMP_SUFFIX)]
        partial = [p.name.removesuffix(_TMP_SUFFIX) for p in pending]
        if jax.process_index() == 0:
            for path in pending:
                path.rmtree(missing_ok=True)
        self._manager.reload()
        steps = self.all_steps()
        kept = f'the previous checkpoint (step {steps[-1]}) is intact' if steps else 'no earlier checkpoint exists'
        return UserError(f'disk full while saving checkpoint step {", ".join(partial) or "?"} to {self.directory} '
                         f'({_first_line(exc)}); {kept}; free space and rerun to resume from it')

    def save(self, step: int, state: Any, data_state: dict | None = None, force: bool = False) -> bool:
        """Save `state` (pytree of jax.Arrays) and JSON-serialisable `data_state` if `step` is due (or `force`).

        Returns whether a save was started. `state` should be a mapping (or dataclass) with a 'params'
        entry so that `restore_params_only` can read the parameters alone. Running out of disk space
        (now or in an earlier background save) raises UserError.
        """
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                     DATA_ITEM: ocp.args.JsonSave(dict(data_state or {}))})
        try:
            self._empty_trash()
            saved = self._manager.save(step, args=args, force=force)
            if not self._async_save:
                self._manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-except
            if _disk_full(e):
                raise self._disk_full_error(e) from e
            raise
        return saved

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore (state, data_state) of `step` (None: latest) into `abstract_state`'s shapes and shardings.

        `abstract_state` is a tree of jax.ShapeDtypeStruct with `sharding` set (see `abstract_with_shardings`);
        arrays are read straight into those shardings, so a checkpoint written on N devices restores onto
        any other mesh. `data_state` is {} when none was saved. A checkpoint of another model shape
        raises UserError naming the parameter and both shapes.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise UserError(f'no checkpoint found in {self.directory}')
        if step not in self._manager.all_steps():
            raise UserError(f'checkpoint step {step} not found in {self.directory}; '
                            f'available steps: {self.all_steps()}')
        state_dir = self.directory / str(step) / STATE_ITEM
        check_shapes(saved_shapes(state_dir), leaf_shapes(abstract_state), f'checkpoint {state_dir}')
        return self._restore_arrays(step, abstract_state)

    def _restore_arrays(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                     DATA_ITEM: ocp.args.JsonRestore()})
        restored = self._manager.restore(step, args=args)
        return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {})

    def _check_and_restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """`restore(step)`, raising CorruptCheckpoint when the files fail their manifest or cannot be read."""
        step_dir = self.directory / str(step)
        verified = verify_manifest(step_dir)
        try:
            shapes = saved_shapes(step_dir / STATE_ITEM)
        except Exception as e:  # pylint: disable=broad-except
            raise CorruptCheckpoint(f'unreadable metadata: {_first_line(e)}') from e
        check_shapes(shapes, leaf_shapes(abstract_state), f'checkpoint {step_dir / STATE_ITEM}')
        try:
            return self._restore_arrays(step, abstract_state)
        except Exception as e:  # pylint: disable=broad-except
            if verified or 'RESOURCE_EXHAUSTED' in str(e) or isinstance(e, MemoryError):
                raise  # intact files: a real error, not corruption
            raise CorruptCheckpoint(f'restore failed: {_first_line(e)}') from e

    def _move_aside(self, step: int, problem: str, fallback: int | None) -> None:
        """Rename a corrupt step directory to `<step>.corrupt-<time>` and say so in one warning line."""
        source = self.directory / str(step)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.directory / f'{step}{CORRUPT_MARK}{stamp}'
        for n in range(1, 1000):
            if not target.exists():
                break
            target = self.directory / f'{step}{CORRUPT_MARK}{stamp}-{n}'
        if jax.process_index() == 0:
            source.rename(target)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f'text2text_move_aside_{step}')
        self._manager.reload()
        then = f'falling back to step {fallback}' if fallback is not None else 'no earlier checkpoint; starting afresh'
        logging.warning('checkpoint %s is corrupt (%s); moved it to %s; %s', source, problem, target.name, then)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest checkpoint that passes its checks, or None when none does.

        Corrupt checkpoints (files that fail the manifest, unreadable metadata or arrays) are moved aside,
        newest first, until an intact one is found; model-shape mismatches raise UserError instead.
        """
        steps = self.all_steps()
        for index in range(len(steps) - 1, -1, -1):
            try:
                state, data_state = self._check_and_restore(steps[index], abstract_state)
                return steps[index], state, data_state
            except CorruptCheckpoint as e:
                self._move_aside(steps[index], str(e), steps[index - 1] if index else None)
        return None

    def wait_until_finished(self) -> None:
        """Block until any background save has been written and committed (disk full: UserError)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-except
            if _disk_full(e):
                raise self._disk_full_error(e) from e
            raise

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self.wait_until_finished()
        self._manager.close()
        self._empty_trash()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0] if text else ""}'[:300]


def _state_dir(path: epath.Path) -> epath.Path:
    """Resolve a manager directory (latest step), a step directory or a state directory to the state item."""
    if (path / STATE_ITEM).is_dir():
        return path / STATE_ITEM
    if path.is_dir() and path.name == STATE_ITEM:
        return path
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / STATE_ITEM).is_dir()] \
        if path.is_dir() else []
    if not steps:
        raise UserError(f'{path} is not a text2text checkpoint (expected <dir>/<step>/{STATE_ITEM} directories)')
    return path / str(max(steps)) / STATE_ITEM


def restore_params_only(path: str | epath.PathLike, abstract_params: Any) -> Any:
    """Read only the 'params' entry of a checkpoint's train state, e.g. to start fine-tuning from it.

    `path` is a checkpoint directory (its latest step is used) or one step's directory. Leaves of
    `abstract_params` with a `sharding` come back as jax.Arrays in that sharding, others as numpy arrays.
    Parameters of another shape (e.g. vocabulary size) raise UserError naming the parameter and both shapes.
    """
    state_dir = _state_dir(_absolute(path))
    try:
        saved = {k: v for k, v in saved_shapes(state_dir).items() if k.startswith(PARAMS_KEY + '/')}
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(f'cannot read checkpoint metadata in {state_dir}: {_first_line(e)}') from e
    check_shapes(saved, leaf_shapes({PARAMS_KEY: abstract_params}), f'checkpoint {state_dir}')
    target = {PARAMS_KEY: abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(f'cannot restore params from {state_dir}: {e}') from e
    return restored[PARAMS_KEY]
