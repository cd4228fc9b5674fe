"""profiling.dsa_recall on real generated jets: both recalls are 1 where they must be, bounded elsewhere."""

from __future__ import annotations

import pytest

from profiling.dsa_recall import indexer_recall, main
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT

NETWORK = REPO_ROOT / "networks" / "dsa_part.py"
SMALL = {"embed_dims": (16, 16), "pair_embed_dims": (8,), "num_heads": 2, "num_layers": 2, "num_cls_layers": 1,
         "dsa_mode": "indexer"}


def _recall(jet_files, permute=False, **options):
    return indexer_recall(jet_files[:3], network=NETWORK, data_config=JETCLASS_CONFIGS / "JetClass_kin.yaml",
                          weights=None, options={**SMALL, **options}, events=6, permute=permute)


@pytest.mark.parametrize(("permute", "prior"), [(False, "none"), (True, "none"), (False, "pair")],
                         ids=["input_order", "permuted", "pair_prior"])
def test_keeping_every_key_recalls_everything(jet_files, permute, prior):
    """With the pair prior the dense attention is measured with the dense pair bias the model built."""
    result = _recall(jet_files, permute=permute, sparsity_ratio=1.0, indexer_prior=prior)
    assert result["permuted"] is permute
    assert set(result["layers"]) == {"layer0", "layer1"}
    for values in result["layers"].values():
        assert values["selection_recall"] == pytest.approx(1.0, abs=1e-6)
        assert values["attention_recall"] == pytest.approx(1.0, abs=1e-6)
        assert values["attention_mass_ratio"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("prior", ["none", "angle"])
def test_two_stage_selection_is_measured_against_the_exhaustive_one(jet_files, prior):
    """Blocks of 4 keys, 2 per query: the two-stage path runs on jets and can only lose keys; with blocks covering
    every key it is exhaustive again (selection recall 1)."""
    partial = _recall(jet_files, sparsity_ratio=0.25, indexer_block_size=4, indexer_blocks=2, indexer_prior=prior)
    full = _recall(jet_files, sparsity_ratio=0.25, indexer_block_size=4, indexer_blocks=64, indexer_prior=prior)
    for layer, values in partial["layers"].items():
        assert 0.0 < values["selection_recall"] <= 1.0
        assert 0.0 <= values["attention_recall"] <= 1.0
        assert 0.0 < values["attention_mass_ratio"] <= 1.0 + 1e-6
        assert full["layers"][layer]["selection_recall"] == pytest.approx(1.0, abs=1e-6)


def test_a_network_without_indexer_layers_is_one_line_error(jet_files, capsys):
    with pytest.raises(SystemExit, match="no DSA indexer layer"):
        main([str(jet_files[0]), "--network", str(REPO_ROOT / "networks" / "part.py"), "--data-config",
              str(JETCLASS_CONFIGS / "JetClass_kin.yaml"), "--events", "2"])
