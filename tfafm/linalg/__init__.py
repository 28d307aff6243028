"""Pure numpy math shared by the layers and the compression code: moments and factorisations."""

from tfafm.linalg.factorize import Factors, factor, weight_spectrum
from tfafm.linalg.statistics import LayerStatistics, Statistics

__all__ = ["Factors", "LayerStatistics", "Statistics", "factor", "weight_spectrum"]
