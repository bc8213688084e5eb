"""Robustness report: a classifier's metrics on clean inputs and under FGSM and PGD attacks (RoS-KD Table II)."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkd_ext.utils import is_positive_int

from .attacks import evaluate_under_attack, fgsm, pgd
from .classification import classification_report

__all__ = ["ATTACKS", "robustness_report", "robustness_to_markdown"]

ATTACKS = ("fgsm", "pgd")


class _PerturbationMeter:
    """Wraps an attack and records the per-sample L2 norm of ``x_adv - x``."""

    def __init__(self, attack: Any) -> None:
        self.attack = attack
        self.norms: list[torch.Tensor] = []

    def __call__(self, model: nn.Module, x: torch.Tensor, y: Any) -> torch.Tensor:
        x_adv = self.attack(model, x, y)
        self.norms.append((x_adv.float() - x.float()).flatten(1).norm(dim=1).cpu())
        return x_adv


def robustness_report(
    network: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    radius: float = 128 / 255,
    attacks: Sequence[str] = ATTACKS,
    pgd_steps: int = 10,
    pgd_step: float | None = None,
    multi_label: bool = False,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    output_dir: str | os.PathLike | None = None,
    prefix: str = "robustness",
) -> dict[str, Any]:
    """Classification reports of ``network`` before and after L2 attacks of the given radius.

    Inputs are expected in ``[0, 1]`` (the attacks clamp to that range). FGSM takes one step of length ``radius``
    along the normalised loss gradient; PGD takes ``pgd_steps`` steps of ``pgd_step`` (default ``radius / 4``),
    projecting onto the L2 ball of ``radius`` after each (``medkd_ext.metrics.fgsm`` / ``pgd``).

    Args:
        network: the classifier (logits ``(B, C)``).
        loader: batches of dicts with ``image`` and ``label``.
        loss_fn: the loss the attacks ascend (cross-entropy, or BCE with logits for multi-label).
        radius: L2 radius ``eps`` (paper: 128/255).
        attacks: subset of ``("fgsm", "pgd")``.
        pgd_steps: number of PGD steps.
        pgd_step: PGD step length; ``None`` for ``radius / 4``.
        multi_label: sigmoid probabilities and multi-hot labels.
        class_names: names of the classes.
        device: where to run; default the network's device.
        output_dir: when given, ``<prefix>.json`` and ``<prefix>.md`` are written there.
        prefix: file name stem.

    Returns:
        ``{"radius", "clean": report, "<attack>": report, "perturbation_l2": {attack: {"mean", "max"}}}`` where each
        report is a :func:`classification_report` dict.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"attacks must be a non-empty subset of {ATTACKS}, got {list(attacks)}.")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius < 0:
        raise ValueError(f"radius must be a non-negative number, got {radius!r}.")
    if not is_positive_int(pgd_steps):
        raise ValueError(f"pgd_steps must be an integer >= 1, got {pgd_steps!r}.")
    batches = list(loader)
    makers = {
        "fgsm": functools.partial(fgsm, loss_fn=loss_fn, radius=float(radius), norm="l2"),
        "pgd": functools.partial(pgd, loss_fn=loss_fn, radius=float(radius), step=pgd_step, steps=pgd_steps, norm="l2"),
    }
    result: dict[str, Any] = {"radius": float(radius), "pgd_steps": pgd_steps, "perturbation_l2": {}}
    for index, name in enumerate(attacks):
        meter = _PerturbationMeter(makers[name])
        out = evaluate_under_attack(network, batches, meter, device=device, multi_label=multi_label)
        if index == 0:
            result["clean"] = classification_report(out["clean_probs"], out["labels"], multi_label, class_names)
        result[name] = classification_report(out["adv_probs"], out["labels"], multi_label, class_names)
        norms = torch.cat(meter.norms)
        result["perturbation_l2"][name] = {"mean": float(norms.mean()), "max": float(norms.max())}
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{prefix}.json").write_text(json.dumps(result, indent=2, default=float))
        (folder / f"{prefix}.md").write_text(robustness_to_markdown(result))
    return result


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def robustness_to_markdown(result: dict[str, Any]) -> str:
    """Table II layout: one row per attack, macro precision/recall/F1 before and after the attack."""
    clean = result["clean"]
    lines = [
        f"L2 attacks, radius {result['radius']:.4f}, PGD {result['pgd_steps']} steps",
        "",
        "| attack | precision before | recall before | F1 before | precision after | recall after | F1 after "
        "| mean L2 perturbation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ATTACKS:
        if name not in result:
            continue
        adv = result[name]
        values = [clean["precision_macro"], clean["recall_macro"], clean["f1_macro"]]
        values += [adv["precision_macro"], adv["recall_macro"], adv["f1_macro"]]
        cells = [name.upper(), *map(_fmt, values), _fmt(result["perturbation_l2"][name]["mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
