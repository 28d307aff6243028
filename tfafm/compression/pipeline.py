"""Compressing a saved run end to end: calibrate, factor, fine-tune, evaluate, save."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import keras

from tfafm.compression.api import compress
from tfafm.compression.report import CompressionReport
from tfafm.metrics import evaluate
from tfafm.runs import Run, save_run
from tfafm.training import fine_tune


@dataclasses.dataclass
class CompressionResult:
    model: keras.Model
    report: CompressionReport
    metrics: dict[str, dict[str, float]]  # "original", "compressed", "finetuned"


def compress_run(
    run: Run,
    data: str,
    out: Optional[str] = None,
    method: str = "afm",
    target_ratio: Optional[float] = 4.0,
    energy: Optional[float] = None,
    objective: str = "both",
    quantization: Optional[str] = None,
    inner_activation: Optional[str] = None,
    finetune_epochs: int = 0,
    finetune_learning_rate: Optional[float] = None,
    calibration_steps: Optional[int] = None,
    skip_bad_lines: bool = False,
    verbose: int = 1,
) -> CompressionResult:
    """Compresses ``run.model`` on the run's training split and evaluates on its validation split.

    Calibration uses the training split (``calibration_steps`` batches at
    most); fine-tuning, if any, runs ``finetune_epochs`` epochs of ``model.fit``
    at ``finetune_learning_rate`` (default: half the run's learning rate) and
    keeps the starting weights if no epoch improves validation AUC
    (:func:`tfafm.training.fine_tune`). ``objective`` and ``quantization``
    are those of :func:`tfafm.compress`.
    The result is saved as a run directory with ``report.md`` and
    ``report.json`` when ``out`` is given.
    """
    if energy is not None:
        target_ratio = None
    bundle = run.load_data(data, skip_bad_lines=skip_bad_lines, evaluation_only=False)
    metrics = {"original": evaluate(run.model, bundle.validation)}
    model, report = compress(
        run.model, bundle.train, method=method, target_ratio=target_ratio, energy=energy,
        objective=objective, quantization=quantization,
        inner_activation=inner_activation, calibration_steps=calibration_steps, progress=verbose > 0,
    )
    metrics["compressed"] = evaluate(model, bundle.validation)
    if finetune_epochs > 0:
        config = run.config
        metrics["finetuned"] = fine_tune(model, bundle, finetune_epochs,
                                         finetune_learning_rate or config.learning_rate / 2,
                                         config.early_stopping_patience, verbose)
    if out is not None:
        info: dict[str, Any] = {
            **run.info, "kind": "compressed", "source_run": run.path, "method": method,
            "objective": objective, "quantization": quantization,
            "inner_activation": inner_activation, "finetune_epochs": finetune_epochs,
            "metrics": metrics.get("finetuned", metrics["compressed"]), "stages": metrics,
            "compression": report.to_dict()["totals"],
        }
        save_run(out, model, run.schema, run.preprocessor, info,
                 extra_files={"report.md": report.to_markdown(), "report.json": report.to_json()})
    return CompressionResult(model, report, metrics)
