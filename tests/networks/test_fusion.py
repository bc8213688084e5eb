from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from medkd_ext.networks import CrossAttentionFusion, FeatureTaps, FrozenTeacher, JointTeacher, token_grid


class TinySegNet(nn.Module):
    """Stand-in teacher with the SegUNet interface: ``enc.i`` levels (stride 2 after the first), ``bottleneck``."""

    def __init__(self, spatial_dims: int, channels=(4, 6, 8), first_stride: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        strides = [first_stride] + [2] * (len(channels) - 1)
        c_in = [1] + list(channels[:-1])
        self.enc = nn.ModuleList([conv(c_in[i], channels[i], 3, stride=strides[i], padding=1) for i in
                                  range(len(channels) - 1)])  # fmt: skip
        self.bottleneck = conv(channels[-2], channels[-1], 3, stride=2, padding=1)
        self.head = conv(channels[-1], out_channels, 1)
        self.decoder_calls = 0
        self.feature_layers = [f"enc.{i}" for i in range(len(channels) - 1)] + ["bottleneck"]
        self.feature_channels = list(channels)
        self.feature_strides = [math.prod(strides[: i + 1]) for i in range(len(channels))]
        self.divisor = self.feature_strides[-1]

    def forward(self, x):
        for level in self.enc:
            x = torch.relu(level(x))
        x = self.bottleneck(x)
        self.decoder_calls += 1
        return nn.functional.interpolate(self.head(x), scale_factor=self.divisor)


def make_teachers(spatial_dims: int, count: int, **kwargs) -> list[TinySegNet]:
    torch.manual_seed(0)
    return [TinySegNet(spatial_dims, **kwargs) for _ in range(count)]


@pytest.mark.parametrize("size, budget, expected", [
    ((48, 48, 48), 512, (8, 8, 8)),
    ((24, 24, 24), 512, (8, 8, 8)),
    ((6, 6, 6), 512, (6, 6, 6)),
    ((96, 96, 48), 512, (10, 10, 5)),
    ((64, 64), 512, (23, 22)),
    ((100, 3), 10, (10, 1)),
    ((5,), 1, (1,)),
])  # fmt: skip
def test_token_grid_values_and_budget(size, budget, expected):
    grid = token_grid(size, budget)
    assert grid == expected
    assert math.prod(grid) <= budget and all(g <= s for g, s in zip(grid, size))


def test_token_grid_per_level_of_a_48_cube_matches_the_docstring():
    tokens = [math.prod(token_grid((48 // s,) * 3, 512)) for s in (1, 2, 4, 8)]
    assert tokens == [512, 512, 512, 216]


def test_token_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_tokens"):
        token_grid((4, 4), 0)
    with pytest.raises(ValueError, match="spatial_size"):
        token_grid((4, 0), 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_teachers", [2, 3, 4])
def test_fusion_shapes(spatial_dims, num_teachers):
    torch.manual_seed(0)
    in_channels = [3, 5, 4, 6][:num_teachers]
    fusion = CrossAttentionFusion(in_channels, 7, spatial_dims, num_heads=2, max_tokens=16)
    size = (6, 8, 4)[:spatial_dims]
    maps = [torch.randn(2, c, *size) for c in in_channels]
    maps[-1] = torch.randn(2, in_channels[-1], *(s // 2 for s in size))  # resampled to the first map's size
    out = fusion(maps)
    assert out.shape == (2, 7, *size)
    assert fusion.embed_dim == 8 and torch.isfinite(out).all()


def test_fusion_attention_never_sees_more_than_max_tokens_per_teacher():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion([3, 3, 3], 4, 3, num_heads=2, max_tokens=20)
    seen = []
    for attention in fusion.attention:
        attention.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[1], args[1].shape[1])))
    fusion([torch.randn(1, 3, 8, 10, 6) for _ in range(3)])
    assert len(seen) == 3
    tokens = math.prod(token_grid((8, 10, 6), 20))
    assert seen == [(tokens, 2 * tokens)] * 3 and tokens <= 20


def test_fusion_queries_attend_to_the_other_teachers_only():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion([2, 2, 2], 4, 2, num_heads=1, max_tokens=64).eval()
    maps = [torch.randn(1, 2, 4, 4) for _ in range(3)]
    captured = {}

    def record(module, args, output):
        captured["out"] = output[0].clone()

    fusion.attention[0].register_forward_hook(record)
    fusion(maps)
    first = captured.pop("out")
    changed = [maps[0] + 1.0, maps[1], maps[2]]  # teacher 0's own map only enters its query
    fusion(changed)
    assert not torch.allclose(first, captured.pop("out"))
    changed = [maps[0], maps[1] * 2.0, maps[2]]  # teacher 1's map enters teacher 0's keys/values
    fusion(changed)
    assert not torch.allclose(first, captured.pop("out"))
    # without position encoding, reordering the other teachers leaves teacher 0's attention output unchanged
    fusion = CrossAttentionFusion([2, 2, 2], 4, 2, num_heads=1, positional_encoding=False).eval()
    fusion.project[2].load_state_dict(fusion.project[1].state_dict())
    fusion.context_norm[0].weight.data.uniform_()
    fusion.attention[0].register_forward_hook(record)
    fusion(maps)
    a = captured.pop("out")
    fusion([maps[0], maps[2], maps[1]])
    torch.testing.assert_close(a, captured.pop("out"))


def test_fusion_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 teachers"):
        CrossAttentionFusion([4], 4, 3)
    with pytest.raises(ValueError, match="in_channels must be a sequence"):
        CrossAttentionFusion(4, 4, 3)
    with pytest.raises(ValueError, match="embed_dim must be a positive multiple of num_heads=4"):
        CrossAttentionFusion([4, 4], 4, 3, embed_dim=6)
    with pytest.raises(ValueError, match="spatial_dims"):
        CrossAttentionFusion([4, 4], 4, 4)
    fusion = CrossAttentionFusion([2, 3], 4, 2, num_heads=2)
    with pytest.raises(ValueError, match="expected a sequence of 2 feature maps"):
        fusion([torch.randn(1, 2, 4, 4)])
    with pytest.raises(ValueError, match=r"map 1 has 2 channels but in_channels\[1\] is 3"):
        fusion([torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="batch size"):
        fusion([torch.randn(1, 2, 4, 4), torch.randn(2, 3, 4, 4)])


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_teachers", [2, 3, 4])
def test_joint_teacher_shapes(spatial_dims, num_teachers):
    teachers = make_teachers(spatial_dims, num_teachers)
    joint = JointTeacher(teachers, spatial_dims, out_channels=3, num_heads=2, max_tokens=8, num_res_units=1)
    x = torch.randn(2, 1, *(8,) * spatial_dims)
    with FeatureTaps(joint, joint.feature_layers) as taps:
        logits = joint(x)
        fused = taps.features
    assert logits.shape == (2, 3, *(8,) * spatial_dims)
    assert joint.feature_layers == ["fusion.0", "fusion.1", "fusion.2"]
    assert joint.feature_channels == [4, 6, 8] and joint.feature_strides == [1, 2, 4] and joint.divisor == 4
    for name, channels, stride in zip(joint.feature_layers, joint.feature_channels, joint.feature_strides):
        assert fused[name].shape == (2, channels, *(8 // stride,) * spatial_dims)
    assert [type(m).__name__ for m in joint.teachers] == ["FrozenTeacher"] * num_teachers


def test_joint_teacher_aligns_the_last_levels_and_upsamples_from_a_strided_finest_level():
    torch.manual_seed(0)
    deep = TinySegNet(3, channels=(3, 4, 6, 8), first_stride=2)  # strides 2, 4, 8, 16
    shallow = TinySegNet(3, channels=(5, 7, 9), first_stride=1)  # strides 1, 2, 4
    joint = JointTeacher([deep, shallow], 3, out_channels=2, fused_channels=[4, 4, 8], num_heads=2, num_res_units=1)
    assert joint.teacher_layers == [["enc.1", "enc.2", "bottleneck"], ["enc.0", "enc.1", "bottleneck"]]
    assert joint.feature_strides == [4, 8, 16] and joint.divisor == 16
    assert joint.fusion[0].in_channels == (4, 5) and joint.fusion[2].in_channels == (8, 9)
    assert len(joint.decoder) == 3  # two levels up, then stride 4 up to the input
    x = torch.randn(1, 1, 32, 32, 32)
    with FeatureTaps(joint, joint.feature_layers) as taps:
        assert joint(x).shape == (1, 2, 32, 32, 32)
    assert [tuple(f.shape) for f in taps.features.values()] == [(1, 4, 8, 8, 8), (1, 4, 4, 4, 4), (1, 8, 2, 2, 2)]


def test_skipping_the_teacher_decoders_gives_the_same_logits():
    teachers = make_teachers(2, 2)
    joint = JointTeacher(teachers, 2, out_channels=2, num_heads=2, num_res_units=1).eval()
    x = torch.randn(1, 1, 8, 8)
    fast = joint(x)
    assert [t.decoder_calls for t in teachers] == [0, 0]
    joint.skip_teacher_decoders = False
    torch.testing.assert_close(joint(x), fast)
    assert [t.decoder_calls for t in teachers] == [1, 1]
    assert teachers[0](x).shape == (1, 2, 8, 8)  # the teacher alone still runs whole


def test_teachers_frozen_bit_identical_after_training_and_gradients_reach_only_the_new_parts():
    teachers = make_teachers(3, 3)
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    joint = JointTeacher(teachers, 3, out_channels=2, num_heads=2, max_tokens=8, num_res_units=1)
    joint.train()
    assert all(not t.training and not t.network.training for t in joint.teachers)
    assert joint.fusion.training and joint.decoder.training
    params = joint.trainable_parameters()
    trainable_ids = {id(p) for p in params}
    teacher_ids = {id(p) for t in teachers for p in t.parameters()}
    assert not trainable_ids & teacher_ids
    assert trainable_ids == {id(p) for n, p in joint.named_parameters() if not n.startswith("teachers.")}
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)
    x = torch.randn(2, 1, 8, 8, 8)
    target = (torch.rand(2, 1, 8, 8, 8) > 0.5).long()
    for _ in range(2):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(joint(x), target[:, 0])
        loss.backward()
        optimizer.step()
    assert all(p.grad is None and not p.requires_grad for t in teachers for p in t.parameters())
    for name in ("fusion.0.project.0.weight", "fusion.2.attention.1.in_proj_weight", "decoder.0.up.conv.weight",
                 "head.weight"):  # fmt: skip
        grad = joint.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    for teacher, state in zip(teachers, before):
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_state_dict_holds_the_teachers_with_their_own_keys_and_round_trips():
    teachers = make_teachers(2, 2)
    joint = JointTeacher(teachers, 2, out_channels=2, num_heads=2, num_res_units=1)
    state = joint.state_dict()
    assert set(teachers[1].state_dict()) == {k[len("teachers.1."):] for k in state if k.startswith("teachers.1.")}
    assert any(k.startswith("fusion.1.") for k in state) and "head.weight" in state
    other = JointTeacher(make_teachers(2, 2), 2, out_channels=2, num_heads=2, num_res_units=1)
    for p in other.teachers[0].parameters():
        p.data.add_(1.0)
    other.load_state_dict(state)
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(other.eval()(x), joint.eval()(x))
    assert not any(p.requires_grad for p in other.teachers.parameters())
    copied = copy.deepcopy(joint)  # no hooks are left behind on the teachers between forward passes
    torch.testing.assert_close(copied(x), joint(x))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in joint.teachers.modules())


def test_inference_mode_forward_and_already_frozen_teachers():
    teachers = make_teachers(2, 2)
    wrapped = FrozenTeacher(teachers[0])
    joint = JointTeacher([wrapped, teachers[1]], 2, out_channels=2, num_heads=2, num_res_units=1).eval()
    assert joint.teachers[0] is wrapped
    x = torch.randn(1, 1, 8, 8)
    with torch.inference_mode():
        inside = joint(x)
    torch.testing.assert_close(joint(x), inside)


def test_joint_teacher_errors_name_the_problem():
    teachers = make_teachers(2, 2)
    with pytest.raises(ValueError, match="at least 2"):
        JointTeacher(teachers[:1], 2, out_channels=2)
    with pytest.raises(ValueError, match=r"fused_channels must hold 3 positive ints.*\[4, 6\]"):
        JointTeacher(teachers, 2, out_channels=2, fused_channels=[4, 6])
    with pytest.raises(ValueError, match="level_strides .* disagree with teacher 0"):
        JointTeacher(teachers, 2, out_channels=2, level_strides=[1, 2, 8])
    bad = TinySegNet(2)
    bad.feature_channels = [4, 6]
    with pytest.raises(ValueError, match=r"teacher 1 \(TinySegNet\): feature_channels \[4, 6\] must hold one"):
        JointTeacher([teachers[0], bad], 2, out_channels=2)
    with pytest.raises(ValueError, match="teacher 1 \\(Linear\\) has no feature_layers"):
        JointTeacher([teachers[0], nn.Linear(2, 2)], 2, out_channels=2)
    with pytest.raises(TypeError, match="teacher 1 must be a torch.nn.Module"):
        JointTeacher([teachers[0], "unet"], 2, out_channels=2)
    with pytest.raises(ValueError, match="unknown|no sub-module"):
        broken = TinySegNet(2)
        broken.feature_layers = ["enc.0", "enc.9", "bottleneck"]
        JointTeacher([teachers[0], broken], 2, out_channels=2)
