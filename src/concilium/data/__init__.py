"""Datasets: the procedural ground-truth benchmark and user folder datasets."""

from concilium.data.dataset import SPLITS, ImageDataset, stratified_splits
from concilium.data.synthetic import SynthConfig, generate

__all__ = ["SPLITS", "ImageDataset", "SynthConfig", "generate", "stratified_splits"]
