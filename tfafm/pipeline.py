"""Compressing a saved run or a user's ``.keras`` model end to end: data, calibrate, factor,
fine-tune, measure, save."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
from typing import Any, Callable, ContextManager, Optional

import keras

from tfafm.compression.api import compress
from tfafm.compression.budget import compare_on
from tfafm.compression.report import CompressionReport, plot_budget
from tfafm.data.specs import absolute_spec
from tfafm.errors import UserError
from tfafm.runs import Run, save_run
from tfafm_choices import FINETUNE_FROM, ID_COVERAGE, METHOD

FRONTIER_PLOT = "frontier.png"


@dataclasses.dataclass
class RunData:
    """The data a command runs a model on.

    Attributes:
        spec: the ``--data`` spec.
        calibration: batches to calibrate (and fine-tune) on.
        validation: held-out ``(features, labels)`` batches, or None.
        description: one line for logs.
        errors: a context manager under which the datasets are consumed (it
            turns a data error TensorFlow wraps back into the one-line error).
    """

    spec: str
    calibration: Any
    validation: Any
    description: str
    errors: Callable[[], ContextManager] = contextlib.nullcontext


def load_run_data(run: Run, spec: str, validation_spec: Optional[str] = None, skip_bad_lines: bool = False,
                  labels_required: bool = False) -> RunData:
    """The data ``spec`` for ``run``'s model, split into calibration and validation batches.

    A run tfafm trained reads ``spec`` through its saved preprocessing and
    keeps its train/validation split. Any other model (a ``.keras`` file)
    reads ``parquet:`` / ``csv:`` / ``tfrecord:`` files keyed by its input
    names (:mod:`tfafm.data.keyed`); without ``validation_spec`` every 10th
    batch of ``spec`` is held out for validation.
    """
    if not run.reads_keyed_data:
        bundle = run.load_data(spec, skip_bad_lines=skip_bad_lines, evaluation_only=False)
        validation = bundle.validation
        if validation_spec is not None:
            validation = run.load_data(validation_spec, skip_bad_lines=skip_bad_lines).validation
        return RunData(spec, bundle.train, validation, bundle.description)
    from tfafm.model_data import VALIDATION_EVERY, keyed_for

    batch = run.config.batch_size
    data = keyed_for(run.model, spec, batch, labels_required=labels_required)
    if validation_spec is None:
        return RunData(spec, data.dataset(VALIDATION_EVERY, keep=False),
                       data.dataset(VALIDATION_EVERY, keep=True) if data.labels else None,
                       f"{data.description}; every {VALIDATION_EVERY}th row held out for validation",
                       data.errors_raised)
    held_out = keyed_for(run.model, validation_spec, batch, labels_required=True)

    @contextlib.contextmanager
    def both():
        with data.errors_raised(), held_out.errors_raised():
            yield

    return RunData(spec, data.dataset(), held_out.dataset(), f"{data.description}; validation: {validation_spec}",
                   both)


@dataclasses.dataclass
class CompressionResult:
    model: keras.Model
    report: CompressionReport
    metrics: dict[str, dict[str, float]]  # "original", "compressed", "finetuned" (first output with labels)


def _first_output_metrics(report: CompressionReport) -> dict[str, dict[str, float]]:
    validation = (report.accuracy or {}).get("validation") or {}
    for row in validation.get("outputs", {}).values():
        if row["original"] is not None:
            return {"original": row["original"], "compressed": row["compressed"]}
    return {}


def _after_fine_tuning(report: CompressionReport, tuned: dict[str, Any], original: keras.Model,
                       model: keras.Model, validation, epochs: int, source: str) -> CompressionReport:
    """``report`` describing the weights fine-tuning left: where it kept its weights, the validation
    comparison is measured again and the check of the compressed weights (now gone) dropped."""
    gains = tuned.get("outputs") or {"": {"auc_gain": tuned["auc_gain"], "gain_z": tuned["gain_z"]}}
    measured = ", ".join(f"{name + ' ' if name else ''}{g['auc_gain']:+.4f}"
                         + (f" (z {g['gain_z']:.2f})" if g["gain_z"] is not None else "") for name, g in gains.items())
    targets = "the original model's predictions" if source == "teacher" else "the labels"
    what = f"fine-tuned {epochs} epoch(s) on {targets}"
    accuracy = {**(report.accuracy or {}), "finetuning": tuned}
    if tuned["kept"]:
        accuracy.pop("check", None)
        accuracy["validation"] = compare_on(original, model, validation)
        note = f"{what}: kept (validation AUC gain {measured}); the accuracy below is the fine-tuned model's"
    else:
        note = (f"{what}: not kept (validation AUC gain {measured}, not significant or a loss): the model is the "
                "compressed one")
    return dataclasses.replace(report, accuracy=accuracy, notes=report.notes + (note,))


def compress_run(
    run: Run,
    data: RunData,
    out: Optional[str] = None,
    method: str = METHOD,
    target_ratio: Optional[float] = 4.0,
    energy: Optional[float] = None,
    max_auc_drop: Optional[float] = None,
    objective: str = "both",
    criterion: Optional[str] = None,
    first_order: str = "codes",
    id_coverage: float | str = ID_COVERAGE,
    quantization: Optional[str] = None,
    inner_activation: Optional[str] = None,
    finetune_epochs: int = 0,
    finetune_learning_rate: Optional[float] = None,
    finetune_from: str = FINETUNE_FROM[0],
    calibration_steps: Optional[int] = None,
    verbose: int = 1,
) -> CompressionResult:
    """Compresses ``run.model`` on ``data.calibration`` and measures it on ``data.validation``.

    Exactly one of ``target_ratio``, ``energy`` and ``max_auc_drop`` applies
    (``energy`` or ``max_auc_drop`` given: ``target_ratio`` is ignored); the
    others are those of :func:`tfafm.compress`. Fine-tuning, if any, runs
    ``finetune_epochs`` epochs of ``model.fit`` at ``finetune_learning_rate``
    (default: half the run's learning rate) on the original model's predictions
    (``finetune_from="teacher"``) or the labels (``"labels"``), and keeps the
    starting weights unless the validation AUC gain is significant
    (:func:`tfafm.training.fine_tune`). The
    result is saved as a run directory with ``report.md``, ``report.json``
    (and ``frontier.png`` for a budget search) when ``out`` is given.
    """
    from tfafm.training import fine_tune

    if finetune_from not in FINETUNE_FROM:
        raise UserError(f"finetune_from must be one of {FINETUNE_FROM}, got {finetune_from!r}.")
    if energy is not None or max_auc_drop is not None:
        target_ratio = None
    with data.errors():
        model, report = compress(
            run.model, data.calibration, method=method, target_ratio=target_ratio, energy=energy,
            max_auc_drop=max_auc_drop, validation_data=data.validation, objective=objective, criterion=criterion,
            first_order=first_order, id_coverage=id_coverage,
            quantization=quantization, inner_activation=inner_activation, calibration_steps=calibration_steps,
            progress=verbose > 0,
        )
        metrics = _first_output_metrics(report)
        if finetune_epochs > 0:
            tuning = types.SimpleNamespace(train=data.calibration, validation=data.validation)
            metrics["finetuned"] = fine_tune(model, tuning, finetune_epochs,
                                             finetune_learning_rate or run.config.learning_rate / 2,
                                             run.config.early_stopping_patience, verbose,
                                             teacher=run.model if finetune_from == "teacher" else None)
            report = _after_fine_tuning(report, metrics["finetuned"], run.model, model, data.validation,
                                        finetune_epochs, finetune_from)
    if out is not None:
        info: dict[str, Any] = {
            **run.info, "kind": "compressed", "source_run": run.path, "data": absolute_spec(data.spec), "method": report.method,
            "method_option": method,
            "objective": objective, "criterion": criterion, "first_order": first_order, "id_coverage": id_coverage,
            "quantization": quantization,
            "inner_activation": inner_activation,
            "finetune_epochs": finetune_epochs, "finetune_from": finetune_from if finetune_epochs else None,
            "stages": metrics,
            "metrics": metrics.get("finetuned", metrics.get("compressed")),
            "compression": report.to_dict()["totals"],
        }
        budget = (report.accuracy or {}).get("budget")

        def plot(folder: str) -> None:
            if budget is not None:
                plot_budget(budget, os.path.join(folder, FRONTIER_PLOT))

        save_run(out, model, run.schema, run.preprocessor, info,
                 extra_files={"report.md": report.to_markdown(), "report.json": report.to_json()},
                 extra_writers=[plot])
    return CompressionResult(model, report, metrics)
