"""Run at commit 333c65a (before the attention registry): writes the fixtures of tests/test_legacy_checkpoints.py.

Usage (from a checkout of that commit): python make_fixtures.py OUT_DIR
"""
import sys
from pathlib import Path

import torch
from weaver.utils.data.config import DataConfig
from weaver.utils.import_tools import import_module

ROOT = Path.cwd()
OUT = Path(sys.argv[1])
JET = DataConfig.load(str(ROOT / "data/JetClass/JetClass_kin.yaml"), load_observers=False)
TRK = DataConfig.load(str(ROOT / "data/Tracks/tracks.yaml"), load_observers=False)
SMALL = {"embed_dims": [16, 16], "pair_embed_dims": [8, 8], "num_heads": 2, "num_layers": 2, "num_cls_layers": 1,
         "dropout": 0.0, "attn_dropout": 0.0, "activation_dropout": 0.0, "trim": False}
CASES = {
    "part": ("part.py", JET, {**SMALL}),
    "diff_part": ("diff_part.py", JET, {**SMALL, "diff_cls_blocks": True}),
    "transformer_diff": ("transformer.py", JET, {**SMALL, "attention": "differential", "value_residual": True}),
    "dsa_topk": ("dsa_part.py", JET, {**SMALL, "dsa_enabled": True, "sparsity_ratio": 0.5, "sparsity_weight": 0.1,
                                      "entropy_weight": 0.01}),
    "dsa_indexer": ("dsa_part.py", JET, {**SMALL, "dsa_enabled": True, "dsa_mode": "indexer", "topk": 5,
                                         "dsa_layers": [1]}),
    "track_dense": ("track_transformer.py", TRK, {"embed_dims": [16, 16], "pair_embed_dims": [8, 8], "num_heads": 2,
                                                  "num_layers": 2, "augment_azimuth": False}),
    "track_dsa": ("track_transformer.py", TRK, {"embed_dims": [16, 16], "pair_embed_dims": [8, 8], "num_heads": 2,
                                                "num_layers": 2, "augment_azimuth": False, "attention": "dsa",
                                                "topk": 6}),
}

def jet_inputs(g, batch=5, length=20):
    n = torch.tensor([20, 13, 7, 1, 16])
    mask = (torch.arange(length)[None] < n[:, None]).float().unsqueeze(1)
    p = torch.randn(batch, 3, length, generator=g) * torch.tensor([20.0, 20.0, 40.0]).view(1, 3, 1)
    e = p.norm(dim=1, keepdim=True) + 0.1
    v = torch.cat((p, e), 1) * mask
    pts = torch.randn(batch, 2, length, generator=g) * 0.3 * mask
    fts = torch.randn(batch, 7, length, generator=g) * mask
    return [pts, fts, v, mask]

def track_inputs(g, batch=3, length=30):
    n = torch.tensor([30, 17, 9])
    mask = (torch.arange(length)[None] < n[:, None]).float().unsqueeze(1)
    pts = torch.randn(batch, 4, length, generator=g) * mask
    nf = len(TRK.input_dicts["hit_features"])
    fts = torch.randn(batch, nf, length, generator=g) * mask
    return [pts, fts, mask]

for name, (net, dc, opts) in CASES.items():
    torch.manual_seed(0)
    mod = import_module(str(ROOT / "networks" / net), name=f"_legacy_{name}")
    model, _ = mod.get_model(dc, **opts)
    loss = mod.get_loss(dc, **opts)
    g = torch.Generator().manual_seed(1)
    inputs = jet_inputs(g) if dc is JET else track_inputs(g)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # before the training forward moves BN stats
    model.eval()
    with torch.no_grad():
        out_eval = model(*inputs)
    model.train()
    out_train = model(*inputs)
    if dc is JET:
        label = torch.tensor([0, 1, 2, 3, 4])
    else:
        label = torch.randn(inputs[0].size(0), 6, generator=g)
    total = loss(out_train, label)
    torch.save({"network": net, "options": opts, "state": state, "inputs": inputs,
                "eval_output": out_eval, "train_output": out_train.detach(), "label": label,
                "train_loss": total.detach()}, OUT / f"{name}.pt")
    print(name, tuple(out_eval.shape), float(total.detach()))
