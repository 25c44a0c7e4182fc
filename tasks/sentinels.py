"""The `t5` library's `*_1_sentinel` variants of the SuperGLUE, WSC-simple and DPR-simple tasks.

Each variant (seqio.experimental.add_task_with_sentinels, as t5 registers them) appends <extra_id_0> to
the inputs and prepends it to the targets, keeps it when trimming, and strips it again before the
postprocessor; the name gets `_1_sentinel` before a `_train`/`_eval` suffix
(`super_glue_wsc_v102_simple_1_sentinel_train`) or at the end (`super_glue_boolq_v102_1_sentinel`).
"""
import seqio

from tasks import super_glue

NUM_SENTINELS = 1


def register():
    """Registers the sentinel variant of every task in super_glue.TASK_NAMES; returns the new names."""
    before = set(seqio.TaskRegistry.names())
    for name in super_glue.TASK_NAMES:
        seqio.experimental.add_task_with_sentinels(name, num_sentinels=NUM_SENTINELS)
    return tuple(sorted(set(seqio.TaskRegistry.names()) - before))


TASK_NAMES = register()
