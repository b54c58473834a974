"""Inference engines behind one small protocol. Nothing here knows of Dask."""

from pervade.engines.protocol import Choice, Engine, Generation

__all__ = ["Choice", "Engine", "Generation"]
