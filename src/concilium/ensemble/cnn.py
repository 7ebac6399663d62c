"""The learned CNN ensembler (Hryniewska-Guzik, Longo, Biecek 2024).

A small U-Net reads the ``K`` explanation maps of an image (optionally also the image) and
predicts the object's mask; it is trained with the true soft Dice loss (optionally plus BCE)
against the masks of the train split, with early stopping on the validation Dice. Its output, the
logit map and its sigmoid, is the ensemble explanation E* (source ``cnn``).

Unlike the reference code: the loss really is soft Dice; every layer is a registered submodule,
so all of it is trained and saved; the explanations are computed once and read from the cache
(the store) for every epoch; maps and masks are never resized, so they stay aligned.

A trained ensembler is saved as ``model.safetensors`` + ``card.json``; the card records the method
order, ``K``, the normalisation and the input size, and using the ensembler with other methods,
another ``K`` or another size raises a ``ValueError`` that says what it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import Tensor, nn

from concilium._checks import check_images, check_masks
from concilium._util import atomic_write, atomic_write_text, read_record
from concilium.ensemble.normalise import NormalisationName, normalise
from concilium.ensemble.reduce import stack_maps
from concilium.models.weights import load_state_dict_file, load_weights_into

MapsInput = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


def soft_dice_loss(logits: Tensor, masks: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Mean over images of ``1 - (2 sum(p m) + s) / (sum(p) + sum(m) + s)``, ``p = sigmoid(logits)``.

    The smoothing ``s`` keeps the loss and its gradient finite on empty masks (where the loss then
    pushes the prediction towards zero).

    Args:
        logits: ``(N, H, W)`` raw scores.
        masks: ``(N, H, W)`` targets in ``{0, 1}`` (bool or float).
        smooth: additive smoothing ``s > 0``.
    """
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0 to keep empty masks finite; got {smooth}")
    p = torch.sigmoid(logits).flatten(1)
    m = masks.to(p.dtype).flatten(1)
    dice = (2 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)
    return (1 - dice).mean()


def dice_score(pred: Tensor, masks: Tensor) -> Tensor:
    """Hard Dice per image ``(N,)`` of boolean predictions and masks; both empty gives 1."""
    pred, masks = pred.bool().flatten(1), masks.bool().flatten(1)
    inter = (pred & masks).sum(1).double()
    total = (pred.sum(1) + masks.sum(1)).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), 1.0)


def iou_score(pred: Tensor, masks: Tensor) -> Tensor:
    """Intersection over union per image ``(N,)``; both empty gives 1."""
    pred, masks = pred.bool().flatten(1), masks.bool().flatten(1)
    inter = (pred & masks).sum(1).double()
    union = (pred | masks).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net: ``depth`` down/up levels, ``base * 2**level`` channels, one output logit.

    Any input size works (skip connections are matched by interpolation).

    Args:
        in_channels: ``K`` maps (+ image channels).
        base: channels of the first level.
        depth: number of down-sampling steps.
    """

    def __init__(self, in_channels: int, *, base: int = 16, depth: int = 2) -> None:
        super().__init__()
        if in_channels < 1 or base < 1 or depth < 0:
            raise ValueError(f"need in_channels >= 1, base >= 1, depth >= 0; got {in_channels}, "
                             f"{base}, {depth}")
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` -> logits ``(N, H, W)``."""
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x).squeeze(1)


class CNNTrainConfig(BaseModel):
    """Training settings of the CNN ensembler (all documented defaults are CPU-friendly at
    32-64 px)."""

    model_config = ConfigDict(extra="forbid")

    normalisation: NormalisationName = Field(
        "max_abs", description="per-image normalisation applied to every map first")
    absolute: bool = Field(False, description="use |map| (drop the sign) before combining")
    with_image: bool = Field(False, description="also feed the image to the U-Net")
    loss: Literal["dice", "dice_bce"] = Field("dice", description="training loss")
    bce_weight: float = Field(1.0, ge=0, description="weight of the BCE term of dice_bce")
    base_channels: int = Field(16, ge=1, description="channels of the U-Net's first level")
    depth: int = Field(2, ge=0, description="down-sampling levels of the U-Net")
    epochs: int = Field(60, ge=1, description="most training epochs")
    patience: int = Field(10, ge=1, description="early-stopping patience (epochs without a "
                                                 "better validation Dice)")
    batch_size: int = Field(16, ge=1, description="training batch size")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    augment: bool = Field(True, description="random flips of the training batches")
    seed: int = Field(0, description="seeds the initialisation, batches and augmentation")


class EnsemblerCard(BaseModel):
    """What a saved CNN ensembler was trained on (``card.json``)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str]
    k: int
    normalisation: str
    absolute: bool
    with_image: bool
    image_channels: int
    input_size: tuple[int, int]
    base_channels: int
    depth: int
    loss: str
    epochs_trained: int
    best_epoch: int
    best_val_dice: float
    seed: int
    concilium_version: str = ""


class CNNEnsembler:
    """A trained U-Net ensembler and its card.

    Use :func:`train_cnn_ensembler` to make one, :meth:`load` to read a saved one.
    """

    def __init__(self, net: UNet, card: EnsemblerCard) -> None:
        self.net = net
        self.card = card

    def inputs(self, maps: MapsInput, images: Tensor | None = None) -> Tensor:
        """The network input ``(N, K [+ C], H, W)`` for ``maps`` (and ``images``).

        Raises:
            ValueError: if the methods (names of a mapping), ``K`` or the size differ from the
                card's, or the image is needed but missing.
        """
        card = self.card
        if isinstance(maps, Mapping):
            names = list(maps)
            if set(names) != set(card.methods):
                raise ValueError(f"this ensembler was trained on methods {card.methods} (K={card.k}); "
                                 f"got {names}. Give exactly those methods or train a new one")
            maps = [maps[m] for m in card.methods]
        stack = stack_maps(maps)
        if stack.shape[0] != card.k:
            raise ValueError(f"this ensembler was trained on K={card.k} maps ({card.methods}); got "
                             f"K={stack.shape[0]}. Give the same methods in that order or retrain")
        if tuple(stack.shape[-2:]) != tuple(card.input_size):
            raise ValueError(f"this ensembler was trained on {tuple(card.input_size)} maps; got "
                             f"{tuple(stack.shape[-2:])}. Use maps of the training size")
        return _build_inputs(stack, images, normalisation=card.normalisation, absolute=card.absolute,
                             with_image=card.with_image, image_channels=card.image_channels)

    @torch.no_grad()
    def predict(
        self, maps: MapsInput, *, images: Tensor | None = None, batch_size: int = 64
    ) -> tuple[Tensor, Tensor]:
        """E* for ``maps``: ``(logits, probabilities)``, each ``(N, H, W)`` on the CPU.

        Args:
            maps: the ``K`` methods' maps of ``N`` images (a mapping is matched by method name).
            images: ``(N, C, H, W)``, needed if the ensembler was trained with the image.
            batch_size: images per forward pass.
        """
        x = self.inputs(maps, images)
        device = next(self.net.parameters()).device
        self.net.eval()
        logits = torch.cat([self.net(x[s : s + batch_size].to(device)).cpu()
                            for s in range(0, x.shape[0], batch_size)])
        return logits, torch.sigmoid(logits)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``card.json`` into ``directory`` (created)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        atomic_write(out / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(out / "card.json", self.card.model_dump_json(indent=2))
        return out

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> CNNEnsembler:
        """Read an ensembler saved by :meth:`save`.

        Raises:
            FileNotFoundError: if ``model.safetensors`` or ``card.json`` is missing.
            ValueError: a damaged card or weights file (named in the message).
        """
        d = Path(directory)
        for name in ("model.safetensors", "card.json"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name} not found; train the ensembler first "
                                        "(`concilium ensemble RUN --kind cnn`)")
        card = read_record(d / "card.json", EnsemblerCard, what="CNN ensembler card",
                           if_missing="")
        net = UNet(card.k + (card.image_channels if card.with_image else 0),
                   base=card.base_channels, depth=card.depth)
        weights = d / "model.safetensors"
        load_weights_into(net, load_state_dict_file(weights), source=str(weights))
        return cls(net.to(device).eval(), card)


def _build_inputs(
    stack: Tensor, images: Tensor | None, *, normalisation: str, absolute: bool, with_image: bool,
    image_channels: int,
) -> Tensor:
    if absolute:
        stack = stack.abs()
    x = normalise(stack.float(), normalisation).transpose(0, 1)
    if not with_image:
        return x.contiguous()
    if images is None:
        raise ValueError("this ensembler reads the image too (with_image=True); pass images=")
    images = check_images(images)
    if images.shape[0] != x.shape[0] or images.shape[-2:] != x.shape[-2:] or images.shape[1] != image_channels:
        raise ValueError(f"images must be (N, {image_channels}, H, W) = {(x.shape[0], image_channels, *x.shape[-2:])} "
                         f"like the maps; got {tuple(images.shape)}")
    return torch.cat([x, images.float().cpu()], 1)


def _method_names(maps: MapsInput, methods: Sequence[str] | None, k: int) -> list[str]:
    if isinstance(maps, Mapping):
        names = list(maps)
        if methods is not None and list(methods) != names:
            raise ValueError(f"methods {list(methods)} do not match the maps' keys {names}")
        return names
    if methods is None or len(methods) != k:
        raise ValueError(f"give one method name per map: K={k} maps but methods={methods}")
    return list(methods)


def train_cnn_ensembler(
    train_maps: MapsInput,
    train_masks: Tensor,
    *,
    val_maps: MapsInput,
    val_masks: Tensor,
    methods: Sequence[str] | None = None,
    train_images: Tensor | None = None,
    val_images: Tensor | None = None,
    config: CNNTrainConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[CNNEnsembler, pd.DataFrame]:
    """Train a U-Net ensembler from cached maps against masks, early-stopped on validation Dice.

    Args:
        train_maps: the ``K`` methods' maps of the training images (a mapping method -> ``(N, H,
            W)``, or ``(K, N, H, W)`` with ``methods``).
        train_masks: ``(N, H, W)`` bool.
        val_maps: the same methods' maps of the validation images.
        val_masks: ``(N_val, H, W)`` bool.
        methods: method names when the maps are not a mapping.
        train_images, val_images: the images, needed with ``config.with_image``.
        config: training settings (default :class:`CNNTrainConfig()`).
        device: where to train.

    Returns:
        The ensembler holding the best validation epoch's weights, and the history (columns
        ``epoch, train_loss, val_loss, val_dice``).

    Raises:
        ValueError: missing masks, maps and masks of different images, methods that differ
            between train and validation.
    """
    cfg = config or CNNTrainConfig()
    for name, m in (("train_masks", train_masks), ("val_masks", val_masks)):
        if m is None:
            raise ValueError(f"{name} are missing: the CNN ensembler learns from ground-truth masks")
    tr = stack_maps([train_maps[k] for k in train_maps] if isinstance(train_maps, Mapping) else train_maps)
    va = stack_maps([val_maps[k] for k in val_maps] if isinstance(val_maps, Mapping) else val_maps)
    names = _method_names(train_maps, methods, tr.shape[0])
    if isinstance(val_maps, Mapping) and list(val_maps) != names:
        raise ValueError(f"validation methods {list(val_maps)} differ from training methods {names}")
    if va.shape[0] != tr.shape[0] or va.shape[-2:] != tr.shape[-2:]:
        raise ValueError(f"validation maps {tuple(va.shape)} must have the training maps' K and size "
                         f"{(tr.shape[0], *tr.shape[-2:])}")
    train_masks = check_masks(train_masks, like=tr[0], name="train_masks")
    val_masks = check_masks(val_masks, like=va[0], name="val_masks")
    channels = 0
    if cfg.with_image:
        if train_images is None or val_images is None:
            raise ValueError("config.with_image=True needs train_images and val_images")
        channels = train_images.shape[1]
    build = dict(normalisation=cfg.normalisation, absolute=cfg.absolute, with_image=cfg.with_image,
                 image_channels=channels)
    x_tr = _build_inputs(tr, train_images, **build)
    x_va = _build_inputs(va, val_images, **build)
    y_tr, y_va = train_masks.float(), val_masks.float()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = UNet(x_tr.shape[1], base=cfg.base_channels, depth=cfg.depth).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        loss = soft_dice_loss(logits, y)
        if cfg.loss == "dice_bce":
            loss = loss + cfg.bce_weight * F.binary_cross_entropy_with_logits(logits, y)
        return loss

    history, best, best_state, best_epoch, stale = [], -1.0, None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.randperm(x_tr.shape[0], generator=gen)
        total, seen = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # BatchNorm needs two samples; a lone last sample is skipped this epoch
            xb, yb = x_tr[idx], y_tr[idx]
            if cfg.augment:
                xb, yb = _flip(xb, yb, gen)
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(x_va[s : s + 64].to(device)).cpu() for s in range(0, len(x_va), 64)])
            val_loss = float(loss_fn(logits, y_va))
            val_dice = float(dice_score(logits > 0, val_masks).mean())
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                        "val_dice": val_dice})
        if val_dice > best:
            best, best_epoch, stale = val_dice, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    net.load_state_dict(best_state)
    card = EnsemblerCard(
        methods=names, k=len(names), normalisation=cfg.normalisation, absolute=cfg.absolute,
        with_image=cfg.with_image, image_channels=channels, input_size=tuple(tr.shape[-2:]),
        base_channels=cfg.base_channels, depth=cfg.depth, loss=cfg.loss,
        epochs_trained=len(history), best_epoch=best_epoch, best_val_dice=best, seed=cfg.seed,
        concilium_version=_version(),
    )
    return CNNEnsembler(net.eval(), card), pd.DataFrame(history)


def _flip(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random horizontal and vertical flips of each sample, the same for input and mask."""
    n = x.shape[0]
    h = torch.rand(n, generator=gen) < 0.5
    v = torch.rand(n, generator=gen) < 0.5
    x, y = x.clone(), y.clone()
    x[h], y[h] = x[h].flip(-1), y[h].flip(-1)
    x[v], y[v] = x[v].flip(-2), y[v].flip(-2)
    return x, y


def _version() -> str:
    try:
        return version("concilium")
    except PackageNotFoundError:
        return ""
