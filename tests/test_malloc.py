"""The malloc settings: the commands restart once, on the CPU only, and leave a user's own."""

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# A command as main.py and predict.py start: what it saw after the restart, if any.
COMMAND = """
import json, subprocess, sys
from seqjax import malloc
malloc.restart_with_huge_pages()
child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES'))"],
    capture_output=True, text=True).stdout.strip()
print(json.dumps({"restarted": malloc._restarted, "child": child,
                  "mallopt": malloc.keep_freed_memory("cpu")}))
"""


def run_command(**env):
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
  result = subprocess.run([sys.executable, "-c", COMMAND], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**base, **env}, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_command_on_the_cpu_restarts_once_and_its_children_get_glibc_defaults():
  seen = run_command(JAX_PLATFORMS="cpu")
  assert seen["restarted"] and seen["child"] == "None"
  assert not seen["mallopt"]  # The restart's settings stand.


def test_command_for_an_accelerator_does_not_restart():
  seen = run_command(JAX_PLATFORMS="cuda")
  assert not seen["restarted"] and seen["child"] == "None"


def test_glibc_tunables_set_by_the_user_are_left_alone():
  seen = run_command(JAX_PLATFORMS="cpu", GLIBC_TUNABLES="")
  assert not seen["restarted"] and seen["child"] == "" and not seen["mallopt"]
