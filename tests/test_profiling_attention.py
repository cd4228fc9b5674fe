"""The profiler's attention section: exact statistics on hand-built maps, the same numbers through weaver-core's
modules and ours, and the ``--attention`` report end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer as WeaverParT

from profiling import forward
from profiling.attention import LayerMaps, bias_share, capture_attention, head_statistics, k_for_mass
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import weaver_batch
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config


def _hand_built() -> LayerMaps:
    """One jet, 4 slots (the last is padding), 2 heads. Real queries 0-2; query 3 is padding (ignored)."""
    w = torch.zeros(1, 2, 4, 4)
    w[0, 0, :, :3] = torch.tensor([0.5, 0.25, 0.25])  # head 0: every query 1/2, 1/4, 1/4
    w[0, 1, :, 0] = 1.0  # head 1: one-hot
    w[0, :, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # the padded query: garbage that must not count
    real = torch.tensor([[True, True, True, False]])
    return LayerMaps("blocks.0", w, real, qk=torch.ones(1, 2, 4, 4), bias=3 * torch.ones(1, 2, 4, 4))


def test_statistics_of_hand_built_maps_are_exact():
    stats = head_statistics(_hand_built(), ks=(1, 2, 4))
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert stats["entropy"] == pytest.approx([h0, 0.0], abs=1e-6)
    assert stats["effective_number"] == pytest.approx([math.exp(h0), 1.0], abs=1e-6)
    assert stats["topk_mass"][1] == pytest.approx([0.5, 1.0], abs=1e-6)
    assert stats["topk_mass"][2] == pytest.approx([0.75, 1.0], abs=1e-6)
    assert stats["topk_mass"][4] == pytest.approx([1.0, 1.0], abs=1e-6)
    # mean over heads of the top-k mass: k=1 -> 0.75, k=2 -> 0.875, k=3 -> 1
    maps = _hand_built()
    assert [k_for_mass(maps, level) for level in (0.75, 0.8, 0.875, 0.9, 1.0)] == [1, 2, 2, 3, 3]
    assert bias_share(maps) == pytest.approx(0.75)  # |bias| 3 against |q.k| 1 on every real pair
    maps.bias[:, 1] = 1.0  # head 1: |bias| 1 against |q.k| 1
    assert bias_share(maps, per_head=True) == pytest.approx([0.75, 0.5])
    assert bias_share(maps) == pytest.approx(4 / 6)


def test_weaver_core_and_weaver_ext_hooks_give_the_same_statistics(jet_files):
    """weaver-core's ParT and ours with the same weights: the two hook paths read the same maps."""
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_kin.yaml", max_jets=16)
    inputs = (batch["pf_features"], batch["pf_vectors"], batch["pf_mask"])
    torch.manual_seed(0)
    reference = WeaverParT(input_dim=7, num_classes=10, fc_params=[], num_layers=2, embed_dims=[32, 32],
                           pair_embed_dims=[16], num_heads=4, trim=False, use_pre_activation_pair=False)
    ours = ParticleTransformer(part_config(input_dim=7, num_classes=10, num_layers=2, embed_dims=(32, 32),
                                           pair_embed_dims=(16,), num_heads=4, trim=False))
    ours.load_state_dict(reference.state_dict())
    theirs, mine = capture_attention(reference, inputs), capture_attention(ours, inputs)
    assert [r.summary["layer"] for r in mine] == ["blocks.0", "blocks.1"] == [r.summary["layer"] for r in theirs]
    for a, b in zip(theirs, mine, strict=True):
        for key in ("entropy", "effective_number", "bias_share", "mean_real_keys"):
            assert a.summary[key] == pytest.approx(b.summary[key], abs=1e-5)
        assert a.summary["k_for_mass"] == b.summary["k_for_mass"]
        torch.testing.assert_close(a.example_map, b.example_map, atol=1e-5, rtol=0)
        assert 0 < a.summary["bias_share"] < 1 and a.summary["topk_mass"][32] <= 1 + 1e-6


def test_profiler_attention_section_end_to_end(tmp_path: Path, jet_files: list[Path]):
    """``--attention`` with "trained" weights (a saved init) against a random init: report, JSON and plots."""
    network = REPO_ROOT / "networks" / "part.py"
    options = ["-o", "num_layers", "2", "-o", "embed_dims", "(16,16)", "-o", "pair_embed_dims", "(8,)",
               "-o", "num_heads", "2", "-o", "num_cls_layers", "1"]
    from profiling import loading

    dc = loading.load_data_config(JETCLASS_CONFIGS / "JetClass_kin.yaml")
    torch.manual_seed(5)
    model, _ = loading.build_model(network, dc, options=loading.parse_network_options(
        [options[i + 1:i + 3] for i in range(0, len(options), 3)]))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "report"
    rc = forward.main(["--network-config", str(network), "--data-config", str(JETCLASS_CONFIGS / "JetClass_kin.yaml"),
                       "--weights", str(weights), "--input", *map(str, jet_files), "--batch-sizes", "8",
                       "--multiplicities", "16", "--threads", "1", "--min-run-time", "0.02", "--ab-rounds", "2",
                       "--out", str(out), "--attention", "--quiet", *options])
    assert rc == 0
    att = json.loads((out / "report.json").read_text())["attention"]
    assert set(att["sides"]) == {"trained", "random init"} and len(att["sides"]["trained"]) == 2
    assert [(row["mass"], row["layer"]) for row in att["dsa"]] == [
        (mass, layer) for mass in ("0.95", "0.99") for layer in ("mod.blocks.0", "mod.blocks.1", "all")]
    assert all(row["max_abs_diff_softmax"] is not None and 0 < row["attention_flops_fraction"] <= 1
               for row in att["dsa"])
    md = (out / "report.md").read_text()
    assert "## Attention structure" in md and "What DSA would save" in md
    assert all((out / name).is_file() for name in att["plots"])


@pytest.mark.parametrize("kind", ["differential", "dsa_topk", "dsa_indexer"])
def test_every_attention_kind_is_read(kind):
    """Differential attention gives its first map, DSA the dense map its keys are chosen from: one row per block."""
    torch.manual_seed(0)
    model = ParticleTransformer(part_config(input_dim=7, num_classes=4, num_layers=3, embed_dims=(16, 16),
                                            pair_embed_dims=(8,), num_heads=2, num_cls_layers=1, trim=False,
                                            attention=kind, sparsity_ratio=0.5))
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4, 3, 12, generator=g) * 20
    mask = (torch.arange(12)[None] < torch.tensor([12, 9, 5, 2])[:, None]).float().unsqueeze(1)
    v = torch.cat((p, p.norm(dim=1, keepdim=True) + 0.1), 1) * mask
    layers = capture_attention(model, (torch.randn(4, 7, 12, generator=g) * mask, v, mask))
    assert [r.summary["layer"] for r in layers] == ["blocks.0", "blocks.1", "blocks.2"]
    for r in layers:
        assert 0 <= r.summary["entropy"] <= math.log(12) + 1e-5
        assert r.summary["topk_mass"][32] == pytest.approx(1.0, abs=1e-5)  # every jet has <= 12 real keys
        assert r.example_map.shape == (12, 12)
