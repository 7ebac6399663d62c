"""Datasets: the procedural ground-truth benchmark and user folder datasets."""

from concilium.data.dataset import SPLITS, ImageDataset

__all__ = ["SPLITS", "ImageDataset"]
