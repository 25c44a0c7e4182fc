"""Reading a saved train state back in tests, as host numpy arrays."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from text2text import checkpoints


def read_saved_state(step_dir: str | os.PathLike) -> dict:
    """The train state saved in one step's directory (`<model_dir>/<step>`), as nested dicts of numpy arrays.

    Every leaf is read as numpy (orbax RestoreArgs with restore_type=np.ndarray), so no device sharding is needed
    or guessed from the checkpoint's sharding file."""
    state_dir = os.path.join(step_dir, checkpoints.STATE_ITEM)
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(state_dir).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
