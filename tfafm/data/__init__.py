"""Data sources: synthetic Criteo-like data and real Criteo / Avazu click logs."""

from tfafm.data.errors import DataFormatError
from tfafm.data.preprocessing import Preprocessor
from tfafm.data.sources import DataBundle, load_data
from tfafm.data.synthetic import SyntheticCriteo

__all__ = ["DataBundle", "DataFormatError", "Preprocessor", "SyntheticCriteo", "load_data"]
