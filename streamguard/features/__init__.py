"""Velocity features: their declarations (`features/*.toml`) and, next, the window engine."""

from streamguard.features.spec import FeatureSpec, load_features

__all__ = ["FeatureSpec", "load_features"]
