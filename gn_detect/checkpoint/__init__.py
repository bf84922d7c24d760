"""Pretrained backbone files: reading every source as data (sources, safe_pickle) and the input
conventions that travel with them (conventions)."""
from .conventions import TORCHVISION, fill_unrecorded, source_conventions
from .safe_pickle import UnsafePickleError, load_pickle
from .sources import SOURCES, SourceWeights, WeightsError, read_weights

__all__ = ["SOURCES", "TORCHVISION", "SourceWeights", "UnsafePickleError", "WeightsError", "fill_unrecorded",
           "load_pickle", "read_weights", "source_conventions"]
