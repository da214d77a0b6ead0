"""How ``training.launcher`` finds its program: the environment's own, with or without an activated venv."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from metareward.training.launch import resolve_launcher


def test_program_beside_the_interpreter_wins_even_off_path(monkeypatch):
    # CI runs `.venv/bin/python -m pytest` with .venv/bin not on PATH: accelerate must still be found.
    monkeypatch.setenv("PATH", "/nonexistent")
    argv = resolve_launcher("accelerate launch --num_processes 2")
    assert argv == [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "2"]


def test_python_launcher_is_this_interpreter(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert resolve_launcher("python") == [sys.executable]


def test_program_on_path_is_kept_by_name(tmp_path, monkeypatch):
    tool = tmp_path / "mylauncher"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_launcher("mylauncher --x 'a b'") == ["mylauncher", "--x", "a b"]


def test_explicit_path_is_kept(tmp_path):
    assert resolve_launcher(f"{tmp_path}/run.sh -v") == [f"{tmp_path}/run.sh", "-v"]


def test_missing_program_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match="training.launcher: program 'no-such-launcher'"):
        resolve_launcher("no-such-launcher launch")


def test_empty_launcher_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        resolve_launcher("  ")


def test_accelerate_is_installed_beside_python():
    # the two-process DPO test relies on it; this checks the set-up, not the resolver
    assert os.access(Path(sys.executable).parent / "accelerate", os.X_OK)
