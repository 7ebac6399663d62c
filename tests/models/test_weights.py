"""Weight files: safetensors and .pt state dicts load, nothing is ever unpickled, and a state
dict that does not fit is refused with a message naming the keys."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from concilium.models import create_model, load_state_dict_file, load_weights_into


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=3, num_attributes=2).eval()


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = _model(1)
    load_weights_into(other, load_state_dict_file(path), source=str(path))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_load_weights_into_names_missing_unexpected_and_mismatched_keys() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = dict(net.state_dict())
    state.pop("1.bias")
    state["extra"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"weights in src do not fit Sequential") as err:
        load_weights_into(net, state, source="src")
    message = str(err.value)
    assert "missing ['1.bias']" in message
    assert "unexpected ['extra']" in message
    assert "0.weight: (4, 2) vs (3, 2)" in message


class _RunsCode:
    """Unpickling this object would create a file (a stand-in for any shell command)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    flag = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    with evil.open("wb") as f:
        pickle.dump({"weight": _RunsCode(flag)}, f, protocol=protocol)
    # the file really is dangerous: plain pickle would run it (checked on a copy of the payload)
    with pytest.raises(ValueError, match=r"refusing to unpickle .*convert it to safetensors"):
        load_state_dict_file(evil)
    assert not flag.exists()
    with pytest.raises(ValueError, match="refusing to unpickle"):
        create_model("small-cnn", num_classes=3, weights=evil)
    assert not flag.exists()
    pickle.loads(pickle.dumps(_RunsCode(flag), protocol=protocol))
    assert flag.exists()  # the payload was live: the refusal above is what stopped it


def test_torch_save_state_dict_is_accepted(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    state = load_state_dict_file(path)
    assert set(state) == set(model.state_dict())
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(load_state_dict_file(tmp_path / "ckpt.pt")) == set(state)


def test_bad_weight_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weights file"):
        load_state_dict_file(tmp_path / "w.npz")
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_state_dict_file(tmp_path / "w.safetensors")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict_file(tmp_path / "list.pt")
