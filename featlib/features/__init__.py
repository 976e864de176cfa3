"""The feature catalog: importing this package declares every feature once (FEATURES)."""

from featlib.features import (  # noqa: F401  (importing declares the features)
    bollinger,
    orderbook,
    orderflow,
    patterns,
    perpetual,
    price,
    technical,
    temporal,
)
from featlib.features.base import FEATURES, SOURCES, Feature

__all__ = ["FEATURES", "SOURCES", "Feature"]
