"""Training checkpoints with orbax: sharded train state + JSON data-iterator state, one directory per step.

Layout: `<directory>/<step>/state/` (orbax pytree of the train state, e.g. {'params', 'opt_state', 'step'};
each process writes its own shards) and `<directory>/<step>/data/` (JSON, e.g. {'batches_consumed': n};
written once, by process 0). Writes are atomic: orbax saves into `<step>.orbax-checkpoint-tmp` and renames
it to `<step>` only after every item and process has finished (on object stores, which lack rename, a
`commit_success.txt` marks completion), so a crash mid-save never leaves a half checkpoint that
`latest_step()` would pick up; leftover tmp directories are removed when a manager opens the directory.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from text2text.errors import UserError

STATE_ITEM = 'state'
DATA_ITEM = 'data'
PARAMS_KEY = 'params'


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
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, read_only=read_only,
            cleanup_tmp_directories=not read_only, create=not read_only, save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(save_interval_steps), policies.PreemptionCheckpointingPolicy()]))
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without force would write a checkpoint."""
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, data_state: dict | None = None, force: bool = False) -> bool:
        """Save `state` (pytree of jax.Arrays) and JSON-serialisable `data_state` if `step` is due (or `force`).

        Returns whether a save was started. `state` should be a mapping (or dataclass) with a 'params'
        entry so that `restore_params_only` can read the parameters alone.
        """
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                     DATA_ITEM: ocp.args.JsonSave(dict(data_state or {}))})
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore (state, data_state) of `step` (None: latest) into `abstract_state`'s shapes and shardings.

        `abstract_state` is a tree of jax.ShapeDtypeStruct with `sharding` set (see `abstract_with_shardings`);
        arrays are read straight into those shardings, so a checkpoint written on N devices restores onto
        any other mesh. `data_state` is {} when none was saved.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise UserError(f'no checkpoint found in {self.directory}')
        if step not in self._manager.all_steps():
            raise UserError(f'checkpoint step {step} not found in {self.directory}; '
                            f'available steps: {self.all_steps()}')
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                     DATA_ITEM: ocp.args.JsonRestore()})
        restored = self._manager.restore(step, args=args)
        return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {})

    def wait_until_finished(self) -> None:
        """Block until any background save has been written and committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self._manager.close()


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
    """
    state_dir = _state_dir(_absolute(path))
    target = {PARAMS_KEY: abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(f'cannot restore params from {state_dir}: {e}') from e
    return restored[PARAMS_KEY]
