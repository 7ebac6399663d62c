"""The learned CNN ensembler: soft Dice, U-Net, training, card and errors."""

import pytest
import torch

from concilium.ensemble.cnn import (
    CNNEnsembler,
    CNNTrainConfig,
    UNet,
    dice_score,
    iou_score,
    soft_dice_loss,
    train_cnn_ensembler,
)


def test_soft_dice_hand_value():
    # p = [0.5, 0.5, 0, 0] (logits 0, 0, -inf, -inf), m = [1, 0, 0, 0]
    logits = torch.tensor([[[0.0, 0.0], [-1e4, -1e4]]])
    masks = torch.tensor([[[True, False], [False, False]]])
    # 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    assert soft_dice_loss(logits, masks).item() == pytest.approx(1 / 3)
    assert soft_dice_loss(logits, masks, smooth=1e-6).item() == pytest.approx(0.5, abs=1e-5)


def test_soft_dice_gradient_is_finite_on_empty_masks():
    logits = torch.zeros(2, 4, 4, requires_grad=True)
    loss = soft_dice_loss(logits, torch.zeros(2, 4, 4, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad > 0).all()  # pushes the prediction down on an empty mask
    with pytest.raises(ValueError, match="smooth"):
        soft_dice_loss(logits, torch.zeros(2, 4, 4), smooth=0)


def test_dice_and_iou_hand_values():
    pred = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    mask = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    torch.testing.assert_close(dice_score(pred, mask), torch.tensor([2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(iou_score(pred, mask), torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_unet_any_size_and_all_layers_registered():
    net = UNet(3, base=4, depth=2)
    assert net(torch.rand(2, 3, 13, 10)).shape == (2, 13, 10)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == sum(v.numel() for k, v in net.state_dict().items()
                           if "running" not in k and "num_batches" not in k)


def test_unet_reads_its_input_per_image_and_learns():
    torch.manual_seed(0)
    net = UNet(2, base=4, depth=2).eval()
    x = torch.rand(3, 2, 12, 12)
    with torch.no_grad():
        out = net(x)
        assert torch.isfinite(out).all()  # logits: any real value
        assert not torch.allclose(out[0], out[1])  # different inputs, different outputs
        torch.testing.assert_close(out[2:], net(x[2:]))  # eval: no batch statistics
    masks = torch.zeros(3, 12, 12, dtype=torch.bool)
    masks[:, 3:8, 4:9] = True
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = soft_dice_loss(net(x), masks).item()
    for _ in range(10):
        opt.zero_grad()
        soft_dice_loss(net(x), masks).backward()
        opt.step()
    assert soft_dice_loss(net(x), masks).item() < before - 1e-3


def _tiny(n=8, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, size - 5, (2,), generator=gen).tolist()
        masks[i, r : r + 5, c : c + 5] = True
    maps = {"a": masks.float() + 0.3 * torch.randn(n, size, size, generator=gen),
            "b": torch.randn(n, size, size, generator=gen)}
    return maps, masks


CFG = CNNTrainConfig(base_channels=4, depth=1, epochs=40, patience=40, batch_size=4, lr=1e-2,
                     augment=False)


@pytest.fixture(scope="module")
def trained():
    maps, masks = _tiny()
    return train_cnn_ensembler(maps, masks, val_maps=maps, val_masks=masks, config=CFG)


def test_cnn_overfits_a_tiny_set(trained):
    ens, history = trained
    assert history.train_loss.iloc[0] > 0.3
    assert history.train_loss.min() < 0.15
    assert ens.card.best_val_dice > 0.85
    assert ens.card.methods == ["a", "b"] and ens.card.k == 2


def test_cnn_save_load_round_trip_and_mismatch_errors(trained, tmp_path):
    ens, _ = trained
    maps, _ = _tiny(seed=1)
    logits, probs = ens.predict(maps)
    assert logits.shape == (8, 12, 12) and torch.allclose(probs, torch.sigmoid(logits))
    ens.save(tmp_path / "cnn")
    loaded = CNNEnsembler.load(tmp_path / "cnn")
    torch.testing.assert_close(loaded.predict(maps)[0], logits)
    # mapping order does not matter, names do
    torch.testing.assert_close(loaded.predict({"b": maps["b"], "a": maps["a"]})[0], logits)
    with pytest.raises(ValueError, match="trained on methods"):
        loaded.predict({"a": maps["a"], "c": maps["b"]})
    with pytest.raises(ValueError, match="K=2"):
        loaded.predict(torch.stack([maps["a"], maps["b"], maps["a"]]))
    with pytest.raises(ValueError, match="trained on \\(12, 12\\)"):
        loaded.predict(torch.rand(2, 3, 10, 10))
    with pytest.raises(FileNotFoundError, match="train the ensembler"):
        CNNEnsembler.load(tmp_path / "nothing")


def test_cnn_training_bad_inputs():
    maps, masks = _tiny(n=4)
    with pytest.raises(ValueError, match="masks are missing"):
        train_cnn_ensembler(maps, None, val_maps=maps, val_masks=masks, config=CFG)
    with pytest.raises(ValueError, match="train_masks must be"):
        train_cnn_ensembler(maps, masks[:3], val_maps=maps, val_masks=masks, config=CFG)
    with pytest.raises(ValueError, match="validation methods"):
        train_cnn_ensembler(maps, masks, val_maps={"b": maps["b"], "a": maps["a"]},
                            val_masks=masks, config=CFG)
    with pytest.raises(ValueError, match="one method name per map"):
        train_cnn_ensembler(torch.stack(list(maps.values())), masks,
                            val_maps=torch.stack(list(maps.values())), val_masks=masks, config=CFG)
    with pytest.raises(ValueError, match="with_image"):
        train_cnn_ensembler(maps, masks, val_maps=maps, val_masks=masks,
                            config=CFG.model_copy(update={"with_image": True}))


def test_cnn_with_image_input_is_deterministic():
    maps, masks = _tiny(n=4, size=8)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = CFG.model_copy(update={"with_image": True, "epochs": 2, "augment": True})
    a, _ = train_cnn_ensembler(maps, masks, val_maps=maps, val_masks=masks, train_images=images,
                               val_images=images, config=cfg)
    b, _ = train_cnn_ensembler(maps, masks, val_maps=maps, val_masks=masks, train_images=images,
                               val_images=images, config=cfg)
    torch.testing.assert_close(a.predict(maps, images=images)[0], b.predict(maps, images=images)[0])
    with pytest.raises(ValueError, match="pass images="):
        a.predict(maps)


def test_every_convolution_that_runs_is_a_registered_parameter():
    """Review section 3: ``parameters()`` and ``state_dict()`` both skip layers kept in a plain
    list, so comparing them could not fail. Record every convolution that runs in a forward
    pass (a global forward hook, removed afterwards) and require each weight to be registered,
    and the count to be the architecture's: two per block, ``depth + 1`` down and ``depth`` up
    blocks, plus the output convolution."""
    depth = 2
    net = UNet(3, base=4, depth=depth)
    ran: list[torch.nn.Conv2d] = []

    def hook(module, _inp, _out):
        if isinstance(module, torch.nn.Conv2d):
            ran.append(module)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        net(torch.rand(2, 3, 16, 16))
    finally:
        handle.remove()
    registered = {id(p) for p in net.parameters()}
    assert len(ran) == 2 * (2 * depth + 1) + 1
    assert all(id(conv.weight) in registered for conv in ran)
    assert len({id(c) for c in ran}) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def test_the_trainer_minimises_soft_dice():
    """Review section 3: nothing tied the trainer to soft Dice (a BCE trainer passed). The
    recorded validation loss of a one-epoch run equals 1 - soft Dice of the returned network's
    validation logits, computed here independently (per image, smoothing 1)."""
    maps, masks = _tiny()
    cfg = CNNTrainConfig(base_channels=4, depth=1, epochs=1, patience=1, batch_size=4, lr=1e-2,
                         augment=False)
    ens, history = train_cnn_ensembler(maps, masks, val_maps=maps, val_masks=masks, config=cfg)
    logits, _ = ens.predict(maps)
    p, m = torch.sigmoid(logits.double()).flatten(1), masks.double().flatten(1)
    dice = (2 * (p * m).sum(1) + 1) / (p.sum(1) + m.sum(1) + 1)
    assert history.val_loss.iloc[0] == pytest.approx(float(1 - dice.mean()), abs=1e-5)
