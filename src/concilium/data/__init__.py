"""Datasets: the procedural ground-truth benchmark and user folder datasets."""

from concilium.data.dataset import SPLITS, ImageDataset, stratified_splits
from concilium.data.folder import FolderDatasetError, load_folder, write_folder
from concilium.data.specs import (
    DATASETS,
    DatasetSpec,
    FolderDataset,
    SyntheticDataset,
    dataset_spec,
    register_dataset,
)
from concilium.data.synthetic import (
    SynthConfig,
    changed_masks,
    counterfactuals,
    generate,
    render_counterfactuals,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetSpec",
    "FolderDataset",
    "FolderDatasetError",
    "ImageDataset",
    "SynthConfig",
    "SyntheticDataset",
    "changed_masks",
    "counterfactuals",
    "dataset_spec",
    "generate",
    "load_folder",
    "register_dataset",
    "render_counterfactuals",
    "stratified_splits",
    "write_folder",
]
