"""The feature specs of the perturbation metrics (``metrics/features.py``): hand values,
coverage, determinism, the superpixel count bound and the errors for bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.segmentation import felzenszwalb, slic

from concilium.metrics.features import (
    FEATURE_KINDS,
    Features,
    feature_labels,
    n_patches,
    parse_features,
    patch_grid,
)


def _images(n=3, c=3, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # smooth: SLIC finds real segments


def test_parse_fills_defaults_and_gives_a_canonical_spec():
    assert parse_features("pixels") == Features("pixels")
    assert parse_features("patch:8") == parse_features("patch:size=8") == parse_features(" patch ")
    assert parse_features("patch:4").spec == "patch:size=4"
    slic_ = parse_features("slic:n_segments=50,sigma=1")
    assert dict(slic_.params) == {
        "compactness": 10.0, "max_num_iter": 10, "n_segments": 50, "sigma": 1.0,
    }  # fmt: skip
    assert parse_features(slic_.spec) == slic_ and parse_features(slic_) is slic_
    # the defaults are scikit-image's slic defaults (those Quantus's IROF uses)
    assert dict(parse_features("slic").params)["n_segments"] == 100


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("squares", "unknown features 'squares'.*'pixels', 'patch:<size>'.*'slic"),
        ("patch:0", "size .* must be positive"),
        ("patch:x", "size .* must be a int"),
        ("patch:side=3", "bad feature parameter 'side=3'.*takes size=8"),
        ("slic:n_segments=50,colour=1", "bad feature parameter 'colour=1'.*n_segments=100"),
        ("slic:50", "bad feature parameter '50'"),
        ("slic:compactness=0", "compactness .* must be positive"),
        ("slic:sigma=-1", "sigma .* must be >= 0"),
        ("pixels:2", "'pixels' takes no parameters"),
        ("felzenszwalb:min_size=0", "min_size .* must be positive"),
    ],
)
def test_bad_specs_raise_naming_the_valid_forms(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_features(spec)


def test_a_spec_that_is_not_a_string_raises_type_error():
    with pytest.raises(TypeError, match="spec string"):
        parse_features(8)


def test_pixels_and_patches_hand_values():
    x = torch.zeros(2, 1, 3, 4)
    labels, counts = feature_labels("pixels", x)
    assert labels[1].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert counts.tolist() == [12, 12]
    labels, counts = feature_labels("patch:2", x)  # 3 rows: pad 0 before, 1 after
    assert labels[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]]
    assert counts.tolist() == [4, 4] and labels.dtype == torch.long
    assert torch.equal(feature_labels("patch:1", x)[0], feature_labels("pixels", x)[0])


def test_patch_grid_is_quantus_grid():
    assert patch_grid(6, 6, 4)[0].tolist() == [0, 0, 0, 1, 1, 1]
    assert n_patches((6, 5), 4) == 4
    with pytest.raises(ValueError, match="patch_size 5 is larger"):
        feature_labels("patch:5", torch.zeros(1, 1, 4, 4))


def test_slic_labels_are_scikit_images_on_channels_last_like_quantus():
    x = _images()
    labels, counts = feature_labels("slic:n_segments=20", x)
    for img, lab, count in zip(x, labels, counts, strict=True):
        ref = slic(np.moveaxis(img.double().numpy(), 0, -1), n_segments=20, start_label=0)
        _, ref = np.unique(ref, return_inverse=True)
        assert np.array_equal(lab.numpy(), ref.reshape(lab.shape))
        assert int(count) == len(np.unique(ref)) > 1


@pytest.mark.parametrize(
    "spec", ["pixels", "patch:3", "patch:7", "slic:n_segments=15", "slic", "felzenszwalb:scale=50"]
)
@pytest.mark.parametrize("c", [1, 3])
def test_labels_cover_every_pixel_consecutively_and_are_deterministic(spec, c):
    x = _images(c=c, h=17, w=21)
    labels, counts = feature_labels(spec, x)
    assert labels.shape == (3, 17, 21) and labels.dtype == counts.dtype == torch.long
    for lab, count in zip(labels, counts, strict=True):
        assert lab.unique().tolist() == list(range(int(count)))  # every value used, no gap
    again, again_counts = feature_labels(spec, x.clone())
    assert torch.equal(labels, again) and torch.equal(counts, again_counts)
    # an image gets the same labels alone as in the batch
    assert torch.equal(feature_labels(spec, x[1:2])[0][0], labels[1])
    assert int(counts.max()) <= parse_features(spec).count_bound((17, 21))


def test_felzenszwalb_labels_are_scikit_images_and_within_the_bound():
    g = torch.Generator().manual_seed(5)
    for trial in range(20):
        c, h, w, min_size = (1, 3)[trial % 2], 6 + 2 * trial, 30 - trial, 1 + 3 * trial
        x = torch.rand(2, c, h, w, generator=g)
        spec = parse_features(f"felzenszwalb:min_size={min_size},scale=20")
        labels, counts = feature_labels(spec, x)
        for img, lab in zip(x, labels, strict=True):
            ref = felzenszwalb(np.moveaxis(img.double().numpy(), 0, -1), scale=20,
                               min_size=min_size)  # fmt: skip
            assert np.array_equal(lab.numpy(), np.unique(ref, return_inverse=True)[1].reshape(h, w))
        assert int(counts.max()) <= spec.count_bound((h, w))


def test_superpixel_count_bound_holds_and_can_exceed_n_segments():
    """SLIC may return more segments than ``n_segments`` (its grid and the connectivity
    step), so the bound is derived from the grid and the minimum segment size."""
    g = torch.Generator().manual_seed(3)
    exceeded = False
    for trial in range(40):
        c, h, w = (1, 3)[trial % 2], 8 + 3 * trial % 40, 30 - trial % 17
        n_segments = 5 + 7 * trial
        x = torch.rand(2, c, h, w, generator=g)
        spec = parse_features(f"slic:n_segments={n_segments}")
        _, counts = feature_labels(spec, x)
        assert int(counts.max()) <= spec.count_bound((h, w)) <= h * w
        exceeded |= int(counts.max()) > n_segments
    assert exceeded
    assert not parse_features("slic").fixed and parse_features("patch:8").fixed


@pytest.mark.parametrize("kind", FEATURE_KINDS.names())
def test_every_kind_parses_by_name_and_labels_within_its_bound(kind):
    spec = parse_features(kind)
    assert spec.kind == kind and parse_features(spec.spec) == spec
    x = _images(n=2, c=3, h=16, w=18)
    labels, counts = feature_labels(spec, x)
    assert labels.shape == (2, 16, 18) and ((labels >= 0) & (labels < counts[:, None, None])).all()
    assert int(counts.max()) <= spec.count_bound((16, 18))
    if spec.fixed:
        assert (counts == spec.count_bound((16, 18))).all()
    assert torch.equal(feature_labels(spec, x)[0], labels)


def test_labels_follow_the_images_device():
    labels, counts = feature_labels("slic:n_segments=4", _images(n=1))
    assert labels.device == counts.device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        feature_labels("pixels", torch.zeros(3, 4, 4))
