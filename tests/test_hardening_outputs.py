"""Results survive faults: all-or-nothing outputs, one run per folder, no foreign writes (issue 14).

Items 1, 2, 6 (symbolic link inside --out) and 7 (--out inside the input folder).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from score_helpers import StudySpec, read_csv, write_study

from ichrt.runtime import scorer as scorer_module
from ichrt.runtime.cli import main
from ichrt.runtime.outputs import (
    OutputBusy,
    OutputLock,
    OutputRefused,
    check_output_folder,
    internal_paths,
    lock_path,
)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    write_study(root, StudySpec("7.1", (0.0, 0.6, 0.6), study_time="0900"), "pos")
    write_study(root, StudySpec("7.2", (0.0, 0.0), study_time="0800"), "neg")
    return root


def run(tiny_model, *args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["score", *args, "--model", str(tiny_model[0]),
                                     "--provider", "cpu", "--threads", "1"],
                              catch_exceptions=False, env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


# ----------------------------------------------------------------------------- item 1


def test_results_are_complete_with_run_json_and_no_leftovers(tiny_model, studies, tmp_path):
    out = tmp_path / "out"
    res = run(tiny_model, str(studies), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert siblings(out) == ["out"]  # no staging folder, no lock file left beside it
    info = json.loads((out / "run.json").read_text())
    assert info["complete"] and info["model"]["sha256"] == info["model"]["sha256"].lower()
    assert set(info["entries"]) == {p.name for p in out.iterdir()}
    assert {r["model_sha256"] for r in read_csv(out / "worklist.csv")} == {info["model"]["sha256"]}
    assert {r["model_sha256"] for r in read_csv(out / "slices.csv")} == {info["model"]["sha256"]}
    doc = json.loads((out / "worklist.json").read_text())
    assert doc["outputs"]["worklist.csv"] == str(out.resolve() / "worklist.csv")  # not staging
    assert all(str(out.resolve()) in e["folder"] for e in doc["explanations"])


def test_write_error_exits_1_and_keeps_previous_results(tiny_model, studies, tmp_path,
                                                        monkeypatch):
    out = tmp_path / "out"
    assert run(tiny_model, str(studies), "--out", str(out)).exit_code == 0
    before = snapshot(out)

    def full_disk(path, document):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(scorer_module, "write_json", full_disk)
    res = run(tiny_model, str(studies), "--out", str(out), "--threshold", "0.0")
    assert res.exit_code == 1
    assert "No space left on device" in res.stderr and "untouched" in res.stderr
    assert "Traceback" not in res.output
    assert snapshot(out) == before
    assert siblings(out) == ["out"]


def test_file_size_limit_mid_write_keeps_previous_results(tiny_model, studies, tmp_path,
                                                          monkeypatch):
    # A real write failure from the kernel (EFBIG) part way through slices.csv, as a small disk.
    out = tmp_path / "out"
    assert run(tiny_model, str(studies), "--out", str(out)).exit_code == 0
    before = snapshot(out)
    original = scorer_module._write_files

    def limited(*args, **kwargs):
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (700, old_limit[1]))
        try:
            return original(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)

    monkeypatch.setattr(scorer_module, "_write_files", limited)
    res = run(tiny_model, str(studies), "--out", str(out), "--explain", "none")
    assert res.exit_code == 1, res.output
    assert "File too large" in res.stderr and "Traceback" not in res.output
    assert snapshot(out) == before and siblings(out) == ["out"]


KILLER = """
import os, signal, sys
from ichrt.runtime import scorer
original = scorer.write_csv
def killer(path, *args, **kwargs):
    if path.name == "slices.csv":
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, *args, **kwargs)
scorer.write_csv = killer
from ichrt.runtime.cli import main
main(sys.argv[1:])
"""


def test_killed_run_leaves_previous_results_and_next_run_cleans_up(tiny_model, studies,
                                                                   tmp_path):
    out = tmp_path / "out"
    assert run(tiny_model, str(studies), "--out", str(out)).exit_code == 0
    before = snapshot(out)
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, "score", str(studies), "--out", str(out), "--model",
         str(tiny_model[0]), "--provider", "cpu", "--threshold", "0.0"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert snapshot(out) == before  # the new heat maps never mixed with the old worklist
    assert any(".ichrt-new-" in name for name in siblings(out))  # the dead run's staging
    assert run(tiny_model, str(studies), "--out", str(out)).exit_code == 0
    assert siblings(out) == ["out"]


def test_stale_explanations_of_earlier_runs_are_removed(tiny_model, studies, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_model, str(studies), "--out", str(out), "--threshold", "0.0").exit_code == 0
    assert len(list((out / "explanations").rglob("*.png"))) == 5
    assert run(tiny_model, str(studies), "--out", str(out), "--threshold", "1.0").exit_code == 0
    assert list((out / "explanations").rglob("*")) == []


# ----------------------------------------------------------------------------- item 2


def test_second_run_fails_fast_while_the_folder_is_locked(tiny_model, studies, tmp_path):
    out = tmp_path / "out"
    lock = lock_path(out.resolve())
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process' run, as far as the CLI can tell
    try:
        started = time.monotonic()
        res = run(tiny_model, str(studies), "--out", str(out))
        assert res.exit_code == 1
        assert "being written by another ichrt run (pid 4242)" in res.stderr
        assert "--wait" in res.stderr and not out.exists()
        assert time.monotonic() - started < 60
    finally:
        os.close(fd)


def test_wait_option_waits_for_the_other_run(tiny_model, studies, tmp_path):
    out = tmp_path / "out"
    fd = os.open(lock_path(out.resolve()), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    timer = threading.Timer(1.0, os.close, (fd,))
    timer.start()
    res = run(tiny_model, str(studies), "--out", str(out), "--wait")
    timer.join()
    assert res.exit_code == 0, res.output
    assert len(read_csv(out / "worklist.csv")) == 2


def test_output_lock_between_processes_and_reentrant_in_one(tmp_path):
    out = tmp_path / "o"
    script = ("import time; from ichrt.runtime.outputs import OutputLock\n"
              f"l = OutputLock({str(out)!r}); l.acquire(); print('held', flush=True); "
              "time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy, match=f"pid {holder.pid}"):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out), OutputLock(out):  # the CLI holds it, then write_result takes it again
        assert lock_path(out.resolve()).exists()
    assert not lock_path(out.resolve()).exists()


# ----------------------------------------------------------------------------- item 6: links


@pytest.mark.parametrize("name", ["worklist.csv", "explanations", "run.json"])
def test_symlink_planted_inside_out_is_a_usage_error(tiny_model, studies, tmp_path, name):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    (out / name).symlink_to(victim)
    res = run(tiny_model, str(studies), "--out", str(out))
    assert res.exit_code == 2, res.output
    assert f"{name} is a symbolic link" in res.output and "Traceback" not in res.output
    assert victim.read_text() == "precious" and (out / name).is_symlink()


def test_out_holding_foreign_files_is_refused(tiny_model, studies, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = run(tiny_model, str(studies), "--out", str(out))
    assert res.exit_code == 2 and "files ichrt did not write (notes.txt)" in res.output
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputRefused, match="not a folder"):
        check_output_folder(out / "notes.txt")


def test_new_output_entries_listed_in_run_json_are_not_foreign(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lesions").mkdir()  # written by a newer version, listed in its run.json
    (out / "run.json").write_text(json.dumps({"entries": ["lesions", "run.json"]}))
    assert check_output_folder(out) == out.resolve()


# ----------------------------------------------------------------------------- item 7


def test_out_inside_the_input_folder_is_not_read_back(tiny_model, tmp_path):
    inputs = tmp_path / "in"
    write_study(inputs, StudySpec("7.3", (0.0, 0.6)), "s")
    out = inputs / "results"
    for _ in range(2):
        res = run(tiny_model, str(inputs), "--out", str(out), "--json")
        assert res.exit_code == 0, res.output
        counts = json.loads(res.stdout)["counts"]
        assert counts["inputs"] == 2 and counts["rejected"] == 0
    assert set(map(str, internal_paths(out))) >= {str(out.resolve())}
