"""A built-in, Criteo-like synthetic CTR data set.

13 dense fields ``I1..I13`` and 26 categorical fields ``C1..C26`` whose
vocabulary sizes are log-spaced from 10 to ``max_vocabulary``. Ids follow a
Zipf law (id 1 is the most frequent; id 0 means missing). Labels come from a
hidden teacher: first-order weights, factorization-machine style pairwise
interactions between fields, dense-sparse interactions and a non-linear term,
with an intercept solved so that the positive rate is ``positive_rate``.

Everything is a deterministic function of ``seed``; rows are produced in
chunks, so any number can be streamed without holding them in memory.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from tfafm.schema import DenseFeature, Schema, SparseFeature

_SPLIT_STREAMS = {"train": 1, "validation": 2, "test": 3, "calibration": 4}


class SyntheticCriteo:
    """Deterministic generator of Criteo-like rows.

    Args:
        seed: seed of the hidden teacher and of every row stream.
        num_dense: number of dense fields.
        num_sparse: number of categorical fields.
        min_vocabulary: smallest per-field vocabulary size.
        max_vocabulary: largest per-field vocabulary size.
        zipf_exponent: exponent ``s`` of the id distribution ``p(r) ~ r^-s``.
        positive_rate: target fraction of positive labels.
        latent_dim: dimension of the teacher's latent factors.
        missing_rate: fraction of categorical and dense values that are missing.
    """

    def __init__(
        self,
        seed: int = 0,
        num_dense: int = 13,
        num_sparse: int = 26,
        min_vocabulary: int = 10,
        max_vocabulary: int = 1_000_000,
        zipf_exponent: float = 1.1,
        positive_rate: float = 0.25,
        latent_dim: int = 4,
        missing_rate: float = 0.03,
    ):
        if num_sparse < 2:
            raise ValueError(f"num_sparse must be >= 2, got {num_sparse}.")
        if not 10 <= min_vocabulary <= max_vocabulary:
            raise ValueError(
                "Need 10 <= min_vocabulary <= max_vocabulary, got "
                f"{min_vocabulary} and {max_vocabulary}."
            )
        if not 0.0 < positive_rate < 1.0:
            raise ValueError(f"positive_rate must be in (0, 1), got {positive_rate}.")
        self.seed = int(seed)
        self.num_dense = num_dense
        self.num_sparse = num_sparse
        self.zipf_exponent = zipf_exponent
        self.positive_rate = positive_rate
        self.missing_rate = missing_rate
        self.vocabulary_sizes = np.round(
            np.geomspace(min_vocabulary, max_vocabulary, num_sparse)
        ).astype(np.int64)

        rng = np.random.default_rng([self.seed, 0])
        self._cdfs = [self._zipf_cdf(int(v) - 1) for v in self.vocabulary_sizes]
        self._first_order = [
            rng.normal(0.0, 0.4, size=int(v)).astype(np.float32) for v in self.vocabulary_sizes
        ]
        self._latent = [
            rng.normal(0.0, 0.35, size=(int(v), latent_dim)).astype(np.float32)
            for v in self.vocabulary_sizes
        ]
        for table in self._first_order + self._latent:
            table[0] = 0.0  # missing values carry no signal
        self._dense_source = rng.integers(0, num_sparse, size=num_dense)
        self._dense_direction = rng.normal(0.0, 1.0, size=(num_dense, latent_dim)).astype(np.float32)
        self._dense_scale = rng.uniform(0.5, 4.0, size=num_dense).astype(np.float32)
        self._dense_weight = rng.normal(0.0, 0.25, size=num_dense).astype(np.float32)
        self._nonlinear = rng.normal(0.0, 1.0, size=(num_sparse, latent_dim)).astype(np.float32)
        self._intercept = 0.0
        self._intercept = self._solve_intercept()

    @property
    def dense_names(self) -> list[str]:
        return [f"I{i + 1}" for i in range(self.num_dense)]

    @property
    def sparse_names(self) -> list[str]:
        return [f"C{i + 1}" for i in range(self.num_sparse)]

    def schema(self, embedding_dim: int = 16) -> Schema:
        """The schema of the generated features (vocabulary includes id 0)."""
        return Schema(
            [DenseFeature(n) for n in self.dense_names]
            + [
                SparseFeature(n, int(v), embedding_dim)
                for n, v in zip(self.sparse_names, self.vocabulary_sizes)
            ]
        )

    def _zipf_cdf(self, size: int) -> np.ndarray:
        weights = np.arange(1, size + 1, dtype=np.float64) ** -self.zipf_exponent
        return np.cumsum(weights) / weights.sum()

    def _sample(self, rng: np.random.Generator, rows: int):
        ids = np.empty((rows, self.num_sparse), dtype=np.int32)
        for f, cdf in enumerate(self._cdfs):
            ids[:, f] = np.searchsorted(cdf, rng.random(rows), side="right") + 1
        ids = np.minimum(ids, self.vocabulary_sizes[None, :] - 1).astype(np.int32)
        ids[rng.random(ids.shape) < self.missing_rate] = 0

        latent = np.stack([self._latent[f][ids[:, f]] for f in range(self.num_sparse)], axis=1)
        first = sum(self._first_order[f][ids[:, f]] for f in range(self.num_sparse))
        total = latent.sum(axis=1)
        pairwise = 0.5 * ((total**2).sum(-1) - (latent**2).sum(axis=(1, 2)))

        source = latent[:, self._dense_source, :]  # (rows, num_dense, latent)
        signal = np.einsum("rdl,dl->rd", source, self._dense_direction)
        counts = np.floor(np.exp(self._dense_scale * 0.5 + signal + rng.normal(0, 0.7, signal.shape)))
        dense = np.log1p(np.maximum(counts, 0.0)).astype(np.float32)
        dense[rng.random(dense.shape) < self.missing_rate] = 0.0

        dense_term = (dense - dense.mean(0, keepdims=True)) @ self._dense_weight
        nonlinear = np.tanh(np.einsum("rfl,fl->r", latent, self._nonlinear)) * 1.5
        logits = first + 1.6 * pairwise + dense_term + nonlinear
        return ids, dense, logits.astype(np.float64)

    def _solve_intercept(self) -> float:
        rng = np.random.default_rng([self.seed, 99])
        _, _, logits = self._sample(rng, 20_000)
        low, high = -20.0, 20.0
        for _ in range(60):
            mid = 0.5 * (low + high)
            rate = np.mean(1.0 / (1.0 + np.exp(-(logits + mid))))
            low, high = (mid, high) if rate < self.positive_rate else (low, mid)
        return 0.5 * (low + high)

    def batches(
        self, rows: int, batch_size: int = 1024, split: str = "train"
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Yields ``(features, labels)`` numpy batches, ``rows`` rows in all.

        Features map each name to an array of shape (batch, 1): float32 for dense
        fields, int32 ids for sparse fields. Different splits are independent
        streams of the same distribution.
        """
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"Unknown split {split!r}; expected one of {sorted(_SPLIT_STREAMS)}.")
        if rows < 1 or batch_size < 1:
            raise ValueError(f"rows and batch_size must be >= 1, got {rows} and {batch_size}.")
        produced, chunk = 0, 0
        while produced < rows:
            n = min(batch_size, rows - produced)
            rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[split], chunk])
            ids, dense, logits = self._sample(rng, n)
            prob = 1.0 / (1.0 + np.exp(-(logits + self._intercept)))
            labels = (rng.random(n) < prob).astype(np.float32)
            features = {name: dense[:, [j]] for j, name in enumerate(self.dense_names)}
            features.update({name: ids[:, [f]] for f, name in enumerate(self.sparse_names)})
            yield features, labels[:, None]
            produced += n
            chunk += 1

    def write_criteo(self, path: str, rows: int, split: str = "train", chunk_rows: int = 100_000) -> None:
        """Writes ``rows`` rows as a Criteo Kaggle DAC text file (tab-separated, no header).

        The label, then each dense field as the integer count behind its
        ``log1p`` value (empty when 0 or missing), then each categorical id as eight
        hex digits (a fixed pseudo-random hash of field and id, like Criteo's;
        empty when missing). Needs the Criteo shape: 13 dense, 26 categorical fields.
        """
        import pyarrow as pa
        import pyarrow.csv as pacsv

        if (self.num_dense, self.num_sparse) != (13, 26):
            raise ValueError(f"The Criteo layout needs 13 dense and 26 categorical fields, not "
                             f"{self.num_dense} and {self.num_sparse}.")
        hashes = []
        for f, size in enumerate(self.vocabulary_sizes):
            ids = np.arange(int(size), dtype=np.uint64)
            mixed = ((ids + np.uint64(7919 * f + 1)) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
            text = np.char.mod("%08x", mixed.astype(np.int64))
            text[0] = ""  # id 0: missing
            hashes.append(pa.array(text))
        names = ["label"] + self.dense_names + self.sparse_names
        options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        with open(path, "wb") as f:
            for features, labels in self.batches(rows, chunk_rows, split):
                columns = [pa.array(labels[:, 0].astype(np.int8))]
                for name in self.dense_names:
                    value = features[name][:, 0].astype(np.float64)
                    columns.append(pa.array(np.rint(np.expm1(value)).astype(np.int64), mask=value == 0.0))
                columns += [hashes[f].take(pa.array(features[name][:, 0])) for f, name in enumerate(self.sparse_names)]
                pacsv.write_csv(pa.table(columns, names=names), f, options)

    def dataset(self, rows: int, batch_size: int = 1024, split: str = "train"):
        """A batched ``tf.data.Dataset`` of ``(features, labels)`` streamed from :meth:`batches`."""
        import tensorflow as tf

        signature = (
            {
                **{n: tf.TensorSpec((None, 1), tf.float32) for n in self.dense_names},
                **{n: tf.TensorSpec((None, 1), tf.int32) for n in self.sparse_names},
            },
            tf.TensorSpec((None, 1), tf.float32),
        )
        dataset = tf.data.Dataset.from_generator(
            lambda: self.batches(rows, batch_size, split), output_signature=signature
        )
        steps = -(-rows // batch_size)
        return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)
