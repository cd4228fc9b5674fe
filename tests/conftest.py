"""Shared fixtures: a small real Pythia sample generated once per test session, and marker handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
JETCLASS_CONFIGS = REPO_ROOT / "data" / "JetClass"
# published ParticleNet weights in shared/ beside the repository root (see ../shared/README.md)
SHARED_MODELS = REPO_ROOT.parent / "shared" / "reference" / "particle_transformer" / "models"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    run_slow = config.getoption("--run-slow")
    has_gpu = torch.cuda.is_available()
    skip_slow = pytest.mark.skip(reason="slow (minutes on 2 CPU cores): run with --run-slow or `make test-all`")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def jet_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real Pythia 8 + FastJet jets, all ten JetClass classes, in JetClass-layout ROOT files.

    40 jets per class in one file per class; generated once per session (a few seconds per class).
    ``WEAVERLAB_TEST_JETS=/path/a.root:/path/b.root`` uses existing JetClass-layout files instead.
    """
    if os.environ.get("WEAVERLAB_TEST_JETS"):
        return [Path(p) for p in os.environ["WEAVERLAB_TEST_JETS"].split(":")]
    from data.generate import generate_dataset

    out = tmp_path_factory.mktemp("jets")
    workers = int(os.environ.get("WEAVERLAB_TEST_WORKERS", "2"))
    return generate_dataset(
        classes="all", jets_per_class=40, out_dir=out, seed=12345, workers=workers, jets_per_file=40, progress=False
    )
