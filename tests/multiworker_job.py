"""One worker of the two-worker test (tests/test_multiworker.py starts two, each with its TF_CONFIG).

    python tests/multiworker_job.py '{"cache": ..., "model": ..., "stats": ..., "out": ..., "config": {...}}'

Calibrates a saved model on the cache with ``tfafm.calibrate(strategy=...)`` (the chief saves the
statistics), then trains with ``tfafm.training.train`` (only the chief writes its run directory).
"""

import json
import sys

from tfafm.distribute import cluster_strategy, is_chief

strategy = cluster_strategy(timeout_seconds=120)  # before TensorFlow runs any op

import keras  # noqa: E402

import tfafm  # noqa: E402
from tfafm.config import TrainConfig  # noqa: E402
from tfafm.data import load_data  # noqa: E402
from tfafm.training import train  # noqa: E402

job = json.loads(sys.argv[1])
config = TrainConfig.from_dict(job["config"])
bundle = load_data(f"cache:{job['cache']}", batch_size=config.batch_size, rebuild_stale=False)
statistics = tfafm.calibrate(keras.models.load_model(job["model"]), bundle.train, strategy=strategy,
                             progress=False)
if is_chief():
    statistics.save(job["stats"])
result = train(config, f"cache:{job['cache']}", out=job["out"], verbose=0)
print(json.dumps({"auc": result.metrics["auc"], "epochs": result.epochs_run}))
