"""Data sources: synthetic Criteo-like data, real Criteo / Avazu / Parquet click logs, and their caches."""

from tfafm.data.cache import Cache
from tfafm.data.errors import DataFormatError
from tfafm.data.preprocessing import Preprocessor
from tfafm.data.sources import DataBundle, load_data
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.data.vocabulary import ValueCounts

__all__ = ["Cache", "DataBundle", "DataFormatError", "Preprocessor", "SyntheticCriteo", "ValueCounts", "load_data"]
