"""The training and inference fast paths on CUDA give the reference paths' results (marked ``gpu``).

Same checks and tolerances as their CPU tests (tests/test_bucketed_training.py, tests/test_fast_inference.py), run
on the GPU with TF32 off (cuDNN's Conv1d, used by the pair embedding, allows TF32 by default, which rounds to 10
mantissa bits):
- bucketed training against padded training: loss within 1e-5 relative, every gradient within 1e-5 of its tensor's
  largest entry (the BatchNorm-cancelled biases at 1e-6 of the model's largest gradient);
- DSA top-k in float64: loss and gradients within 1e-9;
- the fast inference path against the standard eval forward: max |d softmax| <= 1e-5 (fp32), <= 0.05 (bf16);
- autocast bf16 training: both paths finite and their losses within 2%.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_bucketed_training import (
    LOSS_RTOL,
    _assert_same_gradients,
    _cancelled_bias_names,
    _loss,
    _loss_and_grads,
    _pair,
    jets,  # noqa: F401  (the module fixture: real jets through weaver's preprocessing)
)
from tests.test_fast_inference import SOFTMAX_TOL, model_and_batch  # noqa: F401
from weaver_ext.fast_inference import FastInferenceConfig, FastParT

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _on_cuda(batch: dict) -> dict:
    return {k: v.to(CUDA) for k, v in batch.items()}


def _pair_on_cuda(options: dict, dtype: torch.dtype = torch.float32) -> dict:
    return {path: model.to(CUDA) for path, model in _pair(options, dtype).items()}


@pytest.mark.parametrize("options", [{}, {"value_residual": True, "num_registers": 2, "num_layers": 3}],
                         ids=["part", "value-residual+registers"])
def test_bucketed_training_matches_the_padded_path_on_cuda(jets, options):  # noqa: F811
    batch = _on_cuda(jets)
    models = _pair_on_cuda(options)
    assert models["bucketed"].use_bucketed_training(batch["pf_features"], None, None)
    loss_p, grads_p = _loss_and_grads(models["padded"], batch)
    loss_b, grads_b = _loss_and_grads(models["bucketed"], batch)
    assert abs(float(loss_b - loss_p)) <= LOSS_RTOL * abs(float(loss_p))
    _assert_same_gradients(grads_p, grads_b, 1e-5, _cancelled_bias_names(models["padded"]))


def test_dsa_topk_bucketed_training_matches_the_padded_path_on_cuda_in_float64(jets):  # noqa: F811
    batch = _on_cuda(jets)
    models = _pair_on_cuda({"attention": "dsa", "num_layers": 3, "sparsity_ratio": 0.3, "sparsity_weight": 0.1},
                           torch.float64)
    loss_p, grads_p = _loss_and_grads(models["padded"], batch, torch.float64)
    loss_b, grads_b = _loss_and_grads(models["bucketed"], batch, torch.float64)
    assert abs(float(loss_b - loss_p)) <= 1e-9 * abs(float(loss_p))
    _assert_same_gradients(grads_p, grads_b, 1e-9, _cancelled_bias_names(models["padded"]))


def test_autocast_bf16_training_on_cuda_stays_close(jets):  # noqa: F811
    batch = _on_cuda(jets)
    models = _pair_on_cuda({"num_layers": 2})
    losses = {}
    for path, model in models.items():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = _loss(model, batch, torch.float32, seed=5)
        loss.backward()
        losses[path] = float(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), path
    assert abs(losses["bucketed"] - losses["padded"]) <= 0.02 * abs(losses["padded"])


@pytest.mark.parametrize("dtype,tol", [("fp32", SOFTMAX_TOL), ("bf16", 0.05)])
def test_fast_inference_matches_the_standard_forward_on_cuda(model_and_batch, dtype, tol):  # noqa: F811
    model, b = model_and_batch
    model = model.to(CUDA)
    args = tuple(b[k].to(CUDA) for k in ("pf_features", "pf_vectors", "pf_mask"))
    try:
        with torch.inference_mode():
            expected = model(*args)
            got = FastParT(model, FastInferenceConfig(dtype=dtype))(*args)
    finally:
        model.cpu()  # the module fixture is shared with the CPU tests
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= tol
