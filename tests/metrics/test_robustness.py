from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medkd_ext.metrics import robustness_report


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    # inputs in the middle of [0, 1] so that clamping never shortens the perturbation
    return [
        {"image": 0.4 + 0.2 * torch.rand(4, 1, 6, 6, generator=g), "label": torch.tensor([0, 1, 2, 1])}
        for _ in range(n // 4)
    ]


def test_attacks_move_inputs_by_the_requested_l2_norm_and_reports_are_written(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    radius = 0.5
    result = robustness_report(model, _data(), nn.CrossEntropyLoss(), radius=radius, pgd_steps=5, output_dir=tmp_path)
    assert result["perturbation_l2"]["fgsm"]["mean"] == pytest.approx(radius, rel=1e-5)
    assert result["perturbation_l2"]["fgsm"]["max"] == pytest.approx(radius, rel=1e-5)
    assert result["perturbation_l2"]["pgd"]["max"] <= radius + 1e-5
    assert result["perturbation_l2"]["pgd"]["mean"] > 0.9 * radius  # 5 steps of radius/4 reach the ball's surface
    for key in ("clean", "fgsm", "pgd"):
        assert {"precision_macro", "recall_macro", "f1_macro"} <= set(result[key])
    assert result["clean"]["num_samples"] == 8
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["radius"] == radius
    assert "| FGSM |" in (tmp_path / "robustness.md").read_text()


def test_bad_arguments():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="attacks"):
        robustness_report(model, [], nn.CrossEntropyLoss(), attacks=["cw"])
    with pytest.raises(ValueError, match="radius"):
        robustness_report(model, [], nn.CrossEntropyLoss(), radius=-1.0)
    with pytest.raises(ValueError, match="pgd_steps"):
        robustness_report(model, [], nn.CrossEntropyLoss(), pgd_steps=0)
