from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet121

from medkd_ext.engines.attention_transfer import (
    from_torchvision_densenet,
    load_densenet_teacher,
    load_matching_weights,
    unfreeze_last_layers,
)
from medkd_ext.networks import DenseNet40, save_state_dict


def _torchvision_style(state: dict) -> dict:
    """MONAI DenseNet keys written as torchvision names them (the inverse of the conversion under test)."""
    out = {}
    for k, v in state.items():
        k = k.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def d121() -> DenseNet121:
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=5)


def test_torchvision_keys_are_renamed(d121):
    state = d121.state_dict()
    tv = _torchvision_style(state)
    assert "features.denseblock1.denselayer1.norm1.weight" in tv and "classifier.weight" in tv
    assert list(from_torchvision_densenet(tv)) == list(state)
    assert list(from_torchvision_densenet(state)) == list(state)  # idempotent on MONAI keys
    old = {"features.denseblock1.denselayer1.norm.1.weight": torch.zeros(1)}
    assert list(from_torchvision_densenet(old)) == ["features.denseblock1.denselayer1.layers.norm1.weight"]


def test_load_teacher_from_torchvision_checkpoint(d121, tmp_path):
    path = tmp_path / "tv.pt"
    torch.save(_torchvision_style(d121.state_dict()), path)
    fresh = DenseNet121(spatial_dims=2, in_channels=3, out_channels=5)
    load_densenet_teacher(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), d121.state_dict().values()))


def test_load_teacher_errors(d121, tmp_path):
    path = tmp_path / "t.pt"
    save_state_dict(d121, path)
    with pytest.raises(ValueError, match=r"has 5 output classes but the teacher network has 3; set my_key=5"):
        load_densenet_teacher(DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), path, classes_key="my_key")
    with pytest.raises(ValueError, match=r"t\.pt' does not fit DenseNet40.*stage X"):
        load_densenet_teacher(DenseNet40(2, 3, 5), path, stage_hint="stage X")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt' not found \(run it\)"):
        load_densenet_teacher(d121, tmp_path / "missing.pt", stage_hint="run it")


def test_matching_weights_give_densenet40_the_first_blocks(d121, tmp_path):
    generator = torch.Generator().manual_seed(1)  # every weight random (an untrained BatchNorm holds ones and zeros)
    ref = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
           for k, v in d121.state_dict().items()}
    path = tmp_path / "d121.pt"
    torch.save(_torchvision_style(ref), path)
    student = DenseNet40(2, 3, 5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert load_matching_weights(student, path) is student
    got = student.state_dict()
    matching = [k for k, v in got.items() if k in ref and ref[k].shape == v.shape]
    assert "features.denseblock2.denselayer12.layers.conv2.weight" in matching
    assert all(torch.equal(got[k], ref[k]) for k in matching)
    # norm5 has 512 channels here, 1024 in DenseNet-121: not loaded, it keeps its initialisation
    assert got["features.norm5.weight"].shape != ref["features.norm5.weight"].shape
    assert all(torch.equal(got[k], before[k]) for k in got if k not in matching)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="shares no key"):
        load_matching_weights(student, tmp_path / "other.pt")


def test_matching_weights_reach_every_branch_of_a_one_network(d121, tmp_path):
    """The KD study's ``one`` student (a trunk and three branches over DenseNet-40) starts from the pre-trained
    weights in its trunk and in every branch; ``None`` leaves a network as it is."""
    from medkd_ext.networks import ONENetwork

    generator = torch.Generator().manual_seed(2)
    ref = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
           for k, v in d121.state_dict().items()}
    torch.save(ref, tmp_path / "d121.pt")
    one = ONENetwork(DenseNet40(2, 3, 5), num_branches=3)
    before = {k: v.clone() for k, v in one.state_dict().items()}
    assert load_matching_weights(one, None) is one
    assert all(torch.equal(v, before[k]) for k, v in one.state_dict().items())
    load_matching_weights(one, tmp_path / "d121.pt")
    got = one.state_dict()
    assert torch.equal(got["trunk.features_conv0.weight"], ref["features.conv0.weight"])
    for branch in range(3):
        key = f"branches.{branch}.features_denseblock2.denselayer12.layers.conv2.weight"
        assert torch.equal(got[key], ref["features.denseblock2.denselayer12.layers.conv2.weight"]), key
    assert torch.equal(got["branches.1.class_layers.conv1.weight"], before["branches.1.class_layers.conv1.weight"])


def test_unfreeze_last_layers_densenet121():
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14)
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 121  # the name's count: 120 convolutions and the classifier
    params = unfreeze_last_layers(net, 34)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert len(params) == len(names)
    # the paper's last 34 layers: transition 3's convolution, dense block 4, norm5 and the classifier
    assert names[0] == "features.transition3.conv.weight"
    assert {n.split(".")[1] for n in names if n.startswith("features.")} == {"transition3", "denseblock4", "norm5"}
    assert "class_layers.out.weight" in names and not net.features.transition3.norm.weight.requires_grad
    assert 2.0e6 < sum(p.numel() for p in params) < 2.8e6  # the paper reports 2.4m-2.7m trainable parameters
    assert len(unfreeze_last_layers(net, None)) == len(list(net.parameters()))
    assert all(p.requires_grad for p in net.parameters())


def test_frozen_batchnorm_keeps_its_running_statistics_in_training_mode():
    """The last-34-layers baseline: the frozen part's BatchNorm statistics do not move when the trainer calls
    ``train()``; the trainable part's do. ``None`` unfreezes them all again."""
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    unfreeze_last_layers(net, 34)
    frozen, trained = net.features.denseblock1.denselayer1.layers.norm1, net.features.norm5
    before = frozen.running_mean.clone(), trained.running_mean.clone()
    net.train()
    net(torch.randn(4, 1, 64, 64) * 3 + 1)
    assert torch.equal(frozen.running_mean, before[0]) and frozen.num_batches_tracked == 0
    assert not torch.equal(trained.running_mean, before[1])
    unfreeze_last_layers(net, None)
    net.train()
    net(torch.randn(4, 1, 64, 64) * 3 + 1)
    assert not torch.equal(frozen.running_mean, before[0])


@pytest.mark.parametrize("bad", [0, 122, 2.5, True])
def test_unfreeze_last_layers_bad_value(bad):
    with pytest.raises(ValueError, match=r"num_layers must be an int from 1 to 121"):
        unfreeze_last_layers(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), bad)
