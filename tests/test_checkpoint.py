"""Checkpoints load with weights_only=True; mismatches name the key; pickled code is refused."""

from __future__ import annotations

import pytest
import torch

from weaver_ext.checkpoint import CheckpointError, load_checkpoint
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config


def _tiny(**changes) -> ParticleTransformer:
    cfg = dict(input_dim=7, num_classes=10, num_layers=1, num_cls_layers=1, embed_dims=(32, 32),
               pair_embed_dims=(16,), num_heads=2)
    cfg.update(changes)
    return ParticleTransformer(part_config(**cfg))


def test_roundtrip(tmp_path):
    src, dst = _tiny(), _tiny()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    load_checkpoint(dst, tmp_path / "w.pt")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_wrong_key_is_named(tmp_path):
    state = _tiny().state_dict()
    state["blocks.0.attn.in_proj.weight_renamed"] = state.pop("blocks.0.attn.in_proj.weight")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"missing key 'blocks\.0\.attn\.in_proj\.weight'"):
        load_checkpoint(_tiny(), tmp_path / "w.pt")


def test_unexpected_key_is_named(tmp_path):
    torch.save(_tiny(num_layers=2).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"unexpected key 'blocks\.1\."):
        load_checkpoint(_tiny(), tmp_path / "w.pt")


def test_wrong_shape_is_named(tmp_path):
    torch.save(_tiny(input_dim=17).state_dict(), tmp_path / "w.pt")
    expected = r"key 'embed\.input_bn\.weight' has shape \(17,\), the model expects \(7,\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(_tiny(), tmp_path / "w.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"w": torch.zeros(1), "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        load_checkpoint(_tiny(), tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out
