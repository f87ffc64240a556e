import torch
from torch import nn

from raycredit.models import build_model
from raycredit.rules import make_config


def model(**kw):
    torch.manual_seed(0)
    return build_model(make_config({"d": 16, "L": 3, **kw}).model, in_shape=12, n_classes=5)


def test_shapes_and_layer_indexing():
    m = model(mlp_ratio=2.0)
    x = torch.randn(7, 12)
    hs, logits = m.hiddens(x)
    assert len(hs) == 4 and all(h.shape == (7, 16) for h in hs) and logits.shape == (7, 5)
    assert m.blocks[0].w1.out_features == 32
    torch.testing.assert_close(m(x), logits)
    torch.testing.assert_close(m.forward_from(1, hs[1]), logits)
    torch.testing.assert_close(hs[2], hs[1] + m.f(2, hs[1]))


def test_residual_add_off_makes_blocks_replace_the_stream():
    m = model(residual_add=False)
    hs, _ = m.hiddens(torch.randn(4, 12))
    torch.testing.assert_close(hs[3], m.f(3, hs[2]))


def test_zero_w2_blocks_are_identity_and_out_ln_is_optional():
    m = model(w2_std=0.0, out_ln=False)
    hs, logits = m.hiddens(torch.randn(4, 12))
    assert torch.equal(hs[0], hs[3])
    assert isinstance(m.out_ln, nn.Identity)
    torch.testing.assert_close(logits, m.readout(hs[3]))
    assert isinstance(model().out_ln, nn.LayerNorm)


def test_w2_std_and_activation_knobs():
    assert abs(model(w2_std=0.5, d=64).blocks[0].w2.weight.std().item() - 0.5) < 0.05
    assert isinstance(model(activation="relu").blocks[0].act, nn.ReLU)
    assert isinstance(model().blocks[0].act, nn.GELU)


def test_plain_mlp_is_input_then_dense_layers_then_readout():
    m = model(arch="mlp", activation="tanh", L=2)
    assert m.h_shapes == [(12,), (16,), (16,)] and not list(m.embed.parameters())
    assert not any(isinstance(x, nn.LayerNorm) for x in m.modules())
    x = torch.randn(5, 12)
    hs, logits = m.hiddens(x)
    torch.testing.assert_close(hs[0], x)
    torch.testing.assert_close(hs[1], torch.tanh(m.blocks[0].w(x)))
    torch.testing.assert_close(hs[2], torch.tanh(m.blocks[1].w(hs[1])))  # no residual
    torch.testing.assert_close(logits, m.readout(hs[2]))


def test_student_activation_follows_the_teacher_alpha():
    cfg = make_config({"d": 16, "L": 2, "student_activation": "teacher"}).model
    z = torch.linspace(-3, 3, 13)
    linear = build_model(cfg, in_shape=12, n_classes=5, alpha=0.0)
    torch.testing.assert_close(linear.blocks[0].act(z), z)
    half = build_model(cfg, in_shape=12, n_classes=5, alpha=0.5)
    torch.testing.assert_close(half.blocks[1].act(z), 0.5 * z + 0.5 * torch.tanh(z))
    own = build_model(make_config({"d": 16, "L": 2}).model, in_shape=12, n_classes=5, alpha=0.0)
    assert isinstance(own.blocks[0].act, nn.GELU)
