"""Clusters that fail fast: a bad TF_CONFIG, a missing or duplicate peer and SIGTERM are one line, never a hang.

The TF_CONFIG and data checks run in-process (they fail before any strategy is created). Whatever waits for a
peer runs ``tfafm train`` in a subprocess with a short ``--cluster-timeout``; SIGTERM is sent to a worker
that waits for its peer and to a training process. Each case: one line on stderr, the expected exit code
(2 for user errors, 143 for SIGTERM), nothing written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tfafm_cli import main

from test_bad_inputs import snapshot
from test_multiworker import free_loopback_ports

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CRITEO_LINE = "\t".join(["{label}"] + ["3"] * 13 + ["{value:08x}"] * 26)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A criteo cache with two training shards."""
    from tfafm.data.prepare import prepare_spec

    root = tmp_path_factory.mktemp("cluster")
    (root / "c.tsv").write_text("".join(CRITEO_LINE.format(label=i % 2, value=i % 7) + "\n" for i in range(400)))
    prepare_spec(f"criteo:{root / 'c.tsv'}", str(root / "cache"), shards=2, progress=False)
    return root / "cache"


def tf_config(ports: list[int], index: int = 0, kind: str = "worker") -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": kind, "index": index}})


@pytest.mark.parametrize("config, message", [
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": "one"}}',
     r"TF_CONFIG: task\.index must be an integer in \[0, 1\] \(the worker list\), got 'one'"),
    ('[{"cluster": {"worker": ["h:1"]}}]', r"TF_CONFIG: expected an object with \"cluster\""),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": ["worker"], "index": 0}}',
     r"TF_CONFIG: task\.type must be one of the cluster's task types \(worker\), got \['worker'\]"),
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:3"]}, "task": {"type": "ps", "index": 0}}',
     r"TF_CONFIG: task type 'ps' is not supported: tfafm trains with MultiWorkerMirroredStrategy"),
    ('{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 1}}',
     r"TF_CONFIG: worker 0 and worker 1 have the same address h:1"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
     r"TF_CONFIG: task\.index must be an integer in \[0, 1\]"),
    ('{"cluster": {"worker": ["h"]}, "task": {"type": "worker", "index": 0}}',
     r"TF_CONFIG: cluster\.worker\[0\] must be an address \"host:port\", got 'h'"),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}',
     r"TF_CONFIG: cluster\.worker must be a non-empty list"),
    ('{"cluster": {"chief": ["h:0", "h:9"], "worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}',
     r"TF_CONFIG: a cluster has at most one chief, got 2"),
    ("{'cluster': 1}", r"TF_CONFIG: not valid JSON"),
])
def test_malformed_tf_config_is_one_line(config, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", config)
    code = main(["train", "--data", "synthetic:300", "--out", "run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("data, message", [
    ("synthetic:300", r"Training on a cluster reads a prepared cache, not 'synthetic:300'"),
    ("cache:{cache}", r"The cache has 2 training shard\(s\) for 3 workers; prepare it with --shards N"),
    ("cache:{empty}", r"empty is not a tfafm data cache \(no manifest\.json\)"),
])
def test_cluster_data_is_refused_before_waiting_for_peers(data, message, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2, 3]))  # nobody listens: waiting would time out
    monkeypatch.setattr("tfafm.distribute.wait_for_peers", lambda *a: pytest.fail("waited for the peers"))
    (tmp_path / "empty").mkdir()
    code = main(["train", "--data", data.format(cache=cache, empty=tmp_path / "empty"), "--out", "run", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
    assert os.listdir(tmp_path) == ["empty"]


@pytest.fixture
def ports():
    try:
        return free_loopback_ports(2)
    except OSError as error:
        pytest.skip(f"cannot bind loopback ports on this platform: {error}")


def test_missing_peer_is_named_after_the_cluster_timeout(cache, ports, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", tf_config(ports))
    start = time.monotonic()
    code = main(["train", "--data", f"cache:{cache}", "--cluster-timeout", "1.5", "--out", "run", "--quiet"])
    assert 1.5 <= time.monotonic() - start < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert re.search(rf"error: The cluster did not form within 1\.5 s: worker 1 \(127\.0\.0\.1:{ports[1]}\) never "
                     r"answered; start every task \(or raise --cluster-timeout\)", lines[0]), lines
    assert os.listdir(tmp_path) == []


def test_a_second_task_with_the_same_index_cannot_take_its_port(cache, ports, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", tf_config(ports, index=1))
    with socket.create_server(("127.0.0.1", ports[1])):  # task 1 already runs
        code = main(["train", "--data", f"cache:{cache}", "--out", "run", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert re.search(rf"TF_CONFIG: worker 1 cannot listen on 127\.0\.0\.1:{ports[1]}: Address already in use; is "
                     r"another process running as this task", lines[0]), lines
    assert os.listdir(tmp_path) == []


def sigterm_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    return timer


def test_sigterm_stops_a_worker_waiting_for_its_peer(cache, ports, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", tf_config(ports, index=1))
    sigterm_after(1.0)
    start = time.monotonic()
    code = main(["train", "--data", f"cache:{cache}", "--cluster-timeout", "600", "--out", "run", "--quiet"])
    assert time.monotonic() - start < 10
    assert (code, capsys.readouterr().err.strip().splitlines()) == (143, ["tfafm train: terminated by SIGTERM"])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handler is gone
    assert os.listdir(tmp_path) == []


def test_sigterm_stops_training_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("user file")
    before = snapshot(tmp_path)
    # 20 epochs of 300,000 rows run for minutes: the signal comes while data is made or the model trains,
    # whichever training loop the command takes.
    sigterm_after(2.0)
    code = main(["train", "--data", "synthetic:300000", "--epochs", "20", "--embedding-dim", "2", "--out", "run",
                 "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert (code, lines) == (143, ["tfafm train: terminated by SIGTERM"])
    assert snapshot(tmp_path) == before


def test_sigterm_that_lands_in_a_finalizer_still_stops_the_command(monkeypatch, capsys):
    """Python drops an exception raised while a finalizer runs (CI once saw SIGTERM land in a weakref
    callback during training, and the command ran to its end with exit code 0): it is delivered again."""
    import tfafm.cli as cli

    class DeliversSigtermWhenCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the finalizer

    finished = []

    def command(args, output):
        DeliversSigtermWhenCollected()  # collected at once: Terminated is raised in __del__ and dropped
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "train", command)
    hook = sys.unraisablehook
    start = time.monotonic()
    code = cli.run(cli.argparse.Namespace(command="train", quiet=True))
    assert (code, capsys.readouterr().err.strip().splitlines()) == (143, ["tfafm train: terminated by SIGTERM"])
    assert time.monotonic() - start < 5 and not finished
    assert sys.unraisablehook is hook and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_turned_into_another_error_or_swallowed_still_stops_the_command(monkeypatch, capsys):
    """TensorFlow's dtype limits catch everything with a bare except and raise a TypeError of their own: a
    SIGTERM landing there (CI saw it while a worker built its model) ended the command with that TypeError's
    traceback, exit 1, instead of exit 143. Swallowed entirely, the command ran on (a cluster worker trained
    its epoch to the end): the signal is delivered again until the command unwinds."""
    import tfafm.cli as cli

    def converted(args, output):
        try:
            signal.raise_signal(signal.SIGTERM)
        except:  # noqa: E722 -- what TensorFlow does
            raise TypeError("Cannot find maximum value of <dtype: 'int32'>.")
        return 0

    def swallowed(args, output):
        try:
            signal.raise_signal(signal.SIGTERM)
        except BaseException:  # noqa: BLE001
            pass
        return 0

    finished = []

    def swallowed_then_runs_on(args, output):  # a cluster worker swallowing it kept training its epoch
        swallowed(args, output)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)
        return 0

    for command in (converted, swallowed, swallowed_then_runs_on):
        monkeypatch.setitem(cli.COMMANDS, "train", command)
        start = time.monotonic()
        code = cli.run(cli.argparse.Namespace(command="train", quiet=True))
        assert (code, capsys.readouterr().err.strip().splitlines()) == (143, ["tfafm train: terminated by SIGTERM"])
        assert time.monotonic() - start < 5 and not finished  # the signal came again and stopped it
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_lets_the_clean_up_of_the_command_it_stops_finish(monkeypatch, capsys):
    """The signal comes again every REDELIVERY_DELAY_S until the command returns (for a Terminated that
    third-party code swallowed): one landing in a ``finally`` that runs because of the first cut that
    clean-up short (CI once found a run's temporary folder left behind). While a Terminated unwinds the
    command, the repeated signal waits."""
    import tfafm.cli as cli

    cleaned = []

    def slow_clean_up(args, output):
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:
            deadline = time.monotonic() + 10 * cli.REDELIVERY_DELAY_S
            while time.monotonic() < deadline:
                time.sleep(0.01)
            try:
                raise OSError("a clean-up step failing and handled on the way")
            except OSError:
                time.sleep(2 * cli.REDELIVERY_DELAY_S)
            cleaned.append(True)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "train", slow_clean_up)
    code = cli.run(cli.argparse.Namespace(command="train", quiet=True))
    assert (code, capsys.readouterr().err.strip().splitlines()) == (143, ["tfafm train: terminated by SIGTERM"])
    assert cleaned == [True]


def start_worker(cwd: Path, index: int, ports: list[int], cache: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CONFIG": tf_config(ports, index=index),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(ROOT / "tfafm_cli.py"), "train", "--data", f"cache:{cache}",
                             "--cluster-timeout", "30", "--epochs", "500", "--batch-size", "32", "--embedding-dim",
                             "2", "--out", "run"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigterm_stops_a_training_cluster_worker_and_the_chief_fails_cleanly(cache, ports, tmp_path):
    """After the strategy starts, TensorFlow's coordination service catches SIGTERM (to note a preemption)
    and the process runs on; tfafm takes SIGTERM back. The chief then loses its peer: one line, no traceback."""
    workers = [start_worker(tmp_path, index, ports, cache) for index in (0, 1)]
    try:
        for line in workers[0].stderr:  # the chief's notes: it trains once the strategy has started
            if line.startswith("Training deepfm"):
                break
        time.sleep(2)
        workers[1].send_signal(signal.SIGTERM)
        # The chief fails at its next collective, within the 30 s collective timeout of the signal; on a
        # loaded 2-core CI machine that has taken over 120 s of wall time once (at a 60 s timeout).
        outputs = [worker.communicate(timeout=240) for worker in reversed(workers)][::-1]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    worker_lines = [line for line in outputs[1][1].splitlines() if line.startswith("tfafm")]
    assert (workers[1].returncode, worker_lines) == (143, ["tfafm train: terminated by SIGTERM"]), outputs[1][1]
    chief_lines = outputs[0][1].strip().splitlines()
    assert workers[0].returncode == 2 and "Traceback" not in outputs[0][1], outputs[0][1][-3000:]
    assert re.match(r"tfafm train: error: Lost the cluster: another task stopped", chief_lines[-1]), chief_lines
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signal_name, code, line", [("SIGTERM", 143, "terminated by SIGTERM"),
                                                     ("SIGINT", 130, "interrupted")])
def test_a_signal_while_tensorflow_loads_is_one_line(signal_name, code, line, tmp_path):
    """Before the command's handler was in place (TensorFlow loading, seconds), Ctrl-C printed a 78-line
    KeyboardInterrupt traceback and SIGTERM ended the process without a word."""
    script = (  # Ctrl-C's handler: a job started in the background of a script inherits SIGINT ignored
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import tfafm_cli\n"
        "quiets = tfafm_cli._quiets_tensorflow\n"
        "def slow():  # the signal lands while tfafm.cli (and TensorFlow) is being imported\n"
        f"    os.kill(os.getpid(), signal.{signal_name}); time.sleep(5); return quiets()\n"
        "tfafm_cli._quiets_tensorflow = slow\n"
        "sys.exit(tfafm_cli.main(['eval', 'model.keras', '--quiet']))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == code
    assert done.stderr.strip().splitlines() == [f"tfafm eval: {line}"]
