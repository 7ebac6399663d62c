"""Datasets: the procedural ground-truth benchmark and user folder datasets."""

from concilium.data.dataset import SPLITS, ImageDataset, stratified_splits
from concilium.data.folder import FolderDatasetError, load_folder, write_folder
from concilium.data.synthetic import SynthConfig, generate

__all__ = [
    "SPLITS",
    "FolderDatasetError",
    "ImageDataset",
    "SynthConfig",
    "generate",
    "load_folder",
    "stratified_splits",
    "write_folder",
]
