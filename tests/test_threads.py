"""Thread count from the cores the process may run on."""

import os
import subprocess
import sys

import pytest
import torch

from bench.run.threads import available_cores, set_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_every_core_of_the_affinity_mask(restore_threads):
    assert available_cores() == len(os.sched_getaffinity(0))
    assert set_threads(None) == available_cores() == torch.get_num_threads()


def test_a_share_of_the_cores_and_never_zero(restore_threads):
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_threads(0) == 1 and torch.get_num_threads() == 1  # more jobs than cores: one each


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API here")
def test_follows_a_narrowed_affinity_mask():
    one = min(os.sched_getaffinity(0))
    code = (  # narrowed after torch is imported, which torch itself does not notice
        f"import torch; import os; os.sched_setaffinity(0, {{{one}}}); "
        "from bench.run.threads import set_threads; "
        "print(set_threads(None), torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
