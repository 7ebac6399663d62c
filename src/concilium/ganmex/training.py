"""Training a GANMEX generator against a frozen classifier, with checkpoints, validation and
resume.

The functional pieces (:func:`sample_targets`, :func:`train_step`, :func:`validate`) are usable
on their own; :func:`train_ganmex` strings them together, writes ``GEN/`` (see
:mod:`concilium.ganmex.checkpoint`) and resumes from the last checkpoint when ``GEN/``
already holds one.
"""

from __future__ import annotations

import copy
import csv
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from concilium import __version__ as _version
from concilium._checks import check_images, check_labels
from concilium._util import atomic_write
from concilium.ganmex.checkpoint import (
    CARD_FILE,
    RESUMABLE_OPTIONS,
    VALIDATION_FILE,
    GanmexCard,
    GanmexOptions,
    build_networks,
    load_card,
    load_state,
    save_checkpoint,
)
from concilium.ganmex.losses import critic_loss, generator_loss
from concilium.ganmex.networks import Critic, Generator, check_image_size

__all__ = [
    "StepLosses",
    "ValidationRecord",
    "finetune_generator",
    "frozen",
    "read_history",
    "sample_targets",
    "train_ganmex",
    "train_step",
    "validate",
    "validation_targets",
]


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` for the block, then restore both.

    Gradients still flow through the model to its inputs, which is what the generator needs;
    its parameters and its train/eval flag are left exactly as they were, even on an exception.
    """
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def sample_targets(
    labels: Tensor,
    num_classes: int,
    *,
    generator: torch.Generator,
    same_class: float | str = 0.0,
) -> Tensor:
    """A random target class per sample.

    Args:
        labels: ``(N,)`` the images' classes.
        num_classes: ``K``.
        generator: the source of every draw.
        same_class: share of targets equal to the label (teaching ``G(x, c) = x``); the others
            are uniform over the ``K - 1`` other classes. ``"uniform"``: uniform over all ``K``
            classes (the reference's). The default 0 gives only other classes (validation).
    """
    if num_classes < 2:
        raise ValueError(f"counterfactual targets need num_classes >= 2; got {num_classes}")
    if same_class == "uniform":
        drawn = torch.randint(0, num_classes, labels.shape, generator=generator,
                              device=generator.device)
        return drawn.to(labels.device)
    offsets = torch.randint(1, num_classes, labels.shape, generator=generator,
                            device=generator.device)
    if float(same_class) > 0:
        keep = torch.rand(labels.shape, generator=generator, device=generator.device)
        offsets = torch.where(keep < float(same_class), 0, offsets)
    return (labels + offsets.to(labels.device)) % num_classes


def validation_targets(labels: Tensor, num_classes: int, *, seed: int) -> Tensor:
    """The fixed target classes of the validation images: one other class per image, drawn
    from ``seed`` (the training seed), the same at every checkpoint and for any later check."""
    return sample_targets(labels, num_classes, generator=torch.Generator().manual_seed(seed + 2))


@dataclass
class StepLosses:
    """Scalar losses of one training step (critic values from its last critic update)."""

    loss_g: float
    loss_d: float
    adversarial: float
    classification: float
    similarity: float
    reconstruction: float
    wasserstein: float
    penalty: float


def train_step(
    generator_net: Generator,
    critic: Critic,
    classifier: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    batches: list[tuple[Tensor, Tensor, Tensor]],
    *,
    options: GanmexOptions,
    rng: torch.Generator,
) -> StepLosses:
    """One GANMEX step: ``len(batches)`` critic updates, then one generator update on the last.

    Args:
        generator_net: the generator being trained.
        critic: the WGAN critic being trained.
        classifier: the frozen classifier (wrap the call in :func:`frozen`).
        opt_g: the generator's optimiser.
        opt_d: the critic's optimiser.
        batches: ``n_critic`` triples ``(images, labels, targets)`` on the training device.
        options: loss weights.
        rng: source of the gradient penalty's interpolation weights.
    """
    critic.requires_grad_(True)
    for images, _, targets in batches:
        with torch.no_grad():
            fakes = generator_net(images, targets)
        d = critic_loss(critic, images, fakes, gp_weight=options.gp_weight, generator=rng)
        opt_d.zero_grad(set_to_none=True)
        d.total.backward()
        opt_d.step()
    critic.requires_grad_(False)
    images, labels, targets = batches[-1]
    g = generator_loss(generator_net, critic, classifier, images, labels, targets,
                       l_cls=options.l_cls, l_sim=options.l_sim, l_rec=options.l_rec,
                       target=options.target_loss, kappa=options.kappa,
                       similarity=options.similarity)
    opt_g.zero_grad(set_to_none=True)
    g.total.backward()
    opt_g.step()
    critic.requires_grad_(True)
    return StepLosses(
        loss_g=g.total.item(), loss_d=d.total.item(), adversarial=g.adversarial.item(),
        classification=g.classification.item(), similarity=g.similarity.item(),
        reconstruction=g.reconstruction.item(), wasserstein=d.wasserstein.item(),
        penalty=d.penalty.item(),
    )


@dataclass
class ValidationRecord:
    """One validation line, written at each checkpoint.

    Attributes:
        step: generator updates done.
        seconds: training wall time so far.
        success_rate: share of validation images with ``argmax C(G(x, t)) == t``.
        l1: mean per-pixel ``|x - G(x, t)|``.
        critic_gap: ``mean D(real) - mean D(G(x, t))`` on validation images, the critic's
            Wasserstein estimate (lower = harder to tell apart).
        feature_distance: diagonal Frechet distance between the classifier features of
            ``G(x, t)`` and of real images of class ``t``, averaged over the target classes
            (lower = more like real class-``t`` images; the value for ``x`` itself, before
            translation, is in ``feature_distance_input``).
        feature_distance_input: the same distance with ``x`` in place of ``G(x, t)``.
        loss_g: mean generator loss since the previous checkpoint.
        loss_d: mean critic loss since the previous checkpoint.
        counterfactual_l1: mean per-pixel ``|G(x, t) - x*|`` against the exact minimal
            counterfactuals ``x*`` (``None`` when none were given: only the benchmark has them).
        in_region: share of ``|x - G(x, t)|`` (summed over pixels) inside the pixels where ``x``
            and ``x*`` differ (``None`` without ``x*``); 1 for ``x*`` itself, the changed
            region's share of the pixels for a uniform edit.
    """

    step: int
    seconds: float
    success_rate: float
    l1: float
    critic_gap: float
    feature_distance: float
    feature_distance_input: float
    loss_g: float
    loss_d: float
    counterfactual_l1: float | None = None
    in_region: float | None = None

    def line(self) -> str:
        """The record as one human-readable line."""
        exact = ("" if self.counterfactual_l1 is None or self.in_region is None else
                 f"  |G-x*| {self.counterfactual_l1:.4f}  in region {self.in_region:5.1%}")
        return (f"step {self.step:>6}  {self.seconds:7.1f}s  success {self.success_rate:6.1%}  "
                f"L1 {self.l1:.4f}{exact}  critic gap {self.critic_gap:+.3f}  "
                f"feature dist {self.feature_distance:.3f} (input {self.feature_distance_input:.3f})"
                f"  loss G {self.loss_g:.3f}  loss D {self.loss_d:+.3f}")


def _features(classifier: nn.Module, images: Tensor) -> Tensor:
    feats = getattr(classifier, "features", None)
    out = feats(images) if callable(feats) else classifier(images)
    return out.flatten(1)


def _diag_frechet(a: Tensor, b: Tensor) -> Tensor:
    """``|mu_a - mu_b|^2 + |sd_a - sd_b|^2`` per feature, averaged over features."""
    sd_a = a.std(0, unbiased=False)
    sd_b = b.std(0, unbiased=False)
    return ((a.mean(0) - b.mean(0)) ** 2 + (sd_a - sd_b) ** 2).mean()


@torch.no_grad()
def validate(
    generator_net: Generator,
    critic: Critic,
    classifier: nn.Module,
    images: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    counterfactuals: Tensor | None = None,
    batch_size: int = 128,
) -> dict[str, float | None]:
    """Success rate, L1, critic gap and feature distance of ``G`` on a fixed validation set.

    Args:
        counterfactuals: the exact minimal counterfactuals ``x*`` of ``images`` for ``targets``
            (``concilium.data.counterfactuals``), when known: adds ``|G - x*|`` and the share of
            ``|x - G|`` inside the pixels where ``x`` and ``x*`` differ.

    Returns:
        A dict with the :class:`ValidationRecord` fields ``success_rate``, ``l1``,
        ``critic_gap``, ``feature_distance``, ``feature_distance_input``,
        ``counterfactual_l1`` and ``in_region``.
    """
    if counterfactuals is not None and counterfactuals.shape != images.shape:
        raise ValueError(f"counterfactuals must be {tuple(images.shape)} like the images; got "
                         f"{tuple(counterfactuals.shape)}")
    was_training = generator_net.training
    generator_net.eval()
    hits, l1, d_real, d_fake, ref_l1, inside, total = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    f_real, f_fake = [], []
    device = next(generator_net.parameters()).device
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        t = targets[start:start + batch_size].to(device)
        fake = generator_net(x, t)
        hits += float((classifier(fake).argmax(1) == t).sum())
        edit = (x - fake).abs()
        l1 += float(edit.mean(dim=(1, 2, 3)).sum())
        if counterfactuals is not None:
            ref = counterfactuals[start:start + batch_size].to(device)
            ref_l1 += float((fake - ref).abs().mean(dim=(1, 2, 3)).sum())
            changed = (ref != x).any(dim=1, keepdim=True)
            inside += float((edit * changed).sum())
            total += float(edit.sum())
        d_real += float(critic(x).sum())
        d_fake += float(critic(fake).sum())
        f_real.append(_features(classifier, x).cpu())
        f_fake.append(_features(classifier, fake).cpu())
    generator_net.train(was_training)
    n = images.shape[0]
    real_feats, fake_feats = torch.cat(f_real), torch.cat(f_fake)
    dist, dist_in, classes = 0.0, 0.0, 0
    for t in targets.unique().tolist():
        real_t = real_feats[labels == t]
        chosen = targets == t
        if real_t.shape[0] < 2 or int(chosen.sum()) < 2:
            continue
        dist += float(_diag_frechet(fake_feats[chosen], real_t))
        dist_in += float(_diag_frechet(real_feats[chosen], real_t))
        classes += 1
    nan = float("nan")
    return {
        "success_rate": hits / n,
        "l1": l1 / n,
        "critic_gap": (d_real - d_fake) / n,
        "feature_distance": dist / classes if classes else nan,
        "feature_distance_input": dist_in / classes if classes else nan,
        "counterfactual_l1": None if counterfactuals is None else ref_l1 / n,
        "in_region": None if counterfactuals is None else (inside / total if total else nan),
    }


def _check_resume(card: GanmexCard, new: GanmexCard) -> None:
    problems = []
    for key in ("image_size", "in_channels", "num_classes", "class_names",
                "classifier_card_hash"):
        if getattr(card, key) != getattr(new, key):
            problems.append(f"{key}: saved {getattr(card, key)!r}, now {getattr(new, key)!r}")
    saved, now = card.options.model_dump(), new.options.model_dump()
    for key in saved:
        if key not in RESUMABLE_OPTIONS and saved[key] != now[key]:
            problems.append(f"option {key}: saved {saved[key]!r}, now {now[key]!r}")
    if problems:
        raise ValueError(
            "cannot resume the GANMEX run in this directory, it was started with different "
            "settings (" + "; ".join(problems) + "); use the same settings to resume, or a new "
            "--out directory (or resume=False) to start over"
        )


def read_history(path: str | Path, up_to: int | None = None) -> list[ValidationRecord]:
    """The validation records of ``GEN/validation.csv`` (``path``), up to step ``up_to``.

    Returns an empty list when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = {f.name: f.type for f in fields(ValidationRecord)}
    out = []
    for row in rows:
        rec = ValidationRecord(**{k: (int(v) if k == "step" else None if v in ("", None)
                                      else float(v)) for k, v in row.items() if k in names})
        if up_to is None or rec.step <= up_to:
            out.append(rec)
    return out


def _write_history(path: Path, records: list[ValidationRecord]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(ValidationRecord)])
            writer.writeheader()
            for rec in records:
                writer.writerow(asdict(rec))

    atomic_write(path, write)


def train_ganmex(
    classifier: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    out_dir: str | Path,
    class_names: list[str],
    options: GanmexOptions | None = None,
    val_images: Tensor | None = None,
    val_labels: Tensor | None = None,
    val_counterfactuals: Callable[[Tensor], Tensor] | None = None,
    classifier_card_hash: str | None = None,
    classifier_name: str = "",
    data_fingerprint: str | None = None,
    device: str | torch.device = "cpu",
    resume: bool = True,
    on_step: Callable[[int, StepLosses], None] | None = None,
    on_validation: Callable[[ValidationRecord], None] | None = None,
    until_success: float | None = None,
    until_l1: float | None = None,
) -> tuple[GanmexCard, list[ValidationRecord]]:
    """Train (or resume training) a GANMEX generator for ``classifier`` and save it to ``out_dir``.

    The classifier is frozen for the whole run (eval mode, no parameter gradients) and restored
    afterwards; it is never updated. Every ``options.checkpoint_every`` steps and at the last
    step the run validates, appends a line to ``GEN/validation.csv`` and saves a checkpoint.

    Args:
        classifier: the model to explain, ``(N, C, H, W) -> (N, K)`` logits.
        images: training images ``(N, C, H, W)`` in [0, 1], ``H`` and ``W`` divisible by 4.
        labels: their classes ``(N,)``.
        out_dir: the generator directory ``GEN/``.
        class_names: the ``K`` class names in logit order (recorded in the card; the baseline
            provider checks them).
        options: training options (defaults: :class:`GanmexOptions`).
        val_images: validation images; default: a seeded subset of the training images.
        val_labels: their classes.
        val_counterfactuals: ``targets -> x*``: the exact minimal counterfactuals of the
            validation images (the first ``val_size`` of ``val_images``) for the validation
            targets, when known (the benchmark:
            ``lambda t: concilium.data.counterfactuals(val_data, t)``); adds ``|G - x*|`` and the
            in-region share to every validation record. Needs ``val_images``.
        classifier_card_hash: :func:`~concilium.ganmex.checkpoint.card_hash` of the
            classifier's member card, recorded so the provider can refuse other classifiers.
        classifier_name: free text recorded in the card (e.g. the member directory).
        data_fingerprint: fingerprint of the training data, recorded in the card.
        device: ``"cpu"`` or ``"cuda"`` (or a ``torch.device``); data stay on the CPU and are
            moved batch by batch.
        resume: continue from the checkpoint in ``out_dir`` if there is one (the settings must
            match, except ``steps``, ``checkpoint_every`` and ``val_size``); ``False`` starts
            over and overwrites it.
        on_step: called after every step with ``(step, losses)`` (progress bars).
        on_validation: called with each validation record.
        until_success: stop early at the first checkpoint whose target success rate reaches
            this value (``None``: always run ``options.steps`` steps). A later call with the
            same settings resumes from there.
        until_l1: with ``until_success``, stop only once ``|x - G|`` is also at most this value
            (stop on quality, not on the first success); alone, stop at the first checkpoint
            with ``|x - G|`` at most this value and success at least 0.9.

    Returns:
        The final card and the full validation history (including lines of earlier runs).

    Raises:
        ValueError: on malformed inputs, fewer than two classes, or settings that differ from
            the checkpoint being resumed.
    """
    options = options or GanmexOptions()
    if until_success is not None and not 0.0 < until_success <= 1.0:
        raise ValueError(f"until_success must lie in (0, 1]; got {until_success}")
    if until_l1 is not None and not until_l1 > 0.0:
        raise ValueError(f"until_l1 must be positive; got {until_l1}")
    if until_l1 is not None and until_success is None:
        until_success = 0.9
    if val_counterfactuals is not None and val_images is None:
        raise ValueError("val_counterfactuals needs val_images (the images they belong to)")
    images = check_images(images)
    num_classes = len(class_names)
    labels = check_labels(labels, images.shape[0], num_classes)
    if num_classes < 2:
        raise ValueError(f"GANMEX needs at least two classes; got {class_names}")
    _, in_channels, h, w = images.shape
    check_image_size(h, w)
    device = torch.device(device)
    out = Path(out_dir)

    rng = torch.Generator().manual_seed(options.seed)
    if val_images is None:
        pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(
            options.seed + 1))[:options.val_size]
        val_images, val_labels = images[pick], labels[pick]
    else:
        val_images = check_images(val_images, "val_images")[:options.val_size]
        if val_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"val_images must be (N, {in_channels}, {h}, {w}) like the images; "
                             f"got {tuple(val_images.shape)}")
        if val_labels is None:
            raise ValueError("val_labels are required with val_images")
        val_labels = check_labels(val_labels[:val_images.shape[0]], val_images.shape[0],
                                  num_classes, "val_labels")
    val_targets = validation_targets(val_labels, num_classes, seed=options.seed)
    val_refs = None
    if val_counterfactuals is not None:
        val_refs = check_images(val_counterfactuals(val_targets), "val_counterfactuals")
        if val_refs.shape != val_images.shape:
            raise ValueError(f"val_counterfactuals must return {tuple(val_images.shape)} images "
                             f"like the validation images; got {tuple(val_refs.shape)}")

    gen, critic = build_networks(options, num_classes=num_classes, image_size=(h, w),
                                 in_channels=in_channels)
    gen.to(device)
    critic.to(device)
    betas = (options.beta1, options.beta2)
    opt_g = torch.optim.Adam(gen.parameters(), lr=options.lr_g, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=options.lr_d, betas=betas)
    card = GanmexCard(
        image_size=(h, w), in_channels=in_channels, num_classes=num_classes,
        class_names=list(class_names), classifier_card_hash=classifier_card_hash,
        classifier=classifier_name, data_fingerprint=data_fingerprint, options=options,
        concilium_version=_version,
    )
    history: list[ValidationRecord] = []
    if resume and (out / CARD_FILE).is_file():
        saved = load_card(out)
        _check_resume(saved, card)
        load_state(out, saved, generator_net=gen, critic=critic, opt_g=opt_g, opt_d=opt_d,
                   rng=rng, device=device)
        card = card.model_copy(update={"step": saved.step, "seconds": saved.seconds})
        history = read_history(out / VALIDATION_FILE, saved.step)
    out.mkdir(parents=True, exist_ok=True)

    gen.train()
    critic.train()
    started, base_seconds = time.perf_counter(), card.seconds
    sum_g, sum_d, count = 0.0, 0.0, 0
    with frozen(classifier):
        classifier.to(device)
        for step in range(card.step + 1, options.steps + 1):
            batches = []
            for _ in range(options.n_critic):
                idx = torch.randint(images.shape[0], (options.batch_size,), generator=rng)
                y = labels[idx]
                t = sample_targets(y, num_classes, generator=rng,
                                   same_class=options.same_class)
                batches.append((images[idx].to(device), y.to(device), t.to(device)))
            losses = train_step(gen, critic, classifier, opt_g, opt_d, batches, options=options,
                                rng=rng)
            sum_g, sum_d, count = sum_g + losses.loss_g, sum_d + losses.loss_d, count + 1
            if on_step is not None:
                on_step(step, losses)
            if step % options.checkpoint_every and step != options.steps:
                continue
            seconds = base_seconds + time.perf_counter() - started
            scores = validate(gen, critic, classifier, val_images, val_labels, val_targets,
                              counterfactuals=val_refs)
            record = ValidationRecord(step=step, seconds=seconds, loss_g=sum_g / count,
                                      loss_d=sum_d / count, **scores)
            sum_g, sum_d, count = 0.0, 0.0, 0
            history.append(record)
            card = card.model_copy(update={"step": step, "seconds": seconds})
            _write_history(out / VALIDATION_FILE, history)
            save_checkpoint(out, card=card, generator_net=gen, critic=critic, opt_g=opt_g,
                            opt_d=opt_d, rng=rng)
            if on_validation is not None:
                on_validation(record)
            if until_success is not None and record.success_rate >= until_success and (
                    until_l1 is None or record.l1 <= until_l1):
                break
    return card, history


def finetune_generator(
    generator_net: Generator,
    classifier: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    options: GanmexOptions,
    steps: int,
    seed: int = 0,
) -> Generator:
    """A copy of ``generator_net`` trained ``steps`` more steps against ``classifier`` (for
    example a randomised copy of the model it was made for), with a fresh critic and the same
    losses; ``generator_net`` is left as it was.

    This is how a model-dependent baseline is made again for a randomised model in the
    randomisation test (a brief fine-tune instead of a full training).

    Returns:
        The fine-tuned generator, in eval mode without parameter gradients, on the device of
        ``generator_net``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    images = check_images(images)
    num_classes = generator_net.num_classes
    labels = check_labels(labels, images.shape[0], num_classes)
    device = next(generator_net.parameters()).device
    gen = copy.deepcopy(generator_net).train().requires_grad_(True)
    _, critic = build_networks(options.model_copy(update={"seed": seed}), num_classes=num_classes,
                               image_size=tuple(images.shape[2:]), in_channels=images.shape[1])
    critic.to(device).train()
    betas = (options.beta1, options.beta2)
    opt_g = torch.optim.Adam(gen.parameters(), lr=options.lr_g, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=options.lr_d, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    with frozen(classifier):
        for _ in range(steps):
            batches = []
            for _ in range(options.n_critic):
                idx = torch.randint(images.shape[0], (options.batch_size,), generator=rng)
                y = labels[idx]
                t = sample_targets(y, num_classes, generator=rng, same_class=options.same_class)
                batches.append((images[idx].to(device), y.to(device), t.to(device)))
            train_step(gen, critic, classifier, opt_g, opt_d, batches, options=options, rng=rng)
    return gen.eval().requires_grad_(False)
