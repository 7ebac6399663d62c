"""Layer (b), hostile inputs: every registered metric on random shapes, dtypes and devices, on
constant, zero, NaN and infinite maps and on empty and full masks.

Each call either returns ``(N,)`` float64 scores, each finite or NaN with a ``MetricWarning``
that names the metric, or raises one of our clear errors (``ValueError``/``TypeError`` raised by
concilium's own code, never by torch or NumPy from deep inside). Hypothesis' deadline catches a
call that hangs. Parametrised over the registry, so a new metric is picked up unedited.
"""

from __future__ import annotations

import os
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metric_helpers import FAST, TinyNet, input_x_gradient

import concilium
from concilium.metrics import METRICS, MetricWarning, evaluate

SRC = Path(concilium.__file__).resolve().parent
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]
MAP_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
MAP_KINDS = ["random", "zero", "constant", "one_hot", "nan_row", "inf_row", "huge", "tiny"]
MASK_KINDS = ["random", "empty", "full", "empty_row", "single", "float", "wrong_size"]


def _maps(kind: str, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    maps = torch.randn(n, h, w, generator=g)
    if kind == "zero":
        maps.zero_()
    elif kind == "constant":
        maps.fill_(0.7)
    elif kind == "one_hot":
        maps.zero_()
        maps[:, h // 2, w // 2] = 1.0
    elif kind == "nan_row":
        maps[0] = float("nan")
    elif kind == "inf_row":
        maps[0, 0, 0] = float("inf")
    elif kind == "huge":
        maps *= 1e30
    elif kind == "tiny":
        maps *= 1e-30
    return maps


def _masks(kind: str, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    masks = torch.rand(n, h, w, generator=g) > 0.5
    if kind == "empty":
        masks.zero_()
    elif kind == "full":
        masks.fill_(True)
    elif kind == "empty_row":
        masks[0] = False
    elif kind == "single":
        masks.zero_()
        masks[:, 0, 0] = True
    elif kind == "float":
        return masks.float()
    elif kind == "wrong_size":
        return masks[:, :, :-1]
    return masks


def _is_ours(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` in concilium's own source."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(SRC)


@st.composite
def _case(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    channels = draw(st.sampled_from([1, 3]))
    return {
        "n": n, "h": h, "w": w, "channels": channels,
        "map_dtype": draw(st.sampled_from(MAP_DTYPES)),
        "map_kind": draw(st.sampled_from(MAP_KINDS)),
        "mask_kind": draw(st.sampled_from(MASK_KINDS)),
        "image_dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "noncontiguous": draw(st.booleans()),
        "requires_grad": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def check_one_call(name: str, case: dict, device: str) -> None:
    """Evaluate ``name`` on the hostile ``case``; fail unless the outcome is one of the three
    allowed ones (finite, NaN with a warning, or a clear error of ours)."""
    n, h, w, c = case["n"], case["h"], case["w"], case["channels"]
    g = torch.Generator().manual_seed(case["seed"])
    maps = _maps(case["map_kind"], n, h, w, g)
    if case["noncontiguous"]:
        maps = maps.transpose(1, 2).contiguous().transpose(1, 2)
        maps = torch.cat([maps, maps], dim=2)[:, :, ::2]
    if maps.dtype != case["map_dtype"]:
        maps = maps.to(case["map_dtype"])
    if case["requires_grad"] and maps.is_floating_point():
        maps.requires_grad_(True)
    masks = _masks(case["mask_kind"], n, h, w, g)
    images = torch.rand(n, c, h, w, generator=g).to(case["image_dtype"])
    labels = torch.randint(0, 3, (n,), generator=g)
    model = TinyNet(c).eval()
    model.load_state_dict({k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()})
    model = model.to(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scores = evaluate(
                name, maps.to(device), images=images.to(device), labels=labels.to(device),
                masks=masks.to(device), model=model, explainer=input_x_gradient,
                generator=torch.Generator(device).manual_seed(case["seed"]),
                **FAST.get(name, {}),
            )
        except (ValueError, TypeError) as err:
            assert _is_ours(err), (
                f"{name}: {type(err).__name__} from deep inside on {case}:\n"
                + "".join(traceback.format_exception(err))
            )
            assert str(err), f"{name}: an error without a message on {case}"
            return
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(
                f"{name}: {type(err).__name__} on {case}:\n" + "".join(traceback.format_exception(err))
            )
    assert scores.shape == (n,) and scores.dtype == torch.float64, (name, case, scores)
    assert not torch.isinf(scores).any(), f"{name}: infinite score on {case}: {scores}"
    if torch.isnan(scores).any():
        said = [str(x.message) for x in caught if issubclass(x.category, MetricWarning)]
        assert any(s.startswith(f"{name}:") for s in said), (
            f"{name}: NaN without a MetricWarning on {case}: {scores}; warnings: {said}"
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METRICS.names())
def test_hostile_inputs_give_scores_nan_with_warning_or_clear_error(name, device):
    @settings(
        max_examples=int(os.environ.get("CONCILIUM_PROPERTY_EXAMPLES", "12")),
        deadline=5000,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(case=_case())
    def run(case):
        check_one_call(name, case, device)

    run()


# The cases the search above found, kept as plain tests (each failed before its fix).


def test_float64_images_reach_a_float32_model():
    case = {"n": 1, "h": 1, "w": 1, "channels": 1, "map_dtype": torch.float32,
            "map_kind": "random", "mask_kind": "random", "image_dtype": torch.float64,
            "noncontiguous": False, "requires_grad": False, "seed": 0}
    check_one_call("aopc", case, "cpu")


def test_focus_on_one_pixel_images_is_a_clear_error():
    model = TinyNet(1).eval()
    with pytest.raises(ValueError, match="at least 2x2 pixels"):
        evaluate("focus", torch.rand(2, 1, 1), images=torch.rand(2, 1, 1, 1),
                 labels=torch.tensor([0, 1]), model=model, explainer=input_x_gradient)


def test_monotonicity_correlation_warns_when_the_output_never_changes():
    case = {"n": 1, "h": 1, "w": 10, "channels": 1, "map_dtype": torch.float32,
            "map_kind": "random", "mask_kind": "random", "image_dtype": torch.float32,
            "noncontiguous": False, "requires_grad": False, "seed": 0}
    check_one_call("monotonicity_correlation", case, "cpu")
