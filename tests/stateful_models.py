"""User models whose layers hold state outside their weights, or that the runtimes find hard.

Each builder returns ``(model, data)``: a built model and 256 rows of its
inputs (strings as numpy object arrays). Used by ``test_stateful_models.py``.
"""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops

ROWS = 256
_init = keras.initializers.RandomNormal(stddev=0.3, seed=1)


def _head(x, units: int = 16):
    x = keras.layers.Dense(units, activation="relu", name="hidden")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="click")(x)


def _embedded(ids, vocabulary: int, dim: int = 8):
    return keras.layers.Flatten()(keras.layers.Embedding(vocabulary, dim, embeddings_initializer=_init,
                                                         name="table")(ids))


def adapted_string_lookup(rng):
    words = np.array([f"item{i}" for i in range(40)], dtype=object)
    data = {"item": words[rng.integers(0, 40, (ROWS, 1))], "price": rng.normal(size=(ROWS, 1)).astype("float32")}
    item = keras.Input((1,), dtype="string", name="item")
    price = keras.Input((1,), name="price")
    lookup = keras.layers.StringLookup(name="lookup")
    lookup.adapt(data["item"])
    x = keras.layers.Concatenate()([_embedded(lookup(item), lookup.vocabulary_size()), price])
    return keras.Model({"item": item, "price": price}, _head(x), name="string_lookup"), data


def integer_lookup_with_vocabulary(rng):
    data = {"user": rng.integers(0, 300, (ROWS, 1)).astype("int64")}
    user = keras.Input((1,), dtype="int64", name="user")
    lookup = keras.layers.IntegerLookup(vocabulary=np.arange(0, 300, 3), mask_token=-1, num_oov_indices=2,
                                        name="lookup")
    return keras.Model({"user": user}, _head(_embedded(lookup(user), lookup.vocabulary_size())),
                       name="integer_lookup"), data


def salted_hashing(rng):
    data = {"query": np.array([f"q{i}" for i in rng.integers(0, 200, ROWS)], dtype=object)[:, None]}
    query = keras.Input((1,), dtype="string", name="query")
    hashed = keras.layers.Hashing(32, salt=1337, name="hash")(query)
    return keras.Model({"query": query}, _head(_embedded(hashed, 32)), name="hashing"), data


def adapted_normalization_and_discretization(rng):
    data = {"price": rng.lognormal(size=(ROWS, 1)).astype("float32")}
    price = keras.Input((1,), name="price")
    normalize = keras.layers.Normalization(name="normalize")
    normalize.adapt(data["price"])
    bucket = keras.layers.Discretization(num_bins=8, name="bucket")
    bucket.adapt(data["price"])
    x = keras.layers.Concatenate()([normalize(price), _embedded(bucket(price), 8)])
    return keras.Model({"price": price}, _head(x), name="normalize_bucket"), data


def multi_hot_wide_and_deep(rng):
    data = {"tags": rng.integers(0, 20, (ROWS, 3)).astype("int32")}
    tags = keras.Input((3,), dtype="int32", name="tags")
    wide = keras.layers.CategoryEncoding(20, output_mode="multi_hot", name="multi_hot")(tags)
    deep = keras.layers.Dense(16, activation="relu", name="deep")(_embedded(tags, 20))
    out = keras.layers.Dense(1, activation="sigmoid", name="click")(keras.layers.Concatenate()([wide, deep]))
    return keras.Model({"tags": tags}, out, name="multi_hot"), data


def gru_over_history(rng):
    data = {"history": rng.integers(1, 50, (ROWS, 6)).astype("int32")}
    history = keras.Input((6,), dtype="int32", name="history")
    steps = keras.layers.Embedding(50, 8, embeddings_initializer=_init, mask_zero=True, name="table")(history)
    return keras.Model({"history": history}, _head(keras.layers.GRU(8, name="gru")(steps)), name="gru"), data


def mixed_float16_mlp(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        ids = keras.Input((4,), dtype="int32", name="ids")
        x = keras.layers.Dense(32, activation="relu", name="hidden")(_embedded(ids, 60))
        out = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="click")(x)
        model = keras.Model({"ids": ids}, out, name="mixed_float16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model, {"ids": rng.integers(0, 60, (ROWS, 4)).astype("int32")}


def adapted_text_vectorization(rng):
    words = [f"w{i}" for i in range(30)]
    data = {"title": np.array([" ".join(rng.choice(words, 4)) for _ in range(ROWS)], dtype=object)[:, None]}
    title = keras.Input((1,), dtype="string", name="title")
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=4, name="vectorize")
    vectorize.adapt(data["title"][:, 0])
    tokens = keras.layers.Embedding(40, 8, embeddings_initializer=_init, name="table")(vectorize(title))
    return keras.Model({"title": title}, _head(keras.layers.GlobalAveragePooling1D()(tokens)),
                       name="text_vectorization"), data


@keras.saving.register_keras_serializable(package="tfafm_tests")
class RemapIds(keras.layers.Layer):
    """A user layer whose state is an asset: a table mapping raw ids to dense ids, fitted with
    ``adapt`` and saved as a file (not a weight, not in the config)."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.table = np.zeros(self.size, dtype="int32")

    def adapt(self, ids) -> None:
        values, counts = np.unique(np.asarray(ids).reshape(-1), return_counts=True)
        order = values[np.argsort(-counts, kind="stable")]
        self.table = np.zeros(self.size, dtype="int32")
        self.table[order] = np.arange(1, len(order) + 1, dtype="int32")

    def call(self, ids):
        return ops.take(ops.convert_to_tensor(self.table), ops.cast(ids, "int32"))

    def save_assets(self, dir_path):
        np.save(os.path.join(dir_path, "table.npy"), self.table)

    def load_assets(self, dir_path):
        self.table = np.load(os.path.join(dir_path, "table.npy"))

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def custom_layer_with_assets(rng):
    data = {"raw": rng.integers(0, 100, (ROWS, 1)).astype("int32")}
    raw = keras.Input((1,), dtype="int32", name="raw")
    remap = RemapIds(100, name="remap")
    remap.adapt(data["raw"])
    return keras.Model({"raw": raw}, _head(_embedded(remap(raw), 101)), name="asset_layer"), data


# Per model, what each export does: "ok" (written and verified) or the layer named in the refusal.
EXPORTS = {
    adapted_string_lookup: {"litert": "lookup", "onnx": "lookup", "saved_model": "ok"},
    integer_lookup_with_vocabulary: {"litert": "lookup", "onnx": "intlookup|lookup", "saved_model": "ok"},
    salted_hashing: {"litert": "hash", "onnx": "hash", "saved_model": "ok"},
    adapted_normalization_and_discretization: {"litert": "ok", "onnx": "bucket", "saved_model": "ok"},
    multi_hot_wide_and_deep: {"litert": "multi_hot", "onnx": "ok", "saved_model": "ok"},
    gru_over_history: {"litert": "ok", "onnx": "ok", "saved_model": "ok"},
    mixed_float16_mlp: {"litert": "ok", "onnx": "ok", "saved_model": "ok"},
    adapted_text_vectorization: {"litert": "vectorize", "onnx": "vectorize", "saved_model": "ok"},
    custom_layer_with_assets: {"litert": "ok", "onnx": "ok", "saved_model": "ok"},
}
CORPUS = list(EXPORTS)
