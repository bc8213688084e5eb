"""medkd_ext.engines.kd_study: the KD study's methods, their layers per architecture and their loss terms."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet121, resnet18

from medkd_ext.engines import kd_study
from medkd_ext.engines.distillation import LABEL
from medkd_ext.losses import AttentionTransferLoss, KDLoss, RKDAngleLoss, RKDDistanceLoss, SimilarityPreservingLoss
from medkd_ext.networks import DenseNet40, FeatureTaps, ONENetwork


def _nets():
    return {
        "resnet18": resnet18(spatial_dims=2, n_input_channels=1, num_classes=4),
        "densenet121": DenseNet121(spatial_dims=2, in_channels=1, out_channels=4),
        "densenet40": DenseNet40(spatial_dims=2, in_channels=1, out_channels=4),
    }


def test_blocks_are_the_last_three_stages_at_increasing_depth():
    expected = {
        "resnet18": ["layer2", "layer3", "layer4"],
        "densenet121": ["features.denseblock2", "features.denseblock3", "features.norm5"],
        "densenet40": ["features.denseblock1", "features.norm5", "class_layers.relu2"],
    }
    x = torch.randn(2, 1, 64, 64)
    for name, net in _nets().items():
        first, blocks = kd_study.study_layers(net)
        assert blocks == expected[name]
        with FeatureTaps(net.eval(), [first, *blocks]) as taps, torch.no_grad():
            net(x)
            sizes = [taps.features[layer].shape[2] for layer in [first, *blocks]]
        assert sizes == sorted(sizes, reverse=True), (name, sizes)  # deeper blocks are never larger
    with pytest.raises(ValueError, match="MONAI ResNet, DenseNet"):
        kd_study.study_layers(torch.nn.Linear(2, 2))


def test_loss_terms_follow_table_i():
    nets = _nets()
    ce = torch.nn.CrossEntropyLoss()
    hinton = kd_study.study_loss_terms("hinton", ce, nets["resnet18"], nets["densenet121"])
    assert [(t.name, t.weight) for t in hinton] == [("ce", pytest.approx(0.1)), ("kd", 0.9)]
    assert isinstance(hinton[1].loss, KDLoss) and hinton[1].loss.temperature == 4 and hinton[0].teacher == LABEL
    at = kd_study.study_loss_terms("at", ce, nets["densenet40"], nets["densenet121"])
    assert [t.weight for t in at[1:]] == [500.0] * 3 and all(isinstance(t.loss, AttentionTransferLoss) for t in at[1:])
    assert [(t.student, t.teacher) for t in at[1:]] == list(
        zip(kd_study.study_layers(nets["densenet40"])[1], kd_study.study_layers(nets["densenet121"])[1], strict=True)
    )
    sp = kd_study.study_loss_terms("sp", ce, nets["resnet18"], nets["densenet121"])
    assert isinstance(sp[1].loss, SimilarityPreservingLoss) and sp[1].weight == 3000 and sp[1].student == "layer4"
    rkd = kd_study.study_loss_terms("rkd_da", ce, nets["resnet18"], nets["densenet121"])
    expected = [(RKDDistanceLoss, 25, True), (RKDAngleLoss, 50, True)]
    assert [(type(t.loss), t.weight, t.embed) for t in rkd[1:]] == expected
    assert [t.name for t in kd_study.study_loss_terms("rkd_a", ce, nets["resnet18"], nets["densenet121"])] == [
        "ce", "rkd_angle"
    ]
    tuned = kd_study.study_loss_terms("hinton", ce, nets["resnet18"], nets["densenet121"], settings={"alpha": 0.5})
    assert [t.weight for t in tuned] == [0.5, 0.5]


def test_method_choice_errors_and_overlays():
    assert kd_study.method_overlays("bss") == ["distill/bss.json"] and kd_study.method_overlays("at") == []
    assert kd_study.method_overlays(None) == [] and not kd_study.needs_teacher("dml") and kd_study.needs_teacher("sp")
    assert kd_study.two_stage("fitnet") and kd_study.two_stage("fsp") and not kd_study.two_stage("hinton")
    with pytest.raises(ValueError, match="must be one of hinton, fitnet, fsp, bss"):
        kd_study.check_distill_method("hint")
    with pytest.raises(ValueError, match="baseline true both choose"):
        kd_study.check_choice("at", baseline=True)
    with pytest.raises(ValueError, match="no teacher-student loss terms"):
        kd_study.study_loss_terms("one", torch.nn.CrossEntropyLoss(), _nets()["resnet18"], None)


def test_the_deployed_network_of_one_is_its_branch_0_with_the_backbone_keys():
    backbone = resnet18(spatial_dims=2, n_input_channels=1, num_classes=4)
    keys = list(backbone.state_dict())
    one = ONENetwork(backbone).eval()
    deployed = kd_study.deployed_network(one)
    assert list(deployed.state_dict()) == keys
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deployed(x), one(x, output="branch"))
    plain = torch.nn.Linear(2, 2)
    assert kd_study.deployed_network(plain) is plain


def test_the_initialisation_stage_of_fitnet_and_fsp():
    from medkd_ext.engines import DistillationTrainer, loss_parameters
    from medkd_ext.losses import FitNetLoss, FSPLoss

    nets = _nets()
    student, teacher = nets["resnet18"], nets["densenet121"]
    fitnet = kd_study.init_loss_terms("fitnet", student, teacher, 1, [64, 64])
    assert [(t.name, t.student, t.teacher, t.weight) for t in fitnet] == [
        ("fitnet_2", "layer3", "features.denseblock3", 1.0)
    ]
    assert isinstance(fitnet[0].loss, FitNetLoss) and fitnet[0].loss.resize
    assert (fitnet[0].loss.student_channels, fitnet[0].loss.teacher_channels) == (256, 1024)
    (fsp,) = kd_study.init_loss_terms("fsp", student, teacher, 1, [64, 64])
    assert isinstance(fsp.loss, FSPLoss) and fsp.loss.pair_weights == [1.0, 3.0, 1.0]
    assert fsp.student == ["layer1", "layer2", "layer3", "layer4"] and len(fsp.loss.adapters) == 4
    # the terms train: no supervised term, the adapters are optimised with the student
    for terms in (fitnet, [fsp]):
        params = list(student.parameters()) + loss_parameters(terms)
        batch = {"image": torch.randn(4, 1, 64, 64), "label": torch.zeros(4)}
        trainer = DistillationTrainer(
            device="cpu", max_epochs=1, train_data_loader=[batch],
            network=student, optimizer=torch.optim.SGD(params, lr=1e-3), teachers={"teacher": teacher},
            loss_terms=terms, decollate=False,
        )
        trainer.run()
        assert torch.isfinite(trainer.state.output["loss"])
    with pytest.raises(ValueError, match="no initialisation stage"):
        kd_study.init_loss_terms("hinton", student, teacher, 1, [64, 64])
