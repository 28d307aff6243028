"""The choices the ``tfafm`` command line and the library share, each defined once.

A module of constants outside the package, importable without TensorFlow
(importing anything under ``tfafm`` imports TensorFlow to register Keras
layers): the command line's front (:mod:`tfafm_cli`) builds its options from
these, and the library's modules check their arguments against the same
tuples.
"""

MODEL_NAMES = ("autoint", "dcn", "dcnv2", "deepfm", "dlrm", "fibinet", "nfm", "widedeep", "xdeepfm")
# How tfafm.compress(method=) factors: AFM, weight SVD, or (default) whichever gives the higher validation AUC.
METHODS = ("auto", "afm", "svd")
METHOD = "auto"
OBJECTIVES = ("both", "params", "latency")
# What fine-tuning after compression fits: the original model's predictions (default) or the 0/1 labels.
FINETUNE_FROM = ("teacher", "labels")
CRITERIA = ("variance", "loss")  # what the factors keep (tfafm.compress(criterion=))
FIRST_ORDER = ("codes", "keep")  # a first-order table read from the embeddings, or kept (tfafm.compress(first_order=))
# Share of each field's calibration lookups whose ids keep their rows (tfafm.compress(id_coverage=)): by
# default chosen on labelled validation data among ID_COVERAGES.
ID_COVERAGE = "auto"
ID_COVERAGES = (1.0, 0.99, 0.95, 0.9)
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")  # the library also takes None for float32
EXPORT_FORMATS = ("litert", "saved_model", "onnx")

SYNTHETIC_DATA = "synthetic"
CACHE_DATA = "cache"
FORMAT_DATA = ("criteo", "avazu")  # click-log formats, read through a fitted preprocessor
TABLE_DATA = "parquet"  # any Parquet table with column roles (tfafm-trained runs) or keyed by input name
KEYED_DATA = ("parquet", "csv", "tfrecord")  # a model's own data, columns named like its inputs
DATA_KINDS = (SYNTHETIC_DATA, *FORMAT_DATA, "parquet", "csv", "tfrecord", CACHE_DATA)
WITH_OPTIONS = KEYED_DATA  # specs of these kinds take ?option=value&... after the path
