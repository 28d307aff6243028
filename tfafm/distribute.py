"""Running on a cluster: ``TF_CONFIG``, the ``tf.distribute`` strategy and which task writes outputs.

Every process of a cluster runs the same command with its own ``TF_CONFIG``
(``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type":
"worker", "index": 0}}``). When ``TF_CONFIG`` names more than one task,
:func:`cluster_strategy` gives the process's ``MultiWorkerMirroredStrategy``;
TensorFlow needs it created before it runs any op, so call it at program
start (``tfafm`` does). The chief (task ``chief``, else worker 0) alone
writes outputs (:func:`is_chief`).

``TF_CONFIG`` is checked as a whole (types, the ``chief`` and ``worker`` task
types tfafm runs, addresses, indices) with one-line errors. Before creating
the strategy each task waits, for a bounded time, until every other task
accepts connections on its address (:func:`wait_for_peers`, plain Python, so
a signal such as SIGTERM is handled while waiting): a peer that never starts
is reported by name instead of a wait without end inside TensorFlow.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Optional

from tfafm.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

TASK_TYPES = ("chief", "worker")
DEFAULT_TIMEOUT_S = 180.0
_POLL_S = 0.2

_strategy = None


def _fail(problem: str) -> UserError:
    return UserError(f"TF_CONFIG: {problem}")


def _address(text: Any, where: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f"{where} must be an address \"host:port\", got {text!r}.")
    return host.strip("[]"), int(port)


def cluster_config() -> Optional[dict[str, Any]]:
    """The parsed and checked ``TF_CONFIG``, or None when it is unset or empty.

    Raises:
        UserError: one line naming what is wrong (not JSON, a missing or
            mistyped field, a task type tfafm does not run, an index out of
            range, the same address twice).
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(f"not valid JSON ({error}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) \
            or not isinstance(config.get("task"), dict):
        raise _fail('expected an object with "cluster" (e.g. {"worker": ["host:port", ...]}) and "task" '
                    '({"type": "worker", "index": N}).')
    cluster, task = config["cluster"], config["task"]
    for kind, addresses in cluster.items():
        if kind not in TASK_TYPES:
            raise _fail(f"task type {kind!r} is not supported: tfafm trains with MultiWorkerMirroredStrategy, "
                        "whose tasks are one \"chief\" (optional) and \"worker\"s (no parameter servers or "
                        "evaluators).")
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f"cluster.{kind} must be a non-empty list of \"host:port\" addresses, got {addresses!r}.")
    if len(cluster.get("chief", [])) > 1:
        raise _fail(f"a cluster has at most one chief, got {len(cluster['chief'])}.")
    if not cluster:
        raise _fail("cluster names no tasks.")
    seen: dict[tuple[str, int], str] = {}
    for kind, addresses in cluster.items():
        for index, text in enumerate(addresses):
            name = f"{kind} {index}"
            address = _address(text, f"cluster.{kind}[{index}]")
            if address in seen:
                raise _fail(f"{seen[address]} and {name} have the same address {text}.")
            seen[address] = name
    kind, index = task.get("type"), task.get("index")
    if not isinstance(kind, str) or kind not in cluster:
        raise _fail(f"task.type must be one of the cluster's task types ({', '.join(cluster)}), got {kind!r}.")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise _fail(f"task.index must be an integer in [0, {len(cluster[kind]) - 1}] (the {kind} list), "
                    f"got {index!r}.")
    return config


def cluster_size(config: Optional[dict[str, Any]] = None) -> int:
    """Training tasks (chief and workers) in ``config`` (default: ``TF_CONFIG``); 1 without a cluster."""
    config = cluster_config() if config is None else config
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in TASK_TYPES)


def _listen(port: int) -> socket.socket:
    """A socket listening on ``port`` of every interface (IPv6 and IPv4 where the system has both)."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
    return socket.create_server(("", port), backlog=128)


def _answers(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_peers(config: dict[str, Any], timeout_seconds: float) -> None:
    """Listens on this task's port and waits until every other task accepts connections on its own.

    Each task listens while it waits, so the tasks find each other whatever
    order they start in; the socket is closed before TensorFlow's server takes
    the port. Plain Python: signals are handled while waiting.

    Raises:
        UserError: this task's port is taken (another process runs as this
            task?), or a peer did not answer within ``timeout_seconds``.
    """
    cluster, task = config["cluster"], config["task"]
    me = f"{task['type']} {task['index']}"
    own = cluster[task["type"]][task["index"]]
    peers = {f"{kind} {index}": text for kind in cluster for index, text in enumerate(cluster[kind])
             if f"{kind} {index}" != me}
    try:
        listener = _listen(_address(own, me)[1])
    except OSError as error:
        hint = "; is another process running as this task (the same index twice)?" \
            if error.errno == errno.EADDRINUSE else ""
        cause = os.strerror(error.errno) if error.errno else str(error)
        raise _fail(f"{me} cannot listen on {own}: {cause}{hint}") from None
    deadline = time.monotonic() + timeout_seconds
    try:
        while peers:
            for name, text in list(peers.items()):
                if _answers(_address(text, name), timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                    del peers[name]
            if not peers:
                break
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{name} ({text})" for name, text in peers.items())
                raise UserError(f"The cluster did not form within {timeout_seconds:g} s: {missing} never "
                                f"answered; start every task (or raise --cluster-timeout).")
            time.sleep(_POLL_S)
    finally:
        listener.close()


def cluster_strategy(timeout_seconds: Optional[float] = None,
                     startup_timeout: float = DEFAULT_TIMEOUT_S) -> Optional["tf.distribute.Strategy"]:
    """This process's ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster of
    more than one task, else None.

    Created once, at the first call, which must come before TensorFlow runs
    any op: first :func:`wait_for_peers` (at most ``startup_timeout``
    seconds), then the strategy. ``timeout_seconds`` bounds each collective
    (a lost worker then fails the others instead of hanging them).
    """
    global _strategy
    config = cluster_config()
    if _strategy is None and cluster_size(config) > 1:
        import tensorflow as tf

        wait_for_peers(config, startup_timeout)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
        try:
            _strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as error:
            if "program startup" not in str(error):
                raise
            raise UserError("The multi-worker strategy must be created before TensorFlow runs any op: call "
                            "tfafm.distribute.cluster_strategy() at the start of the program.") from None
    return _strategy


def is_chief() -> bool:
    """Whether this process writes outputs: no cluster, or task ``chief``, or worker 0 of a cluster
    without a chief."""
    config = cluster_config()
    if config is None:
        return True
    task_type, index = config["task"]["type"], config["task"]["index"]
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in config["cluster"])
