"""Two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy: calibration and training.

The workers (tests/multiworker_job.py) calibrate a saved DeepFM and train a new one on a two-shard
cache; this process does the same without a strategy. Calibration statistics must agree to 1e-6
(relative), validation AUC to 0.003, and only the chief may write its output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfafm
from tfafm.config import TrainConfig
from tfafm.data import SyntheticCriteo, load_data
from tfafm.data.prepare import prepare
from tfafm.data.specs import file_source

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("multiworker_job.py")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model": "deepfm", "hyperparams": {"hidden_units": [16]}, "embedding_dim": 4,
          "batch_size": 256, "epochs": 1, "learning_rate": 0.005, "seed": 0}
TIMEOUT = 240


def free_loopback_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_table(path: Path, rows: int) -> None:
    """A small click table (2 dense, 4 categorical columns): few variables, so tracing the
    distributed step stays quick."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    generator = SyntheticCriteo(seed=0, num_dense=2, num_sparse=4, max_vocabulary=500)
    features, labels = next(generator.batches(rows, batch_size=rows))
    pq.write_table(pa.table({"click": labels[:, 0], **{name: values[:, 0] for name, values in features.items()}}),
                   path)


def train_like_the_cluster(cache_dir: str):
    """One process, the cluster's steps: each global batch joins the two workers' half
    batches (worker i reads shard i), so both runs do the same arithmetic."""
    import keras
    import tensorflow as tf

    from tfafm.data.cache import read_dataset
    from tfafm.metrics import evaluate
    from tfafm.training import compile_for_ctr

    config = TrainConfig.from_dict(CONFIG)
    bundle = load_data(f"cache:{cache_dir}", **config.data_options())
    half = config.batch_size // 2
    shards = bundle.cache.shards("train")
    halves = [read_dataset([path], bundle.schema, shard["rows"], half, drop_remainder=True)
              for path, shard in zip(bundle.cache.files("train"), shards)]
    steps = min(shard["rows"] // half for shard in shards)
    joined = tf.data.Dataset.zip(tuple(halves)).map(
        lambda first, second: tuple(tf.nest.map_structure(lambda a, b: tf.concat([a, b], 0), first, second)))
    keras.utils.set_random_seed(config.seed)
    model = tfafm.models.build(config.model, bundle.schema, **config.hyperparams)
    compile_for_ctr(model, config.learning_rate)
    model.fit(joined.take(steps), epochs=1, verbose=0)
    return model, evaluate(model, bundle.validation)["auc"]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    try:
        ports = free_loopback_ports(2)
    except OSError as error:
        pytest.skip(f"cannot bind loopback ports on this platform: {error}")
    tmp = tmp_path_factory.mktemp("multiworker")
    table = tmp / "clicks.parquet"
    write_table(table, rows=8_000)
    spec = f"{table}?dense=I1,I2"
    prepare(file_source("parquet", spec, f"parquet:{spec}"), str(tmp / "cache"), shards=2, progress=False)
    single_model, single_auc = train_like_the_cluster(str(tmp / "cache"))
    single_model.save(str(tmp / "model.keras"))

    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        job = {"cache": str(tmp / "cache"), "model": str(tmp / "model.keras"), "stats": str(tmp / "stats.npz"),
               "out": str(tmp / f"run{index}"), "config": CONFIG}
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        workers.append(subprocess.Popen([sys.executable, str(JOB), json.dumps(job)], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=TIMEOUT)
            assert worker.returncode == 0, f"worker failed:\n{stderr[-4000:]}"
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return tmp, (single_model, single_auc), outputs


def test_two_workers_calibrate_like_one(cluster_run):
    tmp, (model, _), _ = cluster_run
    bundle = load_data(f"cache:{tmp / 'cache'}", batch_size=CONFIG["batch_size"])
    alone = tfafm.calibrate(model, bundle.train, progress=False)
    together = tfafm.Statistics.load(str(tmp / "stats.npz"))
    assert sorted(together) == sorted(alone)
    for name in alone:
        a, b = alone[name], together[name]
        assert b.count == a.count and a.count % bundle.train_rows == 0
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-6 * np.abs(a.mean).max())
        np.testing.assert_allclose(b.covariance, a.covariance, rtol=1e-6,
                                   atol=1e-6 * np.abs(a.covariance).max())


def test_two_workers_train_like_one_and_only_the_chief_writes(cluster_run):
    tmp, (_, single_auc), outputs = cluster_run
    assert [o["epochs"] for o in outputs] == [1, 1]
    assert outputs[0]["auc"] == pytest.approx(outputs[1]["auc"], abs=1e-9)
    assert abs(outputs[0]["auc"] - single_auc) <= 0.003, (outputs[0]["auc"], single_auc)
    saved = tfafm.load_run(str(tmp / "run0"))
    assert saved.info["metrics"]["auc"] == pytest.approx(outputs[0]["auc"], abs=1e-9)
    assert not (tmp / "run1").exists()
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []
