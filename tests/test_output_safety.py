"""Output safety: tfafm replaces only what it wrote, and a kill at any point leaves the old or the new output.

The first tests exercise :mod:`tfafm.io_utils` directly; the kill tests run
``python`` subprocesses and SIGKILL them: a stub process that loads only
``io_utils`` (no TensorFlow, milliseconds) for exact points inside the swap, and
real ``tfafm train`` / ``compress`` / ``export`` processes during their work and
right after the swap.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tfafm import io_utils
from tfafm.errors import UserError
from tfafm.io_utils import ARTIFACT_MARKER, TEMP_INFIX, Destination, atomic_path
from tfafm_cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = "model: deepfm\nhyperparams: {hidden_units: [8]}\nembedding_dim: 4\nbatch_size: 256\nepochs: 1\n" \
       "synthetic_rows: 2000\nsynthetic_max_vocabulary: 300\n"


def digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP_INFIX in p.name]


def write_dir(path: str, files: dict[str, str]) -> None:
    os.makedirs(path)
    for name, text in files.items():
        Path(path, name).write_text(text)


# ----------------------------------------------------------------------------- io_utils


def test_new_directory_is_marked_with_its_kind_and_replaces_only_its_own_kind(tmp_path):
    target = tmp_path / "out"
    with Destination(target, "run").staged() as staged:
        write_dir(staged, {"a": "1"})
    assert json.loads((target / ARTIFACT_MARKER).read_text()) == {"tfafm_artifact": "run"}
    with Destination(target, "run").staged() as staged:
        write_dir(staged, {"b": "2"})
    assert sorted(os.listdir(target)) == [ARTIFACT_MARKER, "b"]
    with pytest.raises(UserError, match="it is a tfafm run, not a demo"):
        Destination(target, "demo")
    assert temporaries(tmp_path) == []


def test_foreign_directory_is_refused_unless_overwrite(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "f").write_text("user data")
    with pytest.raises(UserError, match=r"refusing to write .*/d: it is a directory that tfafm did not write"):
        Destination(target, "run")
    with pytest.raises(UserError, match="not a folder for it"):
        Destination(target, "tflite")
    assert (target / "f").read_text() == "user data"
    with Destination(target, "run", overwrite=True).staged() as staged:
        write_dir(staged, {"new": "x"})
    assert sorted(os.listdir(target)) == [ARTIFACT_MARKER, "new"]


def test_empty_directory_is_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    with Destination(tmp_path / "empty", "saved_model").staged() as staged:
        write_dir(staged, {"saved_model.pb": "x"})
    assert (tmp_path / "empty" / "saved_model.pb").exists()


def test_existing_file_needs_overwrite_on_the_command_line_but_not_in_the_library(tmp_path):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"old")
    with pytest.raises(UserError, match="a file exists there"):
        Destination(target, "tflite")
    with atomic_path(str(target)) as staged:
        Path(staged).write_bytes(b"library")
    assert target.read_bytes() == b"library"
    with Destination(target, "tflite", overwrite=True).staged() as staged:
        Path(staged).write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_a_symbolic_link_is_not_followed_or_replaced(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="symbolic link"):
        Destination(tmp_path / "link", "run")


@pytest.mark.parametrize("source, target", [("run", "run"), ("run", "run/inner"), ("run/inner", "run")])
def test_an_input_is_never_the_destination_even_with_overwrite(tmp_path, source, target):
    (tmp_path / "run" / "inner").mkdir(parents=True)
    with pytest.raises(UserError, match="lies inside the input"):
        Destination(tmp_path / target, "run", overwrite=True, sources=[str(tmp_path / source)])


@pytest.mark.parametrize("target", [".", "..", "{cwd}"])
def test_the_current_directory_and_its_ancestors_are_refused(tmp_path, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match="contains the current directory"):
        Destination(target.format(cwd=work), "run", overwrite=True)


def test_below_a_regular_file_is_refused_naming_the_requested_path(tmp_path):
    (tmp_path / "file").write_text("x")
    requested = str(tmp_path / "file" / "sub" / "m.tflite")
    with pytest.raises(UserError, match=f"refusing to write {requested}: .*/file is a file, not a directory"):
        Destination(requested, "tflite")


def test_failure_inside_leaves_destination_and_no_temporary(tmp_path):
    target = tmp_path / "run"
    with Destination(target, "run").staged() as staged:
        write_dir(staged, {"v": "1"})
    with pytest.raises(RuntimeError, match="boom"):
        with Destination(target, "run").staged() as staged:
            write_dir(staged, {"v": "2"})
            raise RuntimeError("boom")
    assert (target / "v").read_text() == "1" and temporaries(tmp_path) == []


def test_failure_removes_the_parent_directories_it_created(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Destination(tmp_path / "new" / "parents" / "run", "run").staged():
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_disk_full_is_a_user_error_naming_the_requested_path(tmp_path):
    requested = str(tmp_path / "m.tflite")
    with pytest.raises(UserError, match=f"cannot write {requested}: No space left on device"):
        with Destination(requested, "tflite").staged() as staged:
            raise OSError(errno.ENOSPC, "No space left on device", staged)
    assert os.listdir(tmp_path) == []


def test_a_destination_the_swap_may_not_replace_is_a_user_error(tmp_path, monkeypatch):
    """Replacing a file the user may not (another owner's, in a sticky directory; an immutable one) failed in
    the final swap with a PermissionError traceback, exit 1."""
    target = tmp_path / "run"
    with Destination(target, "run").staged() as staged:
        write_dir(staged, {"v": "1"})

    def refused(first, second):
        raise OSError(errno.EPERM, "Operation not permitted", second)

    monkeypatch.setattr(io_utils, "exchange", refused)
    with pytest.raises(UserError, match=f"cannot write {target}: Operation not permitted"):
        with Destination(target, "run").staged() as staged:
            write_dir(staged, {"v": "2"})
    assert (target / "v").read_text() == "1" and temporaries(tmp_path) == []


def test_directory_replace_without_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(io_utils, "exchange", lambda a, b: False)
    target = tmp_path / "run"
    for version in ("1", "2"):
        with Destination(target, "run").staged() as staged:
            write_dir(staged, {"v": version})
    assert (target / "v").read_text() == "2" and temporaries(tmp_path) == []


def test_an_interrupt_landing_in_the_clean_up_does_not_leave_the_temporary_folder(tmp_path, monkeypatch):
    """A second Ctrl-C while the temporary folder is removed: cut short, the folder could have lost its
    marker already and be kept by later runs as not tfafm's. It is removed, then the interrupt raised."""
    import shutil

    remove_tree, calls = shutil.rmtree, []

    def interrupted_once(path, ignore_errors=False):
        calls.append(path)
        if len(calls) == 1:
            os.remove(os.path.join(path, io_utils.TEMP_MARKER))
            raise KeyboardInterrupt
        remove_tree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with Destination(tmp_path / "run", "run").staged() as staged:
            write_dir(staged, {"part": "new"})
            raise RuntimeError("the command failed")
    assert len(calls) == 2 and os.listdir(tmp_path) == []


def test_a_temporary_folder_that_cannot_be_marked_is_not_left(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.json, "dump", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        with Destination(tmp_path / "run", "run").staged() as staged:
            write_dir(staged, {"part": "new"})
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_are_reclaimed_but_live_and_foreign_ones_kept(tmp_path):
    live = io_utils._TempFolder(str(tmp_path), "live")  # this process holds its lock
    dead = tmp_path / f".dead{TEMP_INFIX}abc"
    dead.mkdir()
    (dead / io_utils.TEMP_MARKER).write_text(json.dumps({"tfafm_temporary": True, "destination": "dead"}))
    foreign = tmp_path / f".user{TEMP_INFIX}xyz"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not tfafm's")
    Destination(tmp_path / "other", "run")
    assert sorted(p.name for p in temporaries(tmp_path)) == sorted([Path(live.path).name, foreign.name])
    live.remove()
    assert not os.path.exists(live.path)


# ----------------------------------------------------------------------------- kills inside the swap

STUB = textwrap.dedent("""
    import os, signal, sys, types
    package = types.ModuleType("tfafm")
    package.__path__ = [os.path.join({root!r}, "tfafm")]
    sys.modules["tfafm"] = package  # io_utils alone: no TensorFlow
    from tfafm import io_utils

    point, target = sys.argv[1], sys.argv[2]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    original = io_utils.exchange
    if point == "before-swap":
        io_utils.exchange = lambda a, b: die()
    elif point == "after-swap":
        io_utils.exchange = lambda a, b: (original(a, b), die())
    elif point == "between-renames":
        io_utils.exchange = lambda a, b: False
        rename = os.rename
        os.rename = lambda a, b: (rename(a, b), die() if a == target else None)
    with io_utils.Destination(target, "run").staged() as staged:
        os.makedirs(staged)
        for i in range(20):
            with open(os.path.join(staged, f"part{{i}}"), "w") as f:
                f.write("new")
""")


@pytest.mark.parametrize("point, expected", [
    ("before-swap", "old"), ("after-swap", "new"), ("between-renames", "old"),
])
def test_kill_inside_the_swap_leaves_old_or_new_and_the_next_run_cleans_up(tmp_path, point, expected):
    target = tmp_path / "run"
    with Destination(target, "run").staged() as staged:
        write_dir(staged, {"part0": "old"})
    old = digest(target)
    child = subprocess.run([sys.executable, "-c", STUB.format(root=str(ROOT)), point, str(target)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert temporaries(tmp_path), "the killed process should leave its temporary folder"
    Destination(tmp_path / "next", "run")  # what the next tfafm run does first
    assert temporaries(tmp_path) == []
    if expected == "old":
        assert digest(target) == old
    else:
        assert sorted(os.listdir(target)) == sorted([ARTIFACT_MARKER, *(f"part{i}" for i in range(20))])
        assert all((target / f"part{i}").read_text() == "new" for i in range(20))


# ----------------------------------------------------------------------------- kills of real commands

LAUNCH = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    if sys.argv[1] == "after-swap":
        import tfafm.io_utils as io_utils
        original = io_utils.exchange
        io_utils.exchange = lambda a, b: (original(a, b), os.kill(os.getpid(), signal.SIGKILL))
    from tfafm_cli import main
    sys.exit(main(sys.argv[2:]))
""")


def kill_command(tmp_path: Path, point: str, argv: list[str], watch: Path) -> None:
    """Runs ``tfafm argv`` and SIGKILLs it once it creates a temporary folder in ``watch`` (or at ``point``)."""
    earlier = set(os.listdir(watch))
    process = subprocess.Popen([sys.executable, "-c", LAUNCH.format(root=str(ROOT)), point, *argv],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if point == "temp-folder" and any(TEMP_INFIX in n for n in set(os.listdir(watch)) - earlier):
            time.sleep(0.1)  # into the work
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A directory with a tiny config, a trained run, and that run exported to dynamic-int8 LiteRT."""
    root = tmp_path_factory.mktemp("kills")
    (root / "tiny.yaml").write_text(TINY)
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    assert main(["export", str(root / "run"), "--quantization", "dynamic", "--out", str(root / "old.tflite"),
                 "--quiet"]) == 0
    return root


def assert_complete_run(path: Path) -> None:
    from tfafm.runs import load_run

    assert io_utils.artifact_kind(str(path)) == "run"
    load_run(str(path))


def test_killed_train_leaves_the_previous_run(runs):
    old = digest(runs / "run")
    kill_command(runs, "temp-folder", ["train", "--config", "tiny.yaml", "--seed", "1", "--out", "run"], runs)
    assert digest(runs / "run") == old


def test_compress_killed_right_after_the_swap_leaves_the_new_run(runs, tmp_path):
    target = runs / "small"
    # The tiny run's whole file reaches 1.6x at most.
    assert main(["compress", str(runs / "run"), "--ratio", "1.2", "--out", str(target), "--quiet"]) == 0
    old = digest(target)
    kill_command(runs, "after-swap", ["compress", "run", "--ratio", "1.5", "--out", "small"], runs)
    assert digest(target) != old
    assert_complete_run(target)
    assert json.loads((target / "report.json").read_text())["totals"]["compressible_ratio"] >= 1.5


def test_killed_export_leaves_the_previous_file_and_the_next_run_cleans_up(runs):
    target = runs / "old.tflite"
    old = digest(target)
    kill_command(runs, "temp-folder", ["export", "run", "--out", "old.tflite", "--overwrite"], runs)
    assert digest(target) == old
    assert temporaries(runs)
    assert main(["export", str(runs / "run"), "--out", str(target), "--overwrite", "--quiet"]) == 0
    assert temporaries(runs) == []
    assert target.read_bytes()[4:8] == b"TFL3" and digest(target) != old
