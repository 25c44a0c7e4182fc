"""text2text.host_memory: glibc malloc keeps freed large buffers for reuse (no fresh page faults per step)."""
import os
import platform
import subprocess
import sys

import pytest

from text2text import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Allocates, touches and frees a 40 MB buffer 20 times (as XLA:CPU does with a step's temporaries) and prints the
# minor page faults of the last 19 rounds.
PROGRAM = """
import ctypes, resource, sys
sys.path.insert(0, {repo!r})
import text2text
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 40 << 20
def round_trip():
    pointer = libc.malloc(ctypes.c_size_t(size))
    ctypes.memset(pointer, 1, size)
    libc.free(ctypes.c_void_p(pointer))
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(malloc_setting: str) -> int:
    environment = {**os.environ, host_memory.ENVIRONMENT_VARIABLE: malloc_setting}
    result = subprocess.run([sys.executable, '-c', PROGRAM.format(repo=REPO)], env=environment, check=True,
                            capture_output=True, text=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt settings exist in glibc only')
def test_large_buffers_are_reused_instead_of_faulted_in_again():
    pages_per_round = (40 << 20) // os.sysconf('SC_PAGE_SIZE')
    assert _page_faults('system') > 10 * pages_per_round  # glibc's default: a fresh mapping every round
    assert _page_faults('') < pages_per_round  # text2text's settings: the first round's pages are reused


def test_system_setting_changes_nothing(monkeypatch):
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, 'system')
    assert host_memory.configure_malloc() is False
