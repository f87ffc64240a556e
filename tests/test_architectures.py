"""ViT-Mini and SmallCNN: the shared rules and diagnostics on image-shaped layers; cifar100 end to end."""

import numpy as np
import pytest
import torch
import torchvision

from raycredit.data import load_data
from raycredit.diagnostics import diagnose, per_sample_cos, probe_forward
from raycredit.errors import ConfigError, DataError
from raycredit.models import build_model
from raycredit.rules import RULES, build_rule, make_config
from raycredit.train import train

from cifar_fixture import write_cifar100
from test_rules import grads_of, hidden_backprop

ARCHS = {
    "vit_mini": dict(arch="vit_mini", d=16, heads=2, patch_size=4, L=2, mlp_ratio=2.0),
    "small_cnn": dict(arch="small_cnn", d=8, L=2, mlp_ratio=2.0),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An npz of 3x8x8 images: one of 5 fixed random templates plus as much noise. Learnable, tiny."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 640)
    x = (rng.standard_normal((5, 3, 8, 8))[y] + rng.standard_normal((640, 3, 8, 8))).astype(np.float32)
    path = tmp_path_factory.mktemp("img") / "images.npz"
    np.savez(path, x_train=x[:512], y_train=y[:512], x_test=x[512:], y_test=y[512:])
    return str(path)


def image_cfg(images, arch, **over):
    """fa here is the reference's block-level variant (the only one small_cnn supports); see
    test_lillicrap_fa_on_vit_mini_is_bp_with_true_feedback for the canonical one."""
    return make_config({"dataset": "npz", "data_dir": images, **ARCHS[arch], "epochs": 2, "batch_size": 64,
                             "probe_size": 64, "rho_dirs": 16, "device": "cpu", "fa_mode": "reference", **over})


def setup(cfg, dtype=torch.float32):
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, data.n_classes).to(dtype)
    return data, model, build_rule(cfg, model, data.n_classes).to(dtype)


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_have_the_declared_shape(images, arch):
    data, model, _ = setup(image_cfg(images, arch, rule="bp"))
    hs, logits = model.hiddens(data.x_test[:5])
    assert all(h.shape == (5, *model.h_shape) for h in hs) and logits.shape == (5, 5)
    torch.testing.assert_close(model(data.x_test[:5]), logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_bp_credit_is_calibrated_on_image_layers(images, arch):
    cfg = image_cfg(images, arch, rule="bp")
    data, model, rule = setup(cfg)
    m = diagnose(model, rule, data.x_test[:64], data.y_test[:64], cfg.diag, seed=0)
    assert m["deep_cos"] == pytest.approx(1.0, abs=1e-6) and m["cos/l0"] == pytest.approx(1.0, abs=1e-6)
    assert m["deep_rho"] > 0.99
    g = torch.Generator().manual_seed(1)
    noise = [torch.randn(64, *model.h_shape, generator=g, dtype=torch.float64) for _ in range(cfg.model.L + 1)]
    r = diagnose(model, rule, data.x_test[:64], data.y_test[:64], cfg.diag, seed=0, credits=noise)
    assert abs(r["deep_rho"]) < 0.1 and abs(r["deep_cos"]) < 0.1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name, leaks", [("fa", False), ("dfa", False), ("bp", True)])
def test_no_hidden_backprop_on_image_layers(images, arch, name, leaks):
    data, model, rule = setup(image_cfg(images, arch, rule=name))
    watched, changed = hidden_backprop(model, rule, data.x_train[:32], data.y_train[:32])
    assert watched and bool(changed) == leaks, changed


@pytest.mark.parametrize("arch", ARCHS)
def test_ep_credit_matches_the_gradient_on_image_layers(images, arch):
    cfg = image_cfg(images, arch, rule="ep", ep_beta=1e-4, ep_steps=300, ep_step_size=0.2)
    data, model, rule = setup(cfg, torch.float64)
    hs, logits, g = probe_forward(model, data.x_test[:32].double(), data.y_test[:32])
    cos = [per_sample_cos(a, gi).mean().item() for a, gi in zip(rule.credits(model, hs, logits, data.y_test[:32]),
                                                                g, strict=True)]
    assert min(cos) >= 0.99, cos


@pytest.mark.parametrize("arch", ARCHS)
def test_image_architectures_train_with_every_supported_rule(images, arch):
    finals = {}
    layerwise_rules = ("sign_symmetry", "kolen_pollack") if arch == "vit_mini" else ()
    for name in ("bp", "fa", "dfa", "ep", "frozen", *layerwise_rules):
        layerwise = {"fa_mode": "lillicrap", "weight_decay": 0.1} if name in layerwise_rules else {}
        out = train(image_cfg(images, arch, rule=name, epochs=3, lr=3e-3, ep_steps=5, **layerwise))
        finals[name] = out["final"]
        assert out["final"]["diverged"] == 0 and len(out["history"]) == 3, (name, out["final"])
    assert finals["bp"]["test_acc"] > 0.5, finals["bp"]  # 5 classes: chance is 0.2
    assert finals["bp"]["deep_cos"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_learned_credit_rules_refuse_image_architectures(images, arch):
    for name in ("state_bridge", "credit_bridge", "vector_field", "scaffold"):
        with pytest.raises(ConfigError, match=f"'{name}' supports architectures resmlp, not '{arch}'"):
            image_cfg(images, arch, rule=name)
    layerwise = {"sign_symmetry", "kolen_pollack"} if arch == "vit_mini" else set()  # none through small_cnn
    assert {n for n, r in RULES.items() if arch in r.architectures} == {"bp", "fa", "dfa", "ep", "frozen", *layerwise}


def test_image_architectures_need_image_data(tmp_path):
    with pytest.raises(ConfigError, match="vit_mini needs image data"):
        make_config({"arch": "vit_mini", "d": 16, "heads": 2})
    with pytest.raises(ConfigError, match="heads: 3 does not divide d=16"):
        make_config({"arch": "vit_mini", "d": 16, "heads": 3, "dataset": "npz", "data_dir": "x.npz"})
    vec = tmp_path / "vec.npz"
    np.savez(vec, x_train=np.zeros((4, 10), np.float32), y_train=np.arange(4) % 2,
             x_test=np.zeros((2, 10), np.float32), y_test=np.arange(2))
    with pytest.raises(DataError, match=r"needs image inputs of shape \(C, H, W\)"):
        train(make_config({"arch": "small_cnn", "dataset": "npz", "data_dir": str(vec), "epochs": 1,
                                "device": "cpu"}))
    bad = make_config({"arch": "vit_mini", "d": 16, "heads": 2, "patch_size": 3, "dataset": "npz",
                            "data_dir": str(vec)})
    with pytest.raises(DataError, match="patch_size: 3 does not divide the 8x8 images"):
        np.savez(vec, x_train=np.zeros((4, 3, 8, 8), np.float32), y_train=np.arange(4) % 2,
                 x_test=np.zeros((2, 3, 8, 8), np.float32), y_test=np.arange(2))
        train(bad)


@pytest.mark.parametrize("arch", ["resmlp", "vit_mini"])
def test_cifar100_end_to_end(tmp_path, monkeypatch, arch):
    for name, value in write_cifar100(tmp_path).items():
        monkeypatch.setattr(torchvision.datasets.CIFAR100, name, value)
    extra = {"d": 32, "heads": 2, "patch_size": 8} if arch == "vit_mini" else {"d": 32}
    cfg = make_config({"dataset": "cifar100", "data_dir": str(tmp_path), "arch": arch, **extra, "L": 2,
                            "rule": "dfa", "epochs": 2, "probe_size": 32, "rho_dirs": 4, "device": "cpu"})
    out = train(cfg)
    assert out["n_classes"] == 100 and len(out["history"]) == 2
    assert out["final"]["diverged"] == 0 and 0 <= out["final"]["test_acc"] <= 1 and "deep_cos" in out["final"]


def test_lillicrap_fa_on_vit_mini_is_bp_with_true_feedback(images):
    """Every linear of the attention blocks and the head sends credit through B: with B = W it is BP exactly."""
    from raycredit.rules.fa import feedback_linears

    cfg = image_cfg(images, "vit_mini", rule="fa", fa_mode="lillicrap")
    data, model, fa = setup(cfg, torch.float64)
    assert {n.rsplit(".", 1)[-1] for n in feedback_linears(model)} >= {"qkv", "proj", "w1", "w2", "readout"}
    for name in feedback_linears(model):
        fa.B[name.replace(".", "_")].copy_(model.get_submodule(name).weight.detach())
    bp = build_rule(cfg.replace(rule="bp"), model, data.n_classes)
    x, y = data.x_train[:16].double(), data.y_train[:16]
    want, got = grads_of(model, bp, x, y), grads_of(model, fa, x, y)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12)


def test_lillicrap_fa_refuses_small_cnn(images):
    with pytest.raises(ConfigError, match="depthwise convolution"):
        image_cfg(images, "small_cnn", rule="fa", fa_mode="lillicrap")
