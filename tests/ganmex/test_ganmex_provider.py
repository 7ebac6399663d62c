"""The baseline provider: shapes, caching (memory and store), refusal of unfit generators."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from concilium.explain import explain
from concilium.ganmex import GanmexBaseline, parse_baseline_spec
from concilium.store import ExplanationStore

from .conftest import CLASSES, SIZE, TinyClassifier, colour_images


class DictStore:
    """Stand-in with ``ExplanationStore.cache_array`` semantics: compute once per key."""

    def __init__(self) -> None:
        self.arrays: dict[str, Tensor] = {}

    def cache_array(self, name, key, compute):
        k = f"{name}/{sorted(key.items())}"
        if k not in self.arrays:
            self.arrays[k] = compute().clone()
        return self.arrays[k].clone()


def _counting(provider: GanmexBaseline) -> list[int]:
    calls: list[int] = []
    provider.generator.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def test_shape_and_cache_on_second_call(trained_gen) -> None:
    gen_dir, card = trained_gen
    provider = GanmexBaseline(gen_dir, classifier_card=card)
    calls = _counting(provider)
    images, _ = colour_images(5)
    targets = torch.tensor([1, 2, 0, 0, 1])
    first = provider(images, targets)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert calls == [5] and provider.generated == 5
    again = provider(images, targets)
    assert calls == [5] and provider.generated == 5
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    # a new target for one image is a new baseline; the others come from the cache
    mixed = provider(images[:2], torch.tensor([1, 0]))
    assert calls == [5, 1]
    torch.testing.assert_close(mixed[0], first[0], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(mixed[1], provider.generator(images[1:2], torch.tensor([0]))[0])


def test_baselines_equal_the_generator_output_in_batches(trained_gen) -> None:
    gen_dir, _ = trained_gen
    provider = GanmexBaseline(gen_dir, batch_size=2)
    calls = _counting(provider)
    images, _ = colour_images(5, seed=3)
    targets = torch.tensor([2, 2, 1, 0, 1])
    out = provider(images, targets)
    assert calls == [2, 2, 1]
    with torch.no_grad():
        torch.testing.assert_close(out, provider.generator(images, targets))
    broadcast = provider(images[:2], torch.tensor(2))
    torch.testing.assert_close(broadcast, out[:2])


def test_cached_in_the_store_across_providers(trained_gen) -> None:
    gen_dir, card = trained_gen
    store = DictStore()
    images, _ = colour_images(3)
    targets = torch.tensor([1, 2, 0])
    first = GanmexBaseline(gen_dir, store=store)(images, targets)
    assert len(store.arrays) == 3
    second_provider = GanmexBaseline(gen_dir, store=store)
    calls = _counting(second_provider)
    torch.testing.assert_close(second_provider(images, targets), first, rtol=0, atol=0)
    assert calls == [] and second_provider.generated == 0


def test_cached_in_a_real_explanation_store(trained_gen, tmp_path) -> None:
    gen_dir, _ = trained_gen
    images, _ = colour_images(2)
    targets = torch.tensor([1, 2])
    first = GanmexBaseline(gen_dir, store=ExplanationStore(tmp_path))(images, targets)
    provider = GanmexBaseline(gen_dir, store=ExplanationStore(tmp_path))
    calls = _counting(provider)
    torch.testing.assert_close(provider(images, targets), first, rtol=0, atol=0)
    assert calls == []


def test_generator_for_other_classes_is_refused(trained_gen) -> None:
    gen_dir, card = trained_gen
    with pytest.raises(ValueError, match="trained for the classes"):
        GanmexBaseline(gen_dir, class_names=["cat", "dog", "bird"])
    other = dict(card, class_names=["cat", "dog", "bird"])
    with pytest.raises(ValueError, match="another classifier"):
        GanmexBaseline(gen_dir, classifier_card=other)


def test_generator_for_another_image_size_is_refused(trained_gen) -> None:
    gen_dir, _ = trained_gen
    with pytest.raises(ValueError, match=r"trained on \(16, 16\) images, not \(32, 32\)"):
        GanmexBaseline(gen_dir, image_size=(32, 32))
    provider = GanmexBaseline(gen_dir, class_names=CLASSES, image_size=(SIZE, SIZE))
    with pytest.raises(ValueError, match="resize them"):
        provider(torch.rand(1, 3, 32, 32), torch.tensor([0]))


def test_bad_targets_and_paths(trained_gen, tmp_path) -> None:
    gen_dir, _ = trained_gen
    provider = GanmexBaseline(gen_dir)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        provider(torch.rand(1, 3, SIZE, SIZE), torch.tensor([3]))
    with pytest.raises(FileNotFoundError, match="not a GANMEX generator directory"):
        GanmexBaseline(tmp_path)
    with pytest.raises(TypeError, match="cache_array"):
        GanmexBaseline(gen_dir, store=object())


def test_parse_baseline_spec(trained_gen) -> None:
    gen_dir, card = trained_gen
    assert parse_baseline_spec("zero") == "zero"
    provider = parse_baseline_spec(f"ganmex:{gen_dir}", classifier_card=card)
    assert isinstance(provider, GanmexBaseline)
    with pytest.raises(ValueError, match="ganmex:GEN"):
        parse_baseline_spec("ganmex:")


def test_for_contrast_uses_the_bound_class_whatever_the_batching(trained_gen) -> None:
    gen_dir, _ = trained_gen
    provider = GanmexBaseline(gen_dir)
    images, labels = colour_images(4, seed=5)
    contrast = (labels + 1) % 3
    bound = provider.for_contrast(images, contrast)
    expected = provider(images, contrast)
    torch.testing.assert_close(bound(images, labels), expected)  # explained classes ignored
    torch.testing.assert_close(bound(images[[3, 1]], labels[[3, 1]]), expected[[3, 1]])
    with pytest.raises(ValueError, match="not bound"):
        bound(torch.rand(1, 3, SIZE, SIZE), torch.tensor([0]))
    assert bound.name.startswith(provider.name)


def test_integrated_gradients_completeness_with_the_ganmex_baseline(trained_gen) -> None:
    gen_dir, _ = trained_gen
    provider = GanmexBaseline(gen_dir)
    model = TinyClassifier().eval()
    images, labels = colour_images(3, seed=9)
    contrast = (labels + 2) % 3
    bound = provider.for_contrast(images, contrast)
    maps = explain(model, images, labels, method="integrated_gradients",
                               baseline=bound, n_steps=64, batch_size=64)
    with torch.no_grad():
        baselines = provider(images, contrast)
        rows = torch.arange(3)
        expected = model(images)[rows, labels] - model(baselines)[rows, labels]
    torch.testing.assert_close(maps.flatten(1).sum(1), expected, rtol=0.02, atol=2e-3)
