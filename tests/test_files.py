"""Atomic writes: a failure mid-write leaves the previous file and no temporary file."""

import os

import pytest

from seqjax import files


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "results.json"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with files.atomic_open(str(path)) as f:
      f.write("half of the new")
      raise RuntimeError("disk full")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["results.json"]


def test_successful_write_replaces_the_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text("old")
  with files.atomic_open(str(path)) as f:
    f.write("new")
  assert path.read_text() == "new"
  assert os.listdir(tmp_path) == ["results.json"]
