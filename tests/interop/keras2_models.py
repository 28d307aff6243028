"""Keras 2 / TFRS models of the shapes users bring, and their data (import with TF_USE_LEGACY_KERAS=1).

* :func:`movielens_dcn`: the TFRS DCN tutorial's ranking model (string and
  integer lookups, embeddings of 32, a ``Cross`` layer, a 192-192 deep tower,
  rating regression with MSE) as a ``tfrs.Model`` whose ``ranking_model`` is a
  functional Keras 2 model, on MovieLens ``ml-latest-small`` ratings.
* :func:`ranking_dlrm`: ``tfrs.experimental.models.Ranking`` as in TFRS's own tests
  (``PartialTPUEmbedding`` with Keras tables, MLP stacks, ``DotInteraction``).
* :func:`deepfm_with_lookups`: a DeepFM-like functional model reading raw strings,
  integers and dense values through ``StringLookup`` / ``IntegerLookup`` /
  ``Hashing`` / ``Normalization``.
* :func:`sequential_mlp`: a plain Sequential MLP.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as k2

MOVIELENS = Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens" / "ml-latest-small"
DCN_STRING_FEATURES = ("movie_id", "user_id", "movie_genre")
DCN_INT_FEATURES = ("movie_year", "rating_year")


def movielens_ratings(folder: Path = MOVIELENS, seed: int = 0) -> dict[str, np.ndarray]:
    """All ml-latest-small ratings, shuffled: ids as strings, the movie's first genre and year, the rating's year."""
    movies = {}
    with gzip.open(folder / "movies.csv.gz", "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            year = re.search(r"\((\d{4})\)\s*$", row["title"])
            movies[row["movieId"]] = (row["genres"].split("|")[0], int(year.group(1)) if year else 0)
    columns: dict[str, list] = {name: [] for name in (*DCN_STRING_FEATURES, *DCN_INT_FEATURES, "user_rating")}
    with gzip.open(folder / "ratings.csv.gz", "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            genre, year = movies.get(row["movieId"], ("(no genres listed)", 0))
            columns["movie_id"].append(row["movieId"])
            columns["user_id"].append(row["userId"])
            columns["movie_genre"].append(genre)
            columns["movie_year"].append(year)
            columns["rating_year"].append(1970 + int(row["timestamp"]) // 31_556_952)
            columns["user_rating"].append(float(row["rating"]))
    order = np.random.default_rng(seed).permutation(len(columns["user_rating"]))
    data = {name: np.array(values, dtype=object if name in DCN_STRING_FEATURES else None)[order]
            for name, values in columns.items()}
    data["user_rating"] = data["user_rating"].astype(np.float32)
    return data


def split_rows(data: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: values[start:stop] for name, values in data.items()}


class MovieLensRanking(tfrs.models.Model):
    """The tutorial's ``tfrs.Model``: a functional ranking network plus a rating task."""

    def __init__(self, ranking_model: k2.Model):
        super().__init__()
        self.ranking_model = ranking_model
        self.task = tfrs.tasks.Ranking(loss=k2.losses.MeanSquaredError(),
                                       metrics=[k2.metrics.RootMeanSquaredError("RMSE")])

    def call(self, features):
        return self.ranking_model(features)

    def compute_loss(self, features, training=False):
        features = dict(features)
        labels = features.pop("user_rating")
        return self.task(labels=labels, predictions=self(features, training=training))


def movielens_dcn(train: dict[str, np.ndarray], embedding_dim: int = 32, projection_dim: int | None = None,
                  deep_layers=(192, 192), steps: int = 10, batch_size: int = 4096, seed: int = 0):
    """The tutorial DCN, vocabularies from ``train``, trained for ``steps`` batches with Adam(0.01)."""
    k2.utils.set_random_seed(seed)
    inputs, embedded = {}, []
    for name in (*DCN_STRING_FEATURES, *DCN_INT_FEATURES):
        vocabulary = sorted(set(train[name].tolist()))
        if name in DCN_STRING_FEATURES:
            inputs[name] = k2.Input(shape=(), dtype=tf.string, name=name)
            lookup = k2.layers.StringLookup(vocabulary=vocabulary, mask_token=None, name=f"{name}_lookup")
        else:
            inputs[name] = k2.Input(shape=(), dtype=tf.int64, name=name)
            lookup = k2.layers.IntegerLookup(vocabulary=vocabulary, mask_token=None, name=f"{name}_lookup")
        embedding = k2.layers.Embedding(len(vocabulary) + 1, embedding_dim, name=f"{name}_embedding")
        embedded.append(embedding(lookup(inputs[name])))
    x = k2.layers.Concatenate(name="embeddings")(embedded)
    x = tfrs.layers.dcn.Cross(projection_dim=projection_dim, kernel_initializer="glorot_uniform", name="cross")(x)
    for i, units in enumerate(deep_layers):
        x = k2.layers.Dense(units, activation="relu", name=f"deep_{i}")(x)
    ranking = k2.Model(inputs, k2.layers.Dense(1, name="rating")(x), name="dcn_ranking")
    model = MovieLensRanking(ranking)
    model.compile(optimizer=k2.optimizers.Adam(0.01))
    dataset = tf.data.Dataset.from_tensor_slices(train).shuffle(50_000, seed=seed).batch(batch_size).repeat()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return model


def dlrm_data(rows: int, vocab_sizes=(30, 3, 26), num_dense: int = 8, seed: int = 0):
    """``({"dense_features", "sparse_features"}, labels)`` like TFRS's Ranking tests."""
    rng = np.random.default_rng(seed)
    dense = rng.random((rows, num_dense), dtype=np.float32)
    sparse = {str(i): rng.integers(0, size, rows).astype(np.int32) for i, size in enumerate(vocab_sizes)}
    mix = dense.mean(axis=1) + sum(sparse.values()) / sum(vocab_sizes)
    return {"dense_features": dense, "sparse_features": sparse}, (mix / 2 > 0.5).astype(np.int32)


def ranking_dlrm(vocab_sizes=(30, 3, 26), num_dense: int = 8, embedding_dim: int = 16, steps: int = 5,
                 feature_interaction=None, seed: int = 0):
    """``tfrs.experimental.models.Ranking`` (DLRM by default), trained ``steps`` batches of 64 (0: untrained)."""
    k2.utils.set_random_seed(seed)
    features = {}
    for i, size in enumerate(vocab_sizes):
        table = tf.tpu.experimental.embedding.TableConfig(
            vocabulary_size=size, dim=embedding_dim, name=f"table_{i}",
            initializer=tf.initializers.TruncatedNormal(mean=0.0, stddev=1 / math.sqrt(embedding_dim)))
        features[str(i)] = tf.tpu.experimental.embedding.FeatureConfig(table=table)
    optimizer = k2.optimizers.legacy.Adam()
    model = tfrs.experimental.models.Ranking(
        embedding_layer=tfrs.experimental.layers.embedding.PartialTPUEmbedding(
            feature_config=features, optimizer=optimizer, size_threshold=None),
        bottom_stack=tfrs.layers.blocks.MLP(units=[32, embedding_dim], final_activation="relu"),
        feature_interaction=feature_interaction or tfrs.layers.feature_interaction.DotInteraction(),
        top_stack=tfrs.layers.blocks.MLP(units=[32, 16, 1], final_activation="sigmoid"),
    )
    model.compile(optimizer=optimizer)
    if steps:
        inputs, labels = dlrm_data(64 * steps, vocab_sizes, num_dense, seed)
        model.fit(tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(64), epochs=1, verbose=0)
    return model


def deepfm_rows(rows: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw rows for :func:`deepfm_with_lookups`: Zipf-like strings (some unseen), integers, dense values."""
    rng = np.random.default_rng(seed)

    def strings(prefix, vocabulary):
        return np.array([f"{prefix}{i}" for i in rng.zipf(1.3, rows) % vocabulary], dtype=object).reshape(rows, 1)

    raw = {
        "site": strings("s", 60), "app": strings("a", 40), "device": strings("d", 500),
        "hour": rng.integers(0, 24, (rows, 1)), "counts": np.log1p(rng.lognormal(1.0, 1.0, (rows, 3))).astype(np.float32),
    }
    logit = (raw["hour"][:, 0] % 7 - 3) / 3 + raw["counts"][:, 0] - 1.5
    return raw, (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)


def deepfm_with_lookups(train_raw: dict[str, np.ndarray], labels: np.ndarray, dim: int = 8, epochs: int = 2,
                        seed: int = 0) -> k2.Model:
    """A DeepFM-like functional model with its lookups inside; first order + FM (dot products) + deep tower."""
    k2.utils.set_random_seed(seed)
    inputs = {name: k2.Input(shape=(1,), dtype=tf.string, name=name) for name in ("site", "app", "device")}
    inputs["hour"] = k2.Input(shape=(1,), dtype=tf.int64, name="hour")
    inputs["counts"] = k2.Input(shape=(3,), name="counts")
    site_vocabulary = sorted(set(train_raw["site"][:, 0]) - {"s0"})
    ids = {
        "site": k2.layers.StringLookup(vocabulary=site_vocabulary, num_oov_indices=2, name="site_lookup"),
        "app": k2.layers.StringLookup(vocabulary=sorted(set(train_raw["app"][:, 0]) - {"a0"})[:30],
                                      mask_token="a0", name="app_lookup"),
        "device": k2.layers.Hashing(num_bins=64, salt=[7, 11], name="device_hash"),
        "hour": k2.layers.IntegerLookup(vocabulary=list(range(1, 22)), mask_token=0, name="hour_lookup"),
    }
    sizes = {"site": len(site_vocabulary) + 2, "app": 32, "device": 64, "hour": 23}
    ids = {name: layer(inputs[name]) for name, layer in ids.items()}
    vectors = [k2.layers.Reshape((dim,), name=f"{n}_vector")(k2.layers.Embedding(sizes[n], dim, name=f"{n}_embedding")(i))
               for n, i in ids.items()]
    normalization = k2.layers.Normalization(name="counts_normalized")
    normalization.adapt(train_raw["counts"])
    dense = normalization(inputs["counts"])
    dense_vector = k2.layers.Dense(dim, name="dense_vector")(dense)
    first_order = k2.layers.Add(name="first_order")(
        [k2.layers.Flatten(name=f"{n}_weight")(k2.layers.Embedding(sizes[n], 1, name=f"{n}_linear")(i))
         for n, i in ids.items()] + [k2.layers.Dense(1, name="dense_linear")(dense)])
    pairs = tfrs.layers.feature_interaction.DotInteraction(name="fm_pairs")(vectors + [dense_vector])
    second_order = k2.layers.Dense(1, use_bias=False, kernel_initializer="ones", trainable=False,
                                   name="fm_sum")(pairs)
    x = k2.layers.Concatenate(name="deep_input")(vectors + [dense])
    x = k2.layers.Dense(32, activation="relu", name="deep_0")(x)
    x = k2.layers.BatchNormalization(name="deep_bn")(x)
    x = k2.layers.Dropout(0.2, name="deep_dropout")(x)
    x = k2.layers.Dense(16, activation="relu", name="deep_1")(x)
    deep = k2.layers.Dense(1, name="deep_logit")(x)
    logit = k2.layers.Add(name="logit")([first_order, second_order, deep])
    scaled = k2.layers.Multiply(name="temperature")([logit, k2.layers.Dense(1, name="scale")(dense)])
    model = k2.Model(inputs, k2.layers.Activation("sigmoid", name="probability")(scaled), name="deepfm_lookups")
    model.compile(optimizer=k2.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(train_raw, labels, batch_size=256, epochs=epochs, verbose=0)
    return model


def sequential_mlp(rows: int = 512, width: int = 6, seed: int = 0) -> tuple[k2.Sequential, np.ndarray]:
    """A Sequential MLP (BatchNormalization, Dropout) trained briefly; returns it and its inputs."""
    k2.utils.set_random_seed(seed)
    x = np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] + x[:, 2] > 0).astype(np.float32)
    model = k2.Sequential([
        k2.Input(shape=(width,), name="x"), k2.layers.Dense(32, activation="relu"),
        k2.layers.BatchNormalization(), k2.layers.Dropout(0.1), k2.layers.Dense(16, activation="relu"),
        k2.layers.Dense(1, activation="sigmoid"),
    ], name="mlp")
    model.compile(optimizer=k2.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    return model, x
