"""The bucketed training path (weaver_ext/bucketed.py) gives the padded path's loss, gradients and optimizer steps.

Same weights, same real jets, same seed (so weaver's SequenceTrimmer cuts both batches the same way), dropout off
(dropout masks are drawn per shape, like any other batch). Tolerances, fp32:
- the loss within 1e-5 relative;
- every parameter gradient within 1e-5 of that tensor's largest gradient. Some biases have a gradient that is zero in
  exact arithmetic, because a BatchNorm follows them with only linear maps in between and removes any constant (the
  pair embedding's Conv1d biases and its input BatchNorm's bias; found from the module structure). Their computed
  gradients are rounding noise of sums over ~10^5 pairs, seen up to 2e-6 of the model's largest gradient, so both
  paths are checked to be at most 1e-5 of it there (the float64 tests check them at 1e-9);
- after two optimizer steps (SGD with momentum) every weight within 1e-6.
DSA top-k selects discrete keys: rounding differences of 1e-7 between batch shapes can flip near-tied keys in fp32,
so its check runs in float64, where the match is 1e-9; so does differential attention (see its test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import JETCLASS_CONFIGS
from tests.helpers import weaver_batch
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0, "activation_dropout": 0.0, "drop_path": 0.0}
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
ZERO_GRAD_LEVEL = 1e-5  # of the model's largest gradient: the rounding noise allowed on an exact zero
WEIGHT_ATOL = 1e-6


@pytest.fixture(scope="module")
def jets(jet_files):
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_full.yaml", max_jets=400)
    perm = torch.randperm(len(batch["_label_"]), generator=torch.Generator().manual_seed(2))[:96]
    batch = {k: v[perm] for k, v in batch.items()}
    lengths = batch["pf_mask"].sum(dim=(1, 2))
    assert lengths.max() - lengths.min() > 20  # real jets: the buckets really are shorter than the batch
    return batch


def _pair(options: dict, dtype: torch.dtype = torch.float32) -> dict[str, ParticleTransformer]:
    """A padded and a bucketed model with the same weights, both past the trimmer's warm-up (so it trims)."""
    torch.manual_seed(0)
    models = {}
    for path in ("padded", "bucketed"):
        models[path] = ParticleTransformer(part_config(input_dim=17, num_classes=10, training_path=path,
                                                       bucket_size=16, **NO_DROPOUT, **options))
    models["bucketed"].load_state_dict(models["padded"].state_dict())
    for model in models.values():
        model.to(dtype).train()
        model.trimmer._counter.fill_(model.trimmer.warmup_steps)
    return models


def _loss(model: ParticleTransformer, jets: dict, dtype: torch.dtype, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the trimmer's random cut, identical for both paths
    out = model(*(jets[k].to(dtype) for k in ("pf_features", "pf_vectors", "pf_mask")))
    loss = F.cross_entropy(out, jets["_label_"])
    aux = model.pop_aux_loss() if hasattr(model, "pop_aux_loss") else None  # weaver-core's ParT has none
    return loss if aux is None else loss + aux


def _loss_and_grads(model, jets, dtype=torch.float32, seed=5):
    loss = _loss(model, jets, dtype, seed)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _cancelled_bias_names(model: ParticleTransformer) -> set[str]:
    """The pair embedding's biases whose gradient is zero in exact arithmetic: a BatchNorm follows them with only
    1x1 convolutions (linear maps) in between, and removes any constant shift. With self pairs, so is the last
    layer's bias: it adds one constant per head to every real key of every real query, which softmax ignores."""
    if model.pair_embed is None:
        return set()
    layers = list(model.pair_embed.embed)
    last = max(k for k, m in enumerate(layers) if isinstance(m, torch.nn.Conv1d))
    names = {f"pair_embed.embed.{last}.bias"} if not model.pair_embed.remove_self_pair else set()
    for k, module in enumerate(layers):
        if getattr(module, "bias", None) is None:
            continue
        after = next((m for m in layers[k + 1:] if not isinstance(m, torch.nn.Conv1d)), None)
        if isinstance(after, torch.nn.BatchNorm1d):
            names.add(f"pair_embed.embed.{k}.bias")
    return names


def _assert_same_gradients(expected: dict, got: dict, rtol: float, zero: set[str] = frozenset()) -> None:
    assert expected.keys() == got.keys()
    scale = max(float(g.abs().max()) for g in expected.values())
    zero = zero & expected.keys()
    for name in zero:  # both paths' values are rounding noise of an exact zero
        assert float(expected[name].abs().max()) <= ZERO_GRAD_LEVEL * scale, name
        assert float(got[name].abs().max()) <= ZERO_GRAD_LEVEL * scale, name
    for name, g in expected.items():
        diff = float((got[name] - g).abs().max())
        limit = ZERO_GRAD_LEVEL * scale if name in zero else rtol * float(g.abs().max())
        assert diff <= limit, f"{name}: max |d grad| {diff:.3g} > {limit:.3g}"


@pytest.mark.parametrize("options", [
    {},
    {"value_residual": True, "num_registers": 2, "num_layers": 3},
    {"grad_checkpoint": True, "num_layers": 3},
], ids=["part", "value-residual+registers", "grad-checkpoint"])
def test_loss_and_gradients_match_the_padded_path(jets, options):
    models = _pair(options)
    loss_p, grads_p = _loss_and_grads(models["padded"], jets)
    loss_b, grads_b = _loss_and_grads(models["bucketed"], jets)
    assert abs(float(loss_b - loss_p)) <= LOSS_RTOL * abs(float(loss_p))
    _assert_same_gradients(grads_p, grads_b, GRAD_RTOL, _cancelled_bias_names(models["padded"]))


def test_part_v3_6_matches_the_padded_path_in_float64(jets):
    """ParT v3.6 (global token, NormFormer scales): its per-head ``c_attn`` scalars sum h * dL/dh over every token
    and dimension with both signs; in fp32 that cancellation leaves up to 1.2e-5 of their largest entry between two
    bucketings of the same batch (as differential attention's lambda below). In float64 everything agrees to 1e-9."""
    models = _pair({"part_version": 3.6}, torch.float64)
    loss_p, grads_p = _loss_and_grads(models["padded"], jets, torch.float64)
    loss_b, grads_b = _loss_and_grads(models["bucketed"], jets, torch.float64)
    assert abs(float(loss_b - loss_p)) <= 1e-9 * abs(float(loss_p))
    _assert_same_gradients(grads_p, grads_b, 1e-9, _cancelled_bias_names(models["padded"]))


@pytest.mark.parametrize("options", [
    {"attention": "dsa", "num_layers": 3, "sparsity_ratio": 0.3, "sparsity_weight": 0.1, "entropy_weight": 0.01},
    {"attention": "dsa", "dsa_maps": "differential", "num_layers": 3, "sparsity_ratio": 0.3, "sparsity_weight": 0.1},
], ids=["topk", "topk-differential-maps"])
def test_dsa_topk_matches_the_padded_path_in_float64(jets, options):
    models = _pair(options, torch.float64)
    loss_p, grads_p = _loss_and_grads(models["padded"], jets, torch.float64)
    loss_b, grads_b = _loss_and_grads(models["bucketed"], jets, torch.float64)
    assert models["padded"].aux_channel.last_terms  # the auxiliary DSA terms are part of both losses
    assert models["bucketed"].aux_channel.last_terms == pytest.approx(models["padded"].aux_channel.last_terms,
                                                                     rel=1e-9)
    assert abs(float(loss_b - loss_p)) <= 1e-9 * abs(float(loss_p))
    _assert_same_gradients(grads_p, grads_b, 1e-9, _cancelled_bias_names(models["padded"]))


def test_differential_attention_matches_the_padded_path_in_float64(jets):
    """In fp32 the gradient of lambda (one scalar per layer, summed over every token with both signs) differs by up to
    1.3e-5 of its largest entry: cancellation in the sum. In float64 everything agrees to 1e-9."""
    models = _pair({"attention": "differential", "num_layers": 3}, torch.float64)
    loss_p, grads_p = _loss_and_grads(models["padded"], jets, torch.float64)
    loss_b, grads_b = _loss_and_grads(models["bucketed"], jets, torch.float64)
    assert abs(float(loss_b - loss_p)) <= 1e-9 * abs(float(loss_p))
    _assert_same_gradients(grads_p, grads_b, 1e-9, _cancelled_bias_names(models["padded"]))


def test_two_optimizer_steps_give_the_same_weights(jets):
    """SGD with momentum and weight decay: the update is proportional to the gradient, so equal gradients give equal
    weights (every parameter, the zero-gradient biases included). Adam is not used here: its first step is
    lr * sign(g) per element, which turns the rounding noise of gradients that are ~0 into full-size steps."""
    models = _pair({})
    initial = {k: w.clone() for k, w in models["padded"].state_dict().items()}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
                  for k, m in models.items()}
    for step in range(2):
        for path, model in models.items():
            optimizers[path].zero_grad(set_to_none=True)
            _loss(model, jets, torch.float32, seed=10 + step).backward()
            optimizers[path].step()
    state_p, state_b = models["padded"].state_dict(), models["bucketed"].state_dict()
    moved = 0.0
    for name, w in state_p.items():
        if not w.is_floating_point():
            continue
        diff = float((state_b[name] - w).abs().max())
        assert diff <= WEIGHT_ATOL, f"{name}: max |d weight| {diff:.3g} after two optimizer steps"
        moved = max(moved, float((w - initial[name]).abs().max()))
    assert moved > 1e-3  # the steps really changed the weights


def test_the_bucketed_path_runs_only_where_it_is_exact():
    """The DSA indexer (its pair BatchNorms see the batch's selected pairs) and extra pair inputs stay padded."""
    x = torch.zeros(2, 17, 5)
    model = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=2)).train()
    assert model.cfg.inference.training_path == "auto" and model.use_bucketed_training(x, None, None)  # CPU
    assert not model.use_bucketed_training(x, torch.zeros(1), None)
    indexer = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=2, attention="dsa",
                                              dsa_mode="indexer")).train()
    assert not indexer.use_bucketed_training(x, None, None)
    padded = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=2, training_path="padded"))
    assert not padded.train().use_bucketed_training(x, None, None)
    assert not model.eval().use_bucketed_training(x, None, None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_runs_the_bucketed_path_close_to_the_padded_one(jets, dtype):
    """``--use-amp``: under autocast both paths round differently (per-bucket shapes), so the check is closeness of
    the loss (2% relative) and finite gradients everywhere, not equality."""
    models = _pair({"num_layers": 2})
    losses = {}
    for path, model in models.items():
        with torch.autocast("cpu", dtype=dtype):
            loss = _loss(model, jets, torch.float32, seed=5)
        loss.backward()
        losses[path] = float(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), path
    assert abs(losses["bucketed"] - losses["padded"]) <= 0.02 * abs(losses["padded"])


@pytest.mark.parametrize("path", ["padded", "bucketed"])
def test_training_matches_weaver_core(jets, path):
    """Both training paths compute weaver's sparse ``PairEmbed`` as matrix products on the real pairs
    (``bucketed.real_pair_elements``); against weaver-core 0.5.3's ParT itself (same weights, same trimmer cut):
    - float64: the loss and every gradient within 1e-9 (the same function);
    - fp32: the loss within 1e-5 and every gradient within 1e-4 of its tensor's largest entry. Different kernels sum
      in different orders: the pair embedding's gradients are sums over ~10^5 pairs of ill-conditioned kinematics
      (ln m^2 of collinear pairs) that a 1x1 convolution and a matrix product reduce differently (up to 6e-5), and
      the per-head ``c_attn`` scalars sum over every token with both signs (up to 1.2e-5)."""
    from profiling.bench import paired_part
    from profiling.bench_train import NO_DROPOUT as WEAVER_NO_DROPOUT

    torch.manual_seed(0)
    reference, ours = paired_part(17, 10, part_version=1.0, options={"training_path": path, "bucket_size": 16,
                                                                     **WEAVER_NO_DROPOUT},
                                  block_params=dict(WEAVER_NO_DROPOUT))
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        results = {}
        for name, model in (("weaver", reference), ("ours", ours)):
            model.to(dtype).train()
            model.trimmer._counter.fill_(model.trimmer.warmup_steps)
            results[name] = _loss_and_grads(model, jets, dtype)
        (loss_w, grads_w), (loss_o, grads_o) = results["weaver"], results["ours"]
        assert abs(float(loss_o - loss_w)) <= (rtol if dtype == torch.float64 else LOSS_RTOL) * abs(float(loss_w))
        _assert_same_gradients(grads_w, grads_o, rtol, _cancelled_bias_names(ours))


@pytest.mark.slow
def test_float64_adamw_steps_follow_weaver_core(jets):
    """Training dynamics, not only one gradient: 6 AdamW steps (lr 1e-3) of our default ParT (bucketed) and of
    weaver-core's, from the same weights on the same batch, dropout off, in float64: every step's loss agrees within
    1e-10. In fp32 AdamW amplifies rounding to ~1e-4 within a few steps (docs/benchmarks.md), so the dynamics are
    compared where rounding cannot hide a difference."""
    from profiling.bench import paired_part
    from profiling.bench_train import NO_DROPOUT as WEAVER_NO_DROPOUT

    torch.manual_seed(0)
    reference, ours = paired_part(17, 10, part_version=1.0, options={"bucket_size": 16, **WEAVER_NO_DROPOUT},
                                  block_params=dict(WEAVER_NO_DROPOUT))
    losses = {}
    for name, model in (("weaver", reference), ("ours", ours)):
        model.double().train()
        model.trimmer._counter.fill_(model.trimmer.warmup_steps)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[name] = []
        for step in range(6):
            loss = _loss(model, jets, torch.float64, seed=100 + step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[name].append(float(loss))
    assert losses["ours"] == pytest.approx(losses["weaver"], rel=1e-10)
    assert losses["ours"][-1] < losses["ours"][0]  # the steps really train
