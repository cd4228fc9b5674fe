"""Our analytic FLOP counter vs hand-written formulas, torch's FlopCounterMode and ptflops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from profiling import flops, loading

REPO = Path(__file__).resolve().parents[1]
KIN = REPO / "data" / "JetClass" / "JetClass_kin.yaml"
WEAVER_PART = REPO / "tests" / "profiling_nets" / "weaver_part.py"
OUR_PART = REPO / "networks" / "part.py"
PARTICLENET = REPO / "networks" / "particlenet.py"

# tiny ParT: embed 7->16->32, pair embed 4->8->8->heads, 2 particle blocks, 1 class-attention block
E, H, C, F = 32, 4, 10, 7
TINY_PART = {"embed_dims": [16, E], "pair_embed_dims": [8, 8], "num_heads": H, "num_layers": 2, "num_cls_layers": 1}


def tiny_data_config(tmp_path: Path, length: int) -> Path:
    """The JetClass kin data config with ``length`` particle slots instead of 128."""
    path = tmp_path / f"kin_{length}.yaml"
    path.write_text(KIN.read_text().replace("length: 128", f"length: {length}"))
    return path


def part_analytic_flops(batch: int, p: int) -> int:
    """Hand count (1 MAC = 2 FLOPs) of the tiny ParT on ``p`` particle slots, dense symmetric pair embedding."""
    embed = 2 * p * (F * 16 + 16 * E)
    n_pairs = p * (p + 1) // 2
    pair = 2 * n_pairs * (4 * 8 + 8 * 8 + 8 * H)
    block = 2 * p * E * 3 * E + 4 * p * p * E + 2 * p * E * E + 2 * 2 * p * E * 4 * E
    cls = 2 * (E * E + (p + 1) * 2 * E * E) + 4 * (p + 1) * E + 2 * E * E + 2 * 2 * E * 4 * E
    head = 2 * E * C
    return batch * (embed + pair + 2 * block + cls + head)


def _inputs(dc_path: Path, names: list[str], batch: int, n: int) -> list[torch.Tensor]:
    dc = loading.load_data_config(dc_path)
    pool = loading.synthetic_inputs(dc, batch_size=batch, multiplicity=n, seed=1)
    return [pool[k] for k in names]


@pytest.mark.parametrize("network", [WEAVER_PART, OUR_PART], ids=["weaver-core-ParT", "networks-part"])
def test_part_count_matches_hand_formula(tmp_path: Path, network: Path) -> None:
    if not network.is_file():
        pytest.skip(f"{network} not present")
    p, batch = 24, 3
    dc_path = tiny_data_config(tmp_path, p)
    lm = loading.load_model(network, loading.load_data_config(dc_path), weights=None, options=dict(TINY_PART))
    x = _inputs(dc_path, lm.input_names, batch, 15)  # 15 real particles in 24 slots: exported model runs dense
    ours = flops.count_flops(lm.model, x).matmul_flops
    expected = part_analytic_flops(batch, p)
    assert abs(ours - expected) / expected < 0.01, (ours, expected)
    # the attention cores alone: 2 blocks x (q k^T + att v) + class attention over p+1 keys
    attn = flops.count_flops(lm.model, x).by_type
    assert sum(v for k, v in attn.items() if "Attention" in k) > 0
    # torch's aten-level counter sees the same matmuls (it can miss the 1-query class-attention core)
    tfc = flops.torch_flop_count(lm.model, x)
    assert tfc["error"] is None
    assert abs(tfc["flops"] - expected) / expected < 0.01
    # ptflops (module hooks only) misses the functional in-projection and attention products
    ptf = flops.ptflops_count(lm.model, x)
    assert ptf["error"] is None and 2 * ptf["macs"] < 0.99 * expected


def test_particlenet_count_matches_hand_formula(tmp_path: Path) -> None:
    p, batch, k = 20, 2, 4
    dc_path = tiny_data_config(tmp_path, p)
    opts = {"conv_params": [(k, (8, 8)), (k, (16, 16))], "fc_params": [(12, 0.1)]}
    lm = loading.load_model(PARTICLENET, loading.load_data_config(dc_path), weights=None, options=opts)
    x = _inputs(dc_path, lm.input_names, batch, p)
    edge1 = 2 * p * k * (2 * F * 8 + 8 * 8) + 2 * p * F * 8 + 2 * p * p * 2  # convs + shortcut + kNN on (eta, phi)
    edge2 = 2 * p * k * (2 * 8 * 16 + 16 * 16) + 2 * p * 8 * 16 + 2 * p * p * 8  # kNN on 8 features
    head = 2 * (16 * 12 + 12 * C)
    expected = batch * (edge1 + edge2 + head)
    ours = flops.count_flops(lm.model, x).matmul_flops
    assert ours == expected
    tfc = flops.torch_flop_count(lm.model, x)
    assert abs(tfc["flops"] - expected) / expected < 0.01


def test_flops_method_extends_the_counter() -> None:
    class Custom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ x.transpose(-1, -2)

        def flops(self, args: tuple, kwargs: dict, out: torch.Tensor) -> int:
            b, n, d = args[0].shape
            return 2 * b * n * n * d

    model = torch.nn.Sequential(torch.nn.Linear(5, 6), Custom())
    rep = flops.count_flops(model, [torch.randn(2, 3, 5)])
    assert rep.matmul_flops == 2 * 2 * 3 * 5 * 6 + 2 * 2 * 3 * 3 * 6
    assert rep.by_type == {"Linear": 2 * 2 * 3 * 5 * 6, "Custom": 2 * 2 * 3 * 3 * 6}
