"""Sample inputs for checking a model: rows of the user's data, or rows generated inside each
input's valid range.

A rewritten model is run, and an exported file compared with its Keras model,
on such rows before either is handed back. Rows come from the user's data
when there is some (:func:`sample_rows`); otherwise :func:`generated_rows`
draws them from what the model itself says its inputs may hold
(:func:`input_domains`): ids below the size of the table or encoding they
index, values a lookup layer knows (its vocabulary), text made of a
``TextVectorization``'s words, floats at the magnitude a ``Normalization``
was adapted to or across a ``Discretization``'s bins, and standard-normal
floats where nothing tells.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tfafm.graph import as_functional, input_names, model_inputs, split_element
from tfafm.errors import UserError

SEQUENCE_LENGTH = 8  # steps drawn for an input whose length is not fixed
_PASSTHROUGH = (keras.layers.Reshape, keras.layers.Flatten)


@dataclasses.dataclass(frozen=True)
class InputDomain:
    """What one model input may hold.

    Attributes:
        name: the input's name (its key for dict inputs).
        dtype: its dtype name (``int32``, ``float32``, ``string``, ...).
        shape: its shape without the batch axis (``None`` where not fixed).
        high: integer ids lie in ``[0, high)`` (the table or encoding they index).
        values: the values a lookup layer knows (its vocabulary, special tokens excluded).
        words: text inputs are made of these words (a ``TextVectorization``'s vocabulary).
        centre, spread: floats are drawn as ``centre + spread * N(0, 1)`` (arrays broadcast to the
            input's shape: a ``Normalization``'s adapted mean and standard deviation; around a
            ``Discretization``'s boundaries).
    """

    name: str
    dtype: str
    shape: tuple
    high: int | None = None
    values: tuple | None = None
    words: tuple | None = None
    centre: Any = None
    spread: Any = None


def _vocabulary(layer) -> tuple:
    """A lookup layer's vocabulary without its mask and OOV tokens."""
    vocabulary = layer.get_vocabulary(include_special_tokens=False)
    return tuple(v.decode() if isinstance(v, bytes) else v for v in vocabulary)


def _domain_of(layer, position: int) -> dict[str, Any] | None:
    """What ``layer`` tells about the tensor at ``position`` of its first argument (a list for
    ``ClipToVocabulary``), or None when it tells nothing."""
    from tfafm.models.layers import ClipToVocabulary
    from tfafm.layers.low_rank import LowRankEmbedding

    if isinstance(layer, ClipToVocabulary):
        return {"high": layer.source_sizes[position]}
    if isinstance(layer, (keras.layers.Embedding, LowRankEmbedding)):
        return {"high": int(layer.input_dim)}
    if isinstance(layer, keras.layers.CategoryEncoding):
        return {"high": int(layer.num_tokens)}
    if isinstance(layer, keras.layers.TextVectorization):
        return {"words": tuple(str(w) for w in layer.get_vocabulary(include_special_tokens=False))}
    if isinstance(layer, (keras.layers.StringLookup, keras.layers.IntegerLookup)):
        values = _vocabulary(layer)
        return {"values": values} if values else None
    if isinstance(layer, keras.layers.Normalization) and not layer.invert and layer.built:
        mean, variance = (np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in (layer.mean, layer.variance))
        return {"centre": mean, "spread": np.sqrt(np.maximum(variance, 0.0))}
    if isinstance(layer, keras.layers.Discretization) and layer.bin_boundaries:
        boundaries = np.asarray(layer.bin_boundaries, np.float64)
        low, high = float(boundaries.min()), float(boundaries.max())
        centre = (low + high) / 2  # one boundary: values on both sides of it all the same
        return {"centre": centre, "spread": max(high - low, 0.1 * abs(centre), 1.0)}
    return None


def input_domains(model: keras.Model) -> dict[str, InputDomain]:
    """Each input's :class:`InputDomain`, read off the first layer that consumes it (through
    ``Reshape`` / ``Flatten``)."""
    functional = as_functional(model)
    sources: dict[int, str] = {}
    found: dict[str, dict[str, Any]] = {}

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        first = args[0] if args else None
        arguments = list(first) if isinstance(first, (list, tuple)) else [first]
        for position, tensor in enumerate(arguments):
            name = sources.get(id(tensor))
            if name is None:
                continue
            if isinstance(layer, _PASSTHROUGH):
                sources[id(outputs)] = name
            elif name not in found:
                domain = _domain_of(layer, position) if isinstance(layer, keras.layers.Layer) else None
                if domain is not None:
                    found[name] = domain
        return outputs

    inputs = keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), functional.input)
    names = input_names(functional)
    for name, tensor in zip(names, keras.tree.flatten(inputs)):
        sources[id(tensor)] = name
    keras.models.clone_model(functional, input_tensors=inputs, clone_function=lambda layer: layer,
                             call_function=call)
    return {name: InputDomain(name, str(tensor.dtype), tuple(tensor.shape[1:]), **found.get(name, {}))
            for name, tensor in zip(names, model.inputs)}


def generated_rows(model: keras.Model, rows: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` rows per input, drawn inside each input's :class:`InputDomain`."""
    rng = np.random.default_rng(seed)
    batch = {}
    for name, domain in input_domains(model).items():
        shape = (rows, *(SEQUENCE_LENGTH if d is None else int(d) for d in domain.shape))
        if domain.words is not None:
            words = np.asarray(domain.words or ("a",), dtype=object)
            picks = rng.integers(0, len(words), (*shape, 4))
            batch[name] = np.array([" ".join(words[p]) for p in picks.reshape(-1, 4)], dtype=object).reshape(shape)
        elif domain.values is not None:
            values = np.asarray(domain.values, dtype=object if domain.dtype == "string" else domain.dtype)
            batch[name] = values[rng.integers(0, len(values), shape)]
        elif domain.dtype == "string":
            batch[name] = np.array([f"value{i}" for i in rng.integers(0, 1000, int(np.prod(shape)))],
                                   dtype=object).reshape(shape)
        elif domain.dtype.startswith(("int", "uint")):
            batch[name] = _ids(rng, shape, domain.high or 2).astype(domain.dtype)
        elif domain.dtype == "bool":
            batch[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            batch[name] = _floats(rng, shape, domain)
    return batch


def _ids(rng: np.random.Generator, shape: tuple, high: int) -> np.ndarray:
    """Integers in ``[0, high)``: half uniform, half log-uniform, so that the small ids, which vocabularies
    numbered by frequency give the most frequent values, are in many rows (uniform draws alone put ids 1-3
    of a 1,000-id field in 0.4% of the rows, where real CTR rows had them in 31%: a file with those rows
    damaged passed its check)."""
    uniform = rng.integers(0, high, shape)
    log_uniform = np.floor(np.exp(rng.uniform(0.0, np.log(high + 1.0), shape))).astype(np.int64) - 1
    return np.where(rng.random(shape) < 0.5, uniform, np.clip(log_uniform, 0, high - 1))


def _floats(rng: np.random.Generator, shape: tuple, domain: InputDomain) -> np.ndarray:
    """Standard-normal floats, moved and scaled to the domain's ``centre`` and ``spread`` where it has them
    (and they broadcast to ``shape``)."""
    values = rng.standard_normal(shape)
    if domain.centre is not None:
        try:
            values = np.broadcast_to(domain.centre + domain.spread * values, shape)
        except ValueError:  # statistics over other axes than the input's: standard normal, as without them
            pass
    return np.asarray(values).astype(domain.dtype)


def sample_rows(model: keras.Model, data, rows: int = 256) -> dict[str, np.ndarray]:
    """Up to ``rows`` rows of ``data`` as ``{input name: array}`` in the model's dtypes.

    ``data`` is what :func:`tfafm.calibrate` takes: a ``tf.data.Dataset`` of
    feature batches or ``(features, labels)`` batches, a dict of arrays, an
    array or a list of arrays (only the first batches a dataset yields are read).
    """
    import tensorflow as tf


    if isinstance(data, tf.data.Dataset):
        parts, count = [], 0
        for element in data:
            flat = [np.asarray(x) for x in model_inputs(model, split_element(element)[0])]
            parts.append(flat)
            count += len(flat[0])
            if count >= rows:
                break
        if not parts:
            raise UserError("The data is empty: no batch to check the model on.")
        flat = [np.concatenate(column)[:rows] for column in zip(*parts)]
    else:
        features = list(data) if isinstance(data, tuple) else data
        flat = [np.asarray(x) for x in model_inputs(model, _head(features, rows))]
    return dict(zip(input_names(model), flat))


def _head(features, rows: int):
    """The first ``rows`` rows of a dict, list or single array of features."""
    if isinstance(features, dict):
        return {k: np.asarray(v)[:rows] for k, v in features.items()}
    if isinstance(features, list):
        return [np.asarray(v)[:rows] for v in features]
    return np.asarray(features)[:rows]
