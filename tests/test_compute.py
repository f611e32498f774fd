"""The CPU allocator setting (entropic.compute.keep_freed_memory): freed memory is reused, not
faulted in again."""

from __future__ import annotations

import ctypes
import json
import platform
import subprocess
import sys

import pytest

from entropic import compute
from entropic.config import ComputeConfig, ConfigError, RunConfig
from tests.conftest import compose_config

# Each round allocates 64 MiB and 32 MiB of float32 ones (touching every page) and frees both:
# pages a round must fault in when nothing is kept, at 4 KiB a page.
ROUND_PAGES = (2**24 + 2**23) * 4 // 4096
ROUNDS = 8
# mallopt and its effect exist only under glibc (Linux); elsewhere the setting is refused quietly
GLIBC_ONLY = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
SCRIPT = f"""
import json, resource, sys, torch
from entropic.compute import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = []
for _ in range({ROUNDS}):
    before = faults()
    big, small = torch.ones(2**24), torch.ones(2**23)
    rounds.append(faults() - before)
    del big, small
print(json.dumps({{"applied": applied, "faults": rounds}}))
"""


def page_faults(mode: str) -> dict:
    """Minor page faults of each round in a fresh process (the setting is process-wide)."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@GLIBC_ONLY
def test_kept_memory_is_not_faulted_in_again():
    # why: a GRPO step allocates and frees the same large tensors every step; glibc unmaps each
    # block above its mmap threshold on free, so the next step faults every page in again (184k
    # faults a second, a quarter of the CPU time in the kernel, in a CPU sweep)
    system = page_faults("system")["faults"]
    kept = page_faults("keep")
    assert kept["applied"] is True
    # without the setting every round faults in all 96 MiB again
    assert min(system[-3:]) >= 0.95 * ROUND_PAGES
    # with it the heap grows over the first rounds, and then the rounds reuse it
    assert max(kept["faults"][-3:]) <= 0.05 * ROUND_PAGES


def test_without_glibc_nothing_is_applied(monkeypatch):
    # why: on macOS (no libc.so.6) the run keeps the system's allocator instead of failing, and
    # logs that it did
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    profile = cpu_profile("keep")
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert compute.keep_freed_memory() is False
    assert compute.cpu_malloc(profile, "cpu") == "system"


BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
MALLOC_CASES = [
    # (malloc, multirun launcher, refused, why)
    ("keep", None, False, "a single run keeps its peak and ends"),
    ("keep", BASIC, True, "the basic launcher runs every job in one process, whose heap grows"),
    ("keep", JOBLIB, True, "joblib's workers are reused across jobs"),
    ("keep", SUBMITIT, False, "submitit starts a process per job"),
    ("system", BASIC, False, "glibc's defaults give memory back: sweeps ran 15 jobs with them"),
]


@pytest.mark.parametrize(("malloc", "launcher", "refused", "why"), MALLOC_CASES)
def test_keep_is_refused_where_jobs_share_a_process(malloc, launcher, refused, why):
    if refused:
        with pytest.raises(ConfigError, match=r"compute.cpu_scale.malloc=keep.*Fix: "):
            compute.check_malloc(malloc, launcher)
    else:
        compute.check_malloc(malloc, launcher)


def cpu_profile(malloc: str) -> ComputeConfig:
    return RunConfig.from_hydra(
        compose_config(["compute=cpu", f"compute.cpu_scale.malloc={malloc}"])
    ).compute


@GLIBC_ONLY
@pytest.mark.parametrize(
    ("malloc", "device", "expected"),
    [
        ("system", "cpu", "system"),  # the default: the heap gives memory back
        ("keep", "cpu", "keep"),
        ("keep", "cuda", "system"),  # CUDA tensors do not come from malloc
    ],
)
def test_the_allocator_mode_a_run_uses(malloc, device, expected):
    assert compute.cpu_malloc(cpu_profile(malloc), device) == expected


def test_the_cpu_profile_keeps_glibcs_defaults():
    # why: under keep the heap never shrinks; a multirun sweep's process (its runs share it) grew
    # to 22 GB and was killed by the OOM killer, so keeping is an opt-in for single runs
    profile = RunConfig.from_hydra(compose_config(["compute=cpu"])).compute
    assert compute.cpu_malloc(profile, "cpu") == "system"


def test_an_unknown_allocator_mode_names_the_key():
    with pytest.raises(ConfigError, match=r"compute\.cpu_scale\.malloc.*keep.*system"):
        cpu_profile("jemalloc")
