"""Test-wide environment: quiet TensorFlow, no cloud metadata lookups, no GPU probing; the modules the tests import
kept out of the garbage collector's full passes."""
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_finish(session):
    """After collection every test module and what it imports (TensorFlow, JAX, seqio, the task registries: ~0.7M
    objects) is loaded for good; `gc.freeze` moves them to the permanent generation, so the full collections that
    the tests' allocations trigger scan only what the tests create. Measured on 15 test files (193 tests, one
    process, 2-core AMD EPYC): 251 -> 226 s, time in full collections 16.6 -> 8.0 s."""
    del session
    gc.collect()
    gc.freeze()
