"""The dataset registry: checks over every :data:`DATASETS` entry (built from its ``example``),
the ``kind`` dispatch, errors that name what is wrong, and ``run.json`` files written before the
registry. A new kind is picked up by the parametrised checks without editing this file."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel

from concilium.data import (
    DATASETS,
    DatasetSpec,
    FolderDataset,
    ImageDataset,
    SyntheticDataset,
    dataset_spec,
    register_dataset,
)

KINDS = DATASETS.names()


class Holder(BaseModel):
    """A model with a ``DatasetSpec`` field, as ``RunInfo`` has."""

    dataset: DatasetSpec


def test_the_built_in_kinds_are_registered():
    assert {"folder": FolderDataset, "synthetic": SyntheticDataset}.items() <= dict(
        DATASETS.items()).items()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_through_json_and_loads(kind, tmp_path):
    cls = DATASETS.get(kind)
    spec = cls.example(tmp_path)
    assert type(spec) is cls and spec.kind == kind
    assert isinstance(spec, DatasetSpec)
    text = spec.model_dump_json()
    again = dataset_spec(json.loads(text))
    assert type(again) is cls and again == spec and again.model_dump_json() == text
    held = Holder(dataset=spec).model_dump_json()
    assert json.loads(held)["dataset"] == json.loads(text)  # the kind's own fields, all of them
    back = Holder.model_validate_json(held).dataset
    assert type(back) is cls and back == spec
    data = spec.load()
    assert isinstance(data, ImageDataset) and len(data) > 0
    assert again.load().fingerprint() == data.fingerprint()  # rebuilds the very same data


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_key_is_named(kind, tmp_path):
    fields = DATASETS.get(kind).example(tmp_path).model_dump(mode="json")
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'colour' for dataset kind"):
        dataset_spec({**fields, "colour": "red"})
    with pytest.raises(ValueError, match="colour"):
        Holder.model_validate({"dataset": {**fields, "colour": "red"}})


@pytest.mark.parametrize("kind", KINDS)
def test_a_spec_is_returned_as_it_is(kind, tmp_path):
    spec = DATASETS.get(kind).example(tmp_path)
    assert dataset_spec(spec) is spec
    assert Holder(dataset=spec).dataset is spec


def test_unknown_or_missing_kind_lists_the_kinds():
    valid = ", ".join(KINDS)
    with pytest.raises(ValueError, match=f"unknown dataset kind 'zip'; valid names: {valid}"):
        dataset_spec({"kind": "zip"})
    with pytest.raises(ValueError, match=f"needs a 'kind': one of {valid}"):
        dataset_spec({"path": "/data"})
    with pytest.raises(TypeError, match="mapping with a 'kind'"):
        dataset_spec("folder")
    with pytest.raises(ValueError, match="unknown dataset kind 'zip'"):
        Holder.model_validate({"dataset": {"kind": "zip"}})


def test_bad_values_are_named():
    with pytest.raises(ValueError, match=r"config\.nn"):
        dataset_spec({"kind": "synthetic", "config": {"nn": 3}})
    with pytest.raises(ValueError, match="path"):
        dataset_spec({"kind": "folder"})
    with pytest.raises(ValueError, match="'folder'"):
        FolderDataset(kind="synthetic", path="/data")


def test_run_json_files_from_before_the_registry_still_load():
    """Before DATASETS, one model held every kind's fields; a run.json wrote them all."""
    folder = {"kind": "folder", "path": "/data", "size": [64, 64], "seed": 3, "config": None}
    synth = {"kind": "synthetic", "path": None, "size": None, "seed": 0, "config": {"n": 12}}
    assert dataset_spec(folder) == FolderDataset(path="/data", size=(64, 64), seed=3)
    assert dataset_spec(synth) == SyntheticDataset(config={"n": 12})
    # a legacy key with a value that means something is still an error
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'seed'"):
        dataset_spec({**synth, "seed": 4})


def test_register_dataset_checks_the_kind():
    with pytest.raises(ValueError, match="already registered"):
        @register_dataset
        class Again(DatasetSpec):
            kind: Literal["folder"] = "folder"

    with pytest.raises(TypeError, match="Literal"):
        @register_dataset
        class NoDefault(DatasetSpec):
            kind: Literal["nodefault"]

    with pytest.raises(TypeError, match="DatasetSpec subclass"):
        register_dataset(BaseModel)
