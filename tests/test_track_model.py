"""Hit transformer for muon tracks (weaver_ext/track.py, networks/track_transformer.py): loss, padding, options."""

from __future__ import annotations

import math

import pytest
import torch

from profiling.loading import import_network_config, load_data_config
from tests.conftest import REPO_ROOT
from weaver_ext.config import OptionError
from weaver_ext.losses import AuxLoss
from weaver_ext.track import TrackLoss, rotate_about_z, select_hits

NETWORK = REPO_ROOT / "networks" / "track_transformer.py"
TINY = {"embed_dims": (16, 16), "pair_embed_dims": (8,), "num_heads": 2, "num_layers": 1, "num_cls_layers": 1}


@pytest.fixture(scope="module")
def network():
    return import_network_config(NETWORK, name="_test_track_network")


@pytest.fixture(scope="module")
def data_config():
    return load_data_config(REPO_ROOT / "data" / "Tracks" / "tracks.yaml")


def _hits(n_real: list[int], length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random events shaped like tracks.yaml inputs: PMTs on a 1.1 sphere, time, log charge; zero padding."""
    g = torch.Generator().manual_seed(seed)
    batch = len(n_real)
    xyz = torch.nn.functional.normalize(torch.randn(batch, 3, length, generator=g), dim=1) * 1.1
    t = torch.rand(batch, 1, length, generator=g) * 3
    logq = torch.randn(batch, 1, length, generator=g)
    mask = (torch.arange(length).view(1, 1, -1) < torch.tensor(n_real).view(-1, 1, 1)).float()
    points = torch.cat((xyz, t), 1) * mask
    features = torch.cat((xyz, t - 1, logq), 1) * mask
    return points, features, mask


# ---------------------------------------------------------------- loss


def test_loss_known_values():
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, -1.0], [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    pred = target.clone()
    pred[0, 0] += 0.3  # squared distance 0.09
    pred[1, 3:] = torch.tensor([0.0, 2.0, 0.0])  # orthogonal direction: 1 - cos = 1
    loss = TrackLoss(position_weight=1.0, direction_weight=2.0)
    position, direction = loss.terms(pred, target)
    assert position.item() == pytest.approx(0.09 / 2)
    assert direction.item() == pytest.approx(0.5)
    assert loss(pred, target).item() == pytest.approx(0.045 + 2 * 0.5)
    assert TrackLoss(position_weight=3.0, direction_weight=0.0)(pred, target).item() == pytest.approx(0.135)
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-7)
    opposite = target.clone()
    opposite[:, 3:] *= -1
    assert loss.terms(opposite, target)[1].item() == pytest.approx(2.0)


def test_direction_term_ignores_the_predicted_norm():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(16, 6, generator=g)
    target[:, 3:] = torch.nn.functional.normalize(target[:, 3:], dim=1)
    pred = torch.randn(16, 6, generator=g)
    loss = TrackLoss()
    scaled = pred.clone()
    scaled[:, 3:] *= torch.rand(16, 1, generator=g) * 10 + 0.01
    torch.testing.assert_close(loss(scaled, target), loss(pred, target), rtol=1e-5, atol=1e-6)


def test_loss_gradients_are_finite_even_for_a_zero_direction():
    target = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, -1.0]] * 3)
    pred = torch.randn(3, 6)
    pred[1, 3:] = 0.0
    pred.requires_grad_(True)
    TrackLoss()(pred, target).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0].abs().sum() > 0


def test_loss_accepts_weavers_squeezed_batch_of_one_and_rejects_wrong_shapes():
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, -1.0]])
    pred = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, -1.0]])
    loss = TrackLoss()
    assert loss(pred.squeeze(), target).item() == pytest.approx(loss(pred, target).item())
    with pytest.raises(ValueError, match="does not match label"):
        loss(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="does not match label"):
        loss(torch.zeros(3, 6), torch.zeros(2, 6))


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("opts", [
    {},
    {"attention": "dsa", "topk": 8},
    {"latent_tokens": 4, "latent_layers": 1},
    {"max_hits": 12},
    {"track_head": "mlp"},
], ids=["dense", "dsa", "latent", "max_hits", "mlp_head"])
def test_padded_hits_do_not_change_the_output(network, data_config, opts):
    torch.manual_seed(0)
    model, info = network.get_model(data_config, **TINY, **opts)
    model.eval()
    points, features, mask = _hits([30, 17, 9], 30)
    with torch.no_grad():
        out = model(points, features, mask)
        padded = [torch.nn.functional.pad(t, (0, 25)) for t in (points, features, mask)]
        out_padded = model(*padded)
        # padding slots in the middle of an event (real hits keep their order)
        perm = torch.cat((torch.arange(5), torch.arange(30, 55), torch.arange(5, 30)))
        out_mixed = model(*[t[..., perm] for t in padded])
    assert out.shape == (3, 6) and torch.isfinite(out).all()
    torch.testing.assert_close(out_padded, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_mixed, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", [
    {},
    {"attention": "dsa", "topk": 6},
    {"latent_tokens": 4, "latent_layers": 1},
], ids=["dense", "dsa", "latent"])
def test_hit_count_groups_equal_one_padded_group(network, data_config, opts):
    """Grouping events by hit count only changes the cost: evaluation outputs, and training outputs and gradients
    with frozen BatchNorm statistics (the only coupling of a batch), equal one padded group (atol 1e-5)."""
    lengths = [40, 7, 33, 12, 25, 9, 40, 18]
    points, features, mask = _hits(lengths, 40, seed=3)
    target = torch.nn.functional.normalize(torch.randn(len(lengths), 6, generator=torch.Generator().manual_seed(1)),
                                           dim=1)
    results = []
    for buckets in (1, 4):
        torch.manual_seed(0)
        model, _ = network.get_model(data_config, **TINY, **opts, hit_buckets=buckets, augment_azimuth=False)
        groups = model.mod.hit_groups(mask)
        assert len(groups) == min(buckets, len(lengths))
        model.eval()
        with torch.no_grad():
            evaluated = model(points, features, mask)
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        sparse = hasattr(model.mod, "dsa_step")
        step = int(model.mod.dsa_step) if sparse else 0
        trained = model(points, features, mask)
        if sparse:
            assert int(model.mod.dsa_step) == step + 1  # one schedule step per forward, not one per group
        TrackLoss()(trained, target).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((evaluated, trained.detach(), grads))
    (eval1, train1, grads1), (eval4, train4, grads4) = results
    torch.testing.assert_close(eval4, eval1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(train4, train1, rtol=1e-5, atol=1e-5)
    assert grads1.keys() == grads4.keys()
    for name in grads1:
        torch.testing.assert_close(grads4[name], grads1[name], rtol=1e-4, atol=1e-5, msg=name)


def test_events_with_equal_hit_counts_run_as_one_group(network, data_config):
    model, _ = network.get_model(data_config, **TINY, max_hits=12)
    _, _, mask = _hits([12, 12, 12, 12], 12)
    assert len(model.mod.hit_groups(mask)) == 1


def test_training_step_with_the_bound_loss_has_finite_gradients(network, data_config):
    torch.manual_seed(0)
    model, _ = network.get_model(data_config, **TINY, attention="dsa", topk=6)
    loss_func = network.get_loss(data_config, **TINY, attention="dsa", topk=6)
    assert isinstance(loss_func, AuxLoss)  # TrackLoss + the DSA indexer distillation term
    loss_func.bind(model)  # what the training hook does with the model weaver trains
    model.train()
    points, features, mask = _hits([20, 14, 11, 7], 20)
    target = torch.cat((torch.nn.functional.normalize(torch.randn(4, 3), dim=1),
                        torch.nn.functional.normalize(torch.randn(4, 3), dim=1)), 1)
    loss = loss_func(model(points, features, mask).squeeze(), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert loss_func.running["aux_steps"] == 1
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_pointer_head_starts_from_points_on_the_unit_sphere(network, data_config):
    model, _ = network.get_model(data_config, **TINY)
    model.eval()
    with torch.no_grad():
        out = model(*_hits([25, 10], 25))
    torch.testing.assert_close(out[:, :3].norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-5)


def test_azimuthal_augmentation_rotates_inputs_and_prediction_back():
    angle = torch.tensor([0.3, -2.0])
    t = torch.randn(2, 6, 5)
    rotated = rotate_about_z(t, angle.cos(), angle.sin(), 0, 1)
    torch.testing.assert_close(rotated[:, :2].norm(dim=1), t[:, :2].norm(dim=1))
    torch.testing.assert_close(rotated[:, 2:], t[:, 2:])
    back = rotate_about_z(rotated, angle.cos(), -angle.sin(), 0, 1)
    torch.testing.assert_close(back, t, rtol=1e-5, atol=1e-6)
    quarter = rotate_about_z(torch.tensor([[1.0, 0.0]]), torch.tensor([math.cos(math.pi / 2)]),
                             torch.tensor([1.0]), 0, 1)
    torch.testing.assert_close(quarter, torch.tensor([[0.0, 1.0]]), atol=1e-6, rtol=0)


def test_select_hits_keeps_the_highest_charges_and_trims_padding():
    points, features, mask = _hits([6, 3], 10)
    p, f, m = select_hits(points, features, mask, max_hits=4, charge_index=4)
    assert p.shape == (2, 4, 4) and m[1].sum() == 3
    expected = features[0, 4, :6].topk(4).values
    torch.testing.assert_close(f[0, 4], expected)
    _, _, m_all = select_hits(points, features, mask, max_hits=0, charge_index=None)
    assert m_all.shape[-1] == 6  # cut to the longest event


def test_model_info_has_dynamic_hit_axes(network, data_config):
    _, info = network.get_model(data_config, **TINY)
    assert info["input_names"] == ["hit_points", "hit_features", "hit_mask"]
    assert info["output_names"] == ["output"]
    assert info["dynamic_axes"]["hit_points"] == {0: "N", 2: "n_hits"}
    assert info["input_shapes"]["hit_features"] == (1, 5, 2048)


def test_bad_options_fail_with_one_line(network, data_config):
    with pytest.raises(OptionError, match="unknown option 'foo'.*attention.*max_hits"):
        network.get_model(data_config, foo=1)
    with pytest.raises(OptionError, match="option 'attention': unknown kind 'sparse'"):
        network.get_model(data_config, attention="sparse")
    with pytest.raises(OptionError, match="unknown option 'num_classes'"):
        network.get_model(data_config, num_classes=3)
    with pytest.raises(ValueError, match="max_hits"):
        network.get_model(data_config, max_hits=-1)
    with pytest.raises(ValueError, match="hit_buckets"):
        network.get_model(data_config, hit_buckets=0)
    with pytest.raises(ValueError, match="charge_feature"):
        network.get_model(data_config, max_hits=10, charge_feature="hit_q")


def test_wrong_data_config_is_rejected(network):
    jet_config = load_data_config(REPO_ROOT / "data" / "JetClass" / "JetClass_kin.yaml")
    with pytest.raises(ValueError, match="this network needs"):
        network.get_model(jet_config)
