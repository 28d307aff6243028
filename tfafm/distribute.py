"""Running on a cluster: ``TF_CONFIG``, the ``tf.distribute`` strategy and which task writes outputs.

Every process of a cluster runs the same command with its own ``TF_CONFIG``
(``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type":
"worker", "index": 0}}``). When ``TF_CONFIG`` names more than one task,
:func:`cluster_strategy` gives the process's ``MultiWorkerMirroredStrategy``;
TensorFlow needs it created before it runs any op, so call it at program
start (``tfafm`` does). The chief (task ``chief``, else worker 0) alone
writes outputs (:func:`is_chief`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Optional

from tfafm.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

_strategy = None


def cluster_config() -> Optional[dict[str, Any]]:
    """The parsed ``TF_CONFIG``, or None when it is unset or empty."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON ({error}).") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError('TF_CONFIG needs "cluster" (e.g. {"worker": ["host:port", ...]}) and '
                        '"task" ({"type": "worker", "index": N}).')
    tasks = cluster.get(task["type"])
    if not isinstance(tasks, list) or not 0 <= int(task["index"]) < len(tasks):
        raise UserError(f"TF_CONFIG task {task} is not in its cluster {cluster}.")
    return config


def cluster_size(config: Optional[dict[str, Any]] = None) -> int:
    """Training tasks (chief and workers) in ``config`` (default: ``TF_CONFIG``); 1 without a cluster."""
    config = cluster_config() if config is None else config
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def cluster_strategy(timeout_seconds: Optional[float] = None) -> Optional["tf.distribute.Strategy"]:
    """This process's ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster of
    more than one task, else None. Created once, at the first call, which must come before
    TensorFlow runs any op; ``timeout_seconds`` bounds each collective (a lost worker
    then fails the others instead of hanging them)."""
    global _strategy
    if _strategy is None and cluster_size() > 1:
        import tensorflow as tf

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
    task_type, index = config["task"]["type"], int(config["task"]["index"])
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in config["cluster"])
