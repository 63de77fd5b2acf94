"""The CPU ranks' glibc thresholds (train.cpu_allocator): set where nobody chose otherwise, and
then a large tensor comes from the heap instead of a fresh mapping."""

import ctypes
import os
import platform
import subprocess
import sys

import pytest

from ecdit_scale.train import cpu_allocator
from ecdit_scale.train.cpu_allocator import keep_large_allocations

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("env, says", [
    ({"ECDIT_SCALE_MALLOC": "default"}, "ECDIT_SCALE_MALLOC=default"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "user's glibc malloc settings"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "user's glibc malloc settings"),
    ({"MALLOC_ARENA_MAX": "4"}, "user's glibc malloc settings"),
])
def test_a_users_choice_is_left_alone(monkeypatch, env, says):
    def refuse(*_a, **_k):
        raise AssertionError("mallopt must not be called")

    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", refuse)
    assert says in keep_large_allocations(env)


# bytes glibc holds in mmapped chunks (mallinfo2.hblkhd) while a buffer of MiB is alive,
# allocated on the main thread or (as gloo's threads allocate) on a thread of its own
CHILD = r"""
import ctypes, sys, threading
from ecdit_scale.train.cpu_allocator import keep_large_allocations
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
mode, mib, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode != "default":  # "thresholds": the thresholds alone, as before the one arena
    assert keep_large_allocations({}, one_arena=mode == "kept").startswith(
        "glibc, mmap threshold")
libc.malloc.restype = ctypes.c_void_p
out = []
def alloc():
    p = libc.malloc(mib << 20)
    out.append(libc.mallinfo2().hblkhd)
    libc.free(ctypes.c_void_p(p))
if where == "thread":
    t = threading.Thread(target=alloc)
    t.start()
    t.join()
else:
    alloc()
print(out[0])
"""


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL("libc.so.6") if GLIBC else None,
                                             "mallinfo2"), reason="glibc >= 2.33 only")
def test_a_large_allocation_comes_from_the_heap_once_set():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")
           and k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "ECDIT_SCALE_MALLOC")}

    def mapped(mode: str, mib: int, where: str = "main") -> int:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(mib), where],
                             capture_output=True, text=True, check=True, env=env)
        return int(out.stdout.strip())

    assert mapped("default", 48) >= 48 << 20  # glibc maps it
    assert mapped("kept", 48) < 48 << 20  # the heap serves it
    # on another thread (gloo's): that thread's own arena, whose heaps stop at 64 MiB, maps a
    # larger one whatever the threshold; with one arena the main heap serves it too
    assert mapped("thresholds", 96, "thread") >= 96 << 20
    assert mapped("kept", 96, "thread") < 96 << 20
