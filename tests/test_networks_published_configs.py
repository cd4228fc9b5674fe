"""Every network config in networks/ against every published particle_transformer data config (../shared/).

A config whose inputs the network supports builds and runs a forward pass on inputs preprocessed by that config;
one it cannot support fails with a one-line message that names the network config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from profiling import loading
from tests.conftest import REPO_ROOT

PUBLISHED = REPO_ROOT.parent / "shared" / "reference" / "particle_transformer" / "data"
PUBLISHED_CONFIGS = sorted(PUBLISHED.glob("*/*.yaml"))
NETWORKS = sorted((REPO_ROOT / "networks").glob("*.py"))
# networks that take the hit inputs of data/Tracks/tracks.yaml, not jets: every published jet config is unsupported
HIT_NETWORKS = {"track_transformer.py"}


def test_the_published_configs_are_there() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in PUBLISHED_CONFIGS}
    assert {"JetClass/JetClass_full.yaml", "JetClass/JetClass_kin.yaml", "JetClass/JetClass_kinpid.yaml",
            "TopLandscape/top_kin.yaml", "QuarkGluon/qg_kin.yaml", "QuarkGluon/qg_kinpid.yaml"} <= names
    assert {p.name for p in NETWORKS} >= HIT_NETWORKS | {"part.py", "particlenet.py", "dsa_part.py"}


@pytest.mark.parametrize("network", NETWORKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("data_config", PUBLISHED_CONFIGS, ids=lambda p: p.stem)
def test_network_builds_and_runs_on_published_config(network: Path, data_config: Path) -> None:
    dc = loading.load_data_config(data_config)
    n_classes = len(dc.label_value)
    if network.name in HIT_NETWORKS:
        with pytest.raises(ValueError) as err:
            loading.build_model(network, dc)
        message = str(err.value)
        assert "\n" not in message and network.name in message, message
        return
    torch.manual_seed(0)
    model, info = loading.build_model(network, dc)
    inputs = loading.synthetic_inputs(dc, batch_size=3, multiplicity=(20, 40), seed=1)
    with torch.inference_mode():
        out = model.eval()(*(inputs[k] for k in info["input_names"]))
    assert out.shape == (3, n_classes)  # built for inference: softmax outputs
    assert torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)
