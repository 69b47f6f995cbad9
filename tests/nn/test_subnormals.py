"""Subnormal floats are flushed to zero in every thread of a training (nn.loops.flush_subnormals): on an x86
CPU each operation on one is ~100x slower, and weight decay makes them by the thousand."""

import subprocess
import sys

import pytest

CHECK = """
import torch
from rxrx1_pipeline.nn.loops import flush_subnormals
{flush}
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-39)  # subnormal in float32; the product runs on both threads
survivors = int((x * 1.0 != 0).sum())
print(torch.set_flush_denormal(True), survivors)  # whether this CPU can flush at all
"""


def survivors(flush: bool) -> int:
    """Subnormal products left non-zero in a fresh process, with or without flush_subnormals() first."""
    script = CHECK.format(flush="flush_subnormals()" if flush else "")
    supported, nonzero = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                        check=True).stdout.split()
    if supported != "True":
        pytest.skip("this CPU has no flush-to-zero mode")
    return int(nonzero)


def test_subnormals_become_zero_on_every_thread_started_after_the_flush():
    assert survivors(flush=True) == 0


def test_without_the_flush_subnormals_survive():
    """The check above can fail: without flushing the same products stay subnormal."""
    assert survivors(flush=False) == 1 << 20
