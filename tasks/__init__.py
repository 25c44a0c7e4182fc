"""seqio tasks of the T5 paper; importing this package registers them (vocabulary resolved lazily on first use)."""
from tasks import glue, metrics, postprocessors, preprocessors, super_glue, vocab  # noqa: F401
from tasks import span_corruption  # noqa: F401
from tasks import c4  # noqa: F401
from tasks import squad  # noqa: F401
from tasks import trivia_qa  # noqa: F401
from tasks import wnli  # noqa: F401
from tasks import sentinels  # noqa: F401
from tasks import prefix_lm_objective  # noqa: F401
from tasks import wmt  # noqa: F401
from tasks import cnn_dailymail  # noqa: F401
from tasks import mixtures  # noqa: F401
from tasks import custom  # noqa: F401
from tasks import demo  # noqa: F401
