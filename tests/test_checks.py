"""The shared input checks: the finiteness test that every entry point runs."""

import pytest
import torch

from concilium._checks import all_finite, check_images, check_maps


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_finds_one_bad_value_anywhere(bad, dtype):
    x = torch.randn(3, 5, 7).to(dtype)
    assert all_finite(x)
    for index in [(0, 0, 0), (1, 2, 3), (2, 4, 6)]:
        y = x.clone()
        y[index] = bad
        assert not all_finite(y)


def test_all_finite_on_empty_tensor():
    assert all_finite(torch.zeros(0, 4, 4))


def test_checks_reject_non_finite_maps_and_images():
    maps = torch.zeros(2, 4, 4)
    maps[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_maps(maps)
    images = torch.zeros(2, 3, 4, 4)
    images[0, 2, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_images(images)
