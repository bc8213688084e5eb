"""Gradient attacks for robustness reports: FGSM and PGD under the L2 or L-infinity norm, 2D and 3D.

RoS-KD (Table II) compares students under FGSM (Goodfellow et al., 2015) and PGD (Madry et al., 2018) with
the L2 norm and radius ``eps = 128/255`` on images in ``[0, 1]``. The attacks take the gradient with
respect to the input only (``torch.autograd.grad``), so model parameters get no ``.grad``; the model is put
in ``eval()`` for the attack and given back in the mode it had.

:func:`evaluate_under_attack` collects probabilities before and after an attack, ready for
:func:`medkd_ext.metrics.classification_report`. The building blocks (:func:`attack_mode`, :func:`ascent_direction`,
:func:`project_perturbation`, :func:`plain_copy`, :func:`finish_attack`) also serve the boundary-supporting-sample
attack of BSS (:mod:`medkd_ext.losses.bss`). :func:`transferability` measures how often adversarial examples made on one
model fool another (the KD study's Fig. 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from medkd_ext.utils import is_positive_int

__all__ = [
    "ascent_direction",
    "attack_mode",
    "evaluate_under_attack",
    "fgsm",
    "finish_attack",
    "pgd",
    "plain_copy",
    "project_perturbation",
    "transferability",
]

_NORMS = ("l2", "linf")
_EPS = 1e-12


def _check_common(
    model: nn.Module, x: torch.Tensor, radius: float, norm: str, clamp: tuple[float, float] | None, name: str
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: model must be a torch.nn.Module, got {type(model)}.")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise TypeError(
            f"{name}: x must be a floating-point tensor (B, C, *spatial), got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} of shape {tuple(getattr(x, 'shape', ()))}."
        )
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"{name}: radius must be a non-negative number, got {radius!r}.")
    if norm not in _NORMS:
        raise ValueError(f"{name}: norm must be one of {_NORMS}, got {norm!r}.")
    if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
        raise ValueError(f"{name}: clamp must be None or (low, high) with low < high, got {clamp!r}.")


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """L2 norm over all non-batch dims, shaped ``(B, 1, ..., 1)`` to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit ascent direction: ``g / ||g||_2`` per sample (L2) or ``sign(g)`` (L-inf); 0 where ``g`` is 0."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample_l2(grad).clamp_min(_EPS)


def project_perturbation(delta: torch.Tensor, radius: float, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the ``norm`` ball of ``radius`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-radius, radius)
    scale = (radius / _per_sample_l2(delta).clamp_min(_EPS)).clamp(max=1.0)
    return delta * scale


def _input_grad(model: nn.Module, x: torch.Tensor, y: Any, loss_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = loss_fn(model(x), y)
    if loss.ndim > 0:
        loss = loss.sum()
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Model in ``eval()``, gradients enabled even inside ``no_grad`` / ``inference_mode``; mode restored after."""
    was_training = model.training
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            yield
    finally:
        model.train(was_training)


def plain_copy(x: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``x`` as a plain tensor (a MetaTensor's metadata dropped), the start of an attack."""
    x = x.detach().clone()
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def finish_attack(x: torch.Tensor, x_adv: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    """The attacked input: ``x_adv`` clamped to ``clamp`` (when given), detached, in ``x``'s dtype."""
    if clamp is not None:
        x_adv = x_adv.clamp(clamp[0], clamp[1])
    return x_adv.detach().to(dtype=x.dtype)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: Any,
    loss_fn: Callable[..., torch.Tensor],
    radius: float,
    norm: str = "l2",
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Fast gradient (sign) method: one step of length ``radius`` up the loss gradient.

    ``x_adv = clamp(x + radius * g / ||g||_2)`` with the L2 norm over all non-batch dims of each sample, or
    ``x_adv = clamp(x + radius * sign(g))`` with L-infinity, ``g = d loss_fn(model(x), y) / d x``.

    Args:
        model: the classifier; put in ``eval()`` for the attack and restored to its previous mode.
        x: ``(B, C, *spatial)`` floating-point inputs (2D or 3D).
        y: targets, passed to ``loss_fn`` unchanged.
        loss_fn: ``loss_fn(model(x), y)``; a non-scalar loss is summed.
        radius: perturbation size (``>= 0``), in the units of ``x``.
        norm: ``"l2"`` or ``"linf"``.
        clamp: valid input range applied last, or ``None``.

    Returns:
        The adversarial inputs, detached, same shape, dtype and device as ``x``.
    """
    _check_common(model, x, radius, norm, clamp, "fgsm")
    with attack_mode(model):
        x0 = plain_copy(x)
        grad = _input_grad(model, x0, y, loss_fn)
        x_adv = x0 + radius * ascent_direction(grad, norm)
    return finish_attack(x, x_adv, clamp)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: Any,
    loss_fn: Callable[..., torch.Tensor],
    radius: float,
    step: float | None = None,
    steps: int = 10,
    norm: str = "l2",
    random_start: bool = False,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): ``steps`` normalised gradient steps, each followed by a
    projection onto the ``norm`` ball of ``radius`` around ``x`` and the ``clamp`` to the valid range.

    Args:
        model: the classifier; put in ``eval()`` for the attack and restored to its previous mode.
        x: ``(B, C, *spatial)`` floating-point inputs (2D or 3D).
        y: targets, passed to ``loss_fn`` unchanged.
        loss_fn: ``loss_fn(model(x), y)``; a non-scalar loss is summed.
        radius: ball radius (``>= 0``), in the units of ``x``.
        step: step length; default ``radius / 4``.
        steps: number of steps (``>= 1``).
        norm: ``"l2"`` (per-sample L2 over all non-batch dims) or ``"linf"``.
        random_start: start from a uniform random point of the ball instead of ``x``.
        clamp: valid input range, or ``None``.
        generator: random generator for ``random_start``, for reproducible attacks.

    Returns:
        The adversarial inputs, detached, within ``radius`` of ``x`` and inside ``clamp``.
    """
    _check_common(model, x, radius, norm, clamp, "pgd")
    if step is None:
        step = radius / 4.0
    if not isinstance(step, (int, float)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"pgd: step must be a non-negative number (default radius / 4), got {step!r}.")
    if not is_positive_int(steps):
        raise ValueError(f"pgd: steps must be an int >= 1, got {steps!r}.")
    with attack_mode(model):
        x0 = plain_copy(x)
        delta = torch.zeros_like(x0)
        if random_start and radius > 0:
            delta = _random_in_ball(x0, radius, norm, generator)
        x_adv = x0 + delta
        if clamp is not None:
            x_adv = x_adv.clamp(clamp[0], clamp[1])
        for _ in range(steps):
            grad = _input_grad(model, x_adv, y, loss_fn)
            delta = project_perturbation(x_adv + step * ascent_direction(grad, norm) - x0, radius, norm)
            x_adv = x0 + delta
            if clamp is not None:
                x_adv = x_adv.clamp(clamp[0], clamp[1])
    return finish_attack(x, x_adv, clamp)


def _random_in_ball(x: torch.Tensor, radius: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
        return ((2 * u - 1) * radius).to(x.device)
    g = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    r = torch.rand((x.shape[0],), generator=generator, device=device, dtype=x.dtype)
    dims = x[0].numel()
    # radius * U^(1/d) along a uniform direction is uniform in the d-dimensional ball
    scale = radius * r.pow(1.0 / dims).view(-1, *([1] * (x.ndim - 1)))
    return (scale * g / _per_sample_l2(g).clamp_min(_EPS)).to(x.device)


def _split_batch(batch: Any, image_key: str, label_key: str) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, Mapping):
        missing = [k for k in (image_key, label_key) if k not in batch]
        if missing:
            raise KeyError(f"evaluate_under_attack: batch has no key(s) {missing}; its keys are {list(batch)}.")
        return batch[image_key], batch[label_key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"evaluate_under_attack: each batch must be an (x, y) pair or a dict with '{image_key}' and '{label_key}', "
        f"got {type(batch).__name__}."
    )


def evaluate_under_attack(
    model: nn.Module,
    batches: Iterable[Any],
    attack: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    multi_label: bool = False,
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, torch.Tensor | None]:
    """Probabilities of ``model`` on clean and attacked inputs, with the labels, for ``classification_report``.

    Args:
        model: the classifier, returning logits ``(B, C)``; evaluated in ``eval()`` and restored to its mode.
        batches: an iterable of ``(x, y)`` pairs or of dicts with ``image_key`` and ``label_key`` (a MONAI
            ``DataLoader``).
        attack: ``attack(model, x, y) -> x_adv``, e.g. ``functools.partial(pgd, loss_fn=nn.CrossEntropyLoss(),
            radius=128 / 255)``; ``None`` evaluates clean inputs only.
        device: where to run; default the device of the model's first parameter (CPU when it has none).
        multi_label: sigmoid probabilities (multi-label) instead of softmax (multi-class).
        image_key: image key of dict batches.
        label_key: label key of dict batches.

    Returns:
        ``{"clean_probs": (N, C), "adv_probs": (N, C) or None, "labels": labels concatenated}`` on the CPU;
        multi-class labels of shape ``(N, 1)`` are flattened to ``(N,)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate_under_attack: model must be a torch.nn.Module, got {type(model)}.")
    if attack is not None and not callable(attack):
        raise TypeError(f"evaluate_under_attack: attack must be callable (model, x, y) -> x_adv, got {type(attack)}.")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    activation = torch.sigmoid if multi_label else (lambda z: torch.softmax(z, dim=1))
    clean, adv, labels = [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            x, y = _split_batch(batch, image_key, label_key)
            x = torch.as_tensor(x).to(device)
            x = x.as_tensor() if hasattr(x, "as_tensor") else x
            y_dev = y.to(device) if isinstance(y, torch.Tensor) else y
            with torch.no_grad():
                clean.append(activation(model(x).float()).cpu())
            if attack is not None:
                x_adv = attack(model, x, y_dev)
                model.eval()
                with torch.no_grad():
                    adv.append(activation(model(x_adv).float()).cpu())
            y_cpu = torch.as_tensor(y).detach().cpu()
            labels.append(y_cpu.as_tensor() if hasattr(y_cpu, "as_tensor") else y_cpu)
    finally:
        model.train(was_training)
    if not clean:
        raise ValueError("evaluate_under_attack: batches is empty; check the dataset / datalist.")
    y_all = torch.cat([lb.reshape(lb.shape[0], -1) if lb.ndim > 1 else lb for lb in labels])
    if not multi_label and y_all.ndim == 2 and y_all.shape[1] == 1:
        y_all = y_all[:, 0]
    return {
        "clean_probs": torch.cat(clean),
        "adv_probs": torch.cat(adv) if attack is not None else None,
        "labels": y_all,
    }


def _predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
            return torch.cat([model(x.to(device)).argmax(dim=1).cpu() for x in batches])
    finally:
        model.train(was_training)


def transferability(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor],
    sources: Iterable[str] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, dict[str, int]]]:
    """How often adversarial examples made on one model fool another (Papernot et al.; the KD study's Fig. 1).

    For every source model, ``attack(source, x, y)`` turns each image into an adversarial one (white-box on the
    source). For every pair (source, target), only the images that **both** classify correctly count, as in the KD
    study ("a more fine-grained evaluation"), and the attack succeeds on an image when the target misclassifies its
    adversarial version. Multi-class classifiers only (prediction = argmax of the logits).

    Args:
        models: name -> classifier returning logits ``(B, C)``; every model is a target, and a source unless
            ``sources`` says otherwise. Each is evaluated in ``eval()`` and given back in its mode.
        images: ``(N, C, *spatial)`` inputs, in the range the attack clamps to.
        labels: ``(N,)`` class indices.
        attack: ``attack(model, x, y) -> x_adv``, e.g. ``functools.partial(pgd, loss_fn=nn.CrossEntropyLoss(),
            radius=0.031, step=0.003, steps=20, norm="linf")``.
        sources: the names of the source models (default: every model).
        batch_size: images per forward pass and per attack.
        device: where to run; default the device of the first model's parameters.

    Returns:
        ``{target: {source: {"fooled": k, "both_correct": n}}}``; the success rate is ``k / n`` (undefined when
        ``n == 0``: no image that both classify correctly).
    """
    if not models:
        raise ValueError("transferability: models is empty.")
    if not callable(attack):
        raise TypeError(f"transferability: attack must be callable (model, x, y) -> x_adv, got {type(attack)}.")
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(
            f"transferability: {images.shape[0]} images for {labels.shape[0]} labels; give one class index per image."
        )
    if not is_positive_int(batch_size):
        raise ValueError(f"transferability: batch_size must be an int >= 1, got {batch_size!r}.")
    sources = list(models) if sources is None else list(sources)
    unknown = [name for name in sources if name not in models]
    if unknown:
        raise ValueError(f"transferability: sources {unknown} are not among the models {list(models)}.")
    if device is None:
        first = next(next(iter(models.values())).parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    images = images.as_tensor() if hasattr(images, "as_tensor") else images
    correct = {name: _predict(model, images, batch_size, device) == labels for name, model in models.items()}
    result: dict[str, dict[str, dict[str, int]]] = {target: {} for target in models}
    for source in sources:
        adversarial = torch.cat(
            [
                attack(models[source], images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
                .detach()
                .cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
        for target, model in models.items():
            both = correct[source] & correct[target]
            fooled = both & (_predict(model, adversarial, batch_size, device) != labels)
            result[target][source] = {"fooled": int(fooled.sum()), "both_correct": int(both.sum())}
    return result
