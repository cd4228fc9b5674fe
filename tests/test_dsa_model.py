"""DSA-ParT model: dense limit, padding, one-particle jets, schedule, aux-loss gradients, N x k memory."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import JETCLASS_CONFIGS
from tests.helpers import weaver_batch
from weaver_ext import dsa
from weaver_ext.dsa import SparsityConfig, kept_fraction, keys_per_query, topk_keep_mask
from weaver_ext.dsa import indexer as dsa_indexer
from weaver_ext.dsa.indexer import blocks_per_query, indexer_scores
from weaver_ext.losses import AuxLoss
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

TINY = dict(input_dim=7, num_classes=10, embed_dims=(32, 32), pair_embed_dims=(16, 16), num_heads=4, num_layers=2,
            num_cls_layers=1)


def _jets(n: int = 16, length: int = 24, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random particles with physical four-vectors; jet b has length - b real particles (at least 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, length, generator=g)
    p = torch.randn(n, 3, length, generator=g) * 20
    v = torch.cat((p, (p.square().sum(1, keepdim=True) + 0.1).sqrt()), dim=1)
    n_real = (length - torch.arange(n)).clamp(min=1)
    mask = (torch.arange(length)[None, :] < n_real[:, None]).float().unsqueeze(1)
    return x * mask, v * mask, mask


MODES = {"topk": {"dsa_mode": "topk"}, "indexer": {"dsa_mode": "indexer"},
         "indexer_prior": {"dsa_mode": "indexer", "indexer_prior": "angle"},
         "indexer_pair": {"dsa_mode": "indexer", "indexer_prior": "pair"}}


def _model(**opts: object) -> ParticleTransformer:
    torch.manual_seed(3)
    return ParticleTransformer(part_config(**TINY, **opts))


def test_disabled_is_exactly_part():
    torch.manual_seed(1)
    part = ParticleTransformer(part_config(**TINY)).eval()
    dsa = _model(dsa_enabled=False).eval()
    assert list(dsa.state_dict()) == list(part.state_dict())
    dsa.load_state_dict(part.state_dict(), strict=True)
    x, v, mask = _jets()
    with torch.no_grad():
        assert torch.equal(dsa(x, v, mask), part(x, v, mask))


@pytest.fixture(scope="module")
def real_jets(jet_files) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_kin.yaml", max_jets=48)
    return batch["pf_features"], batch["pf_vectors"], batch["pf_mask"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keep", ["ratio", "topk"])
def test_k_equal_n_reproduces_dense_part(real_jets, mode, keep):
    """Keeping every real key gives dense ParT (same weights) within 1e-5 on real jets."""
    args = real_jets
    torch.manual_seed(1)
    part = ParticleTransformer(part_config(**TINY, for_inference=True)).eval()
    opts = {"sparsity_ratio": 1.0} if keep == "ratio" else {"topk": 128}
    dsa = _model(dsa_enabled=True, **MODES[mode], for_inference=True, **opts).eval()
    missing, unexpected = dsa.load_state_dict(part.state_dict(), strict=False)
    assert not unexpected and all(k == "dsa_step" or ".indexer." in k for k in missing)
    with torch.no_grad():
        expected, got = part(*args), dsa(*args)
    assert (got - expected).abs().max().item() <= 1e-5


def test_topk_keep_mask_never_selects_padding_and_keeps_k():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 10, 10, generator=g) * 100
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[1, 4:] = True
    pad[2, 1:] = True
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    n_real = (~pad).sum(-1)
    kb = keys_per_query(n_real, ratio=0.5, topk=None)
    assert kb.tolist() == [5, 2, 1]
    keep = topk_keep_mask(scores, kb, pad)
    assert not (keep & pad[:, None, None, :]).any()
    assert torch.equal(keep.sum(-1), kb.view(-1, 1, 1).expand(-1, 2, 10))
    # the kept keys are the highest-scoring ones
    kth = scores.masked_fill(~keep, float("inf")).amin(-1)
    dropped_max = scores.masked_fill(keep, float("-inf")).amax(-1)
    assert (dropped_max <= kth).all()


@pytest.mark.parametrize("mode", MODES)
def test_padded_keys_have_no_influence(mode):
    """Changing padded particles' features/vectors changes nothing for real ones (never selected)."""
    model = _model(dsa_enabled=True, **MODES[mode], sparsity_ratio=0.3, trim=False).eval()
    x, v, mask = _jets()
    x2, v2 = x + 50 * (1 - mask), v + 30 * (1 - mask)
    with torch.no_grad():
        assert torch.allclose(model(x, v, mask), model(x2, v2, mask), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_one_particle_jet_is_finite_with_finite_gradients(mode):
    model = _model(dsa_enabled=True, **MODES[mode], sparsity_ratio=0.05, sparsity_weight=1.0, entropy_weight=1.0)
    x, v, mask = _jets(n=4, length=12)
    mask[0, :, 1:] = 0  # a jet with a single particle
    x, v = x * mask, v * mask
    model.train()
    out = model(x, v, mask)
    loss = out.square().mean() + model.pop_aux_loss()
    loss.backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x, v, mask)).all()


def test_schedules():
    cfg = SparsityConfig(sparsity_ratio=0.4, target_sparsity=0.1, sparsity_steps=10, sparsity_schedule="linear")
    assert [round(kept_fraction(cfg, s), 6) for s in (0, 5, 10, 20)] == [0.4, 0.25, 0.1, 0.1]
    cos = SparsityConfig(**{**cfg.__dict__, "sparsity_schedule": "cosine"})
    assert kept_fraction(cos, 0) == pytest.approx(0.4) and kept_fraction(cos, 10) == pytest.approx(0.1)
    assert kept_fraction(cos, 5) == pytest.approx(0.25)
    const = SparsityConfig(**{**cfg.__dict__, "sparsity_schedule": "constant"})
    assert kept_fraction(const, 7) == 0.4
    assert keys_per_query(torch.tensor([1, 8, 100]), ratio=0.5, topk=16).tolist() == [1, 8, 16]


def test_step_counter_is_persistent_and_counts_training_forwards():
    model = _model(dsa_enabled=True, sparsity_ratio=0.5, target_sparsity=0.25, sparsity_schedule="linear",
                   sparsity_steps=4)
    x, v, mask = _jets(n=2, length=8)
    model.train()
    for _ in range(3):
        model(x, v, mask)
    model.eval()
    with torch.no_grad():
        model(x, v, mask)
    assert int(model.state_dict()["dsa_step"]) == 3
    assert model.current_kept_fraction() == pytest.approx(0.5 - 0.25 * 3 / 4)


@pytest.mark.parametrize("bad", [{"sparsity_ratio": 0.0}, {"target_sparsity": 1.5}, {"topk": 0},
                                 {"dsa_layers": (5,)}, {"dsa_mode": "indexer", "num_registers": 2}])
def test_bad_options_fail_with_a_message(bad):
    with pytest.raises(ValueError, match="option"):
        part_config(**TINY, dsa_enabled=True, **bad)


@pytest.mark.parametrize("mode", ["topk", "indexer"])
@pytest.mark.parametrize("term", ["sparsity_weight", "entropy_weight"])
def test_regulariser_reaches_the_gradient_through_the_weaver_loss(mode, term):
    """The loss module weaver uses (AuxLoss) adds the term: its gradient differs from cross-entropy's alone.

    Indexer mode needs distillation or sparsity (else its scorer gets no gradient); for the entropy term there,
    distillation stays on and only non-indexer parameters are compared (distillation trains the indexer alone).
    """
    entropy_with_indexer = mode == "indexer" and term == "entropy_weight"
    model = _model(dsa_enabled=True, dsa_mode=mode, sparsity_ratio=0.3, distill_weight=float(entropy_with_indexer),
                   **{term: 1.0}).train()
    loss_func = AuxLoss().bind(model)
    x, v, mask = _jets()
    label = torch.arange(len(x)) % 10
    logits = model(x, v, mask)
    params = [p for n, p in model.named_parameters()
              if n.startswith("blocks.0.attn") and not (entropy_with_indexer and "indexer" in n)]
    g_ce = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, label), params, retain_graph=True,
                               allow_unused=True)
    g_all = torch.autograd.grad(loss_func(logits, label), params, allow_unused=True)
    diff = sum(float(((a if a is not None else 0) - b).abs().sum()) for a, b in zip(g_ce, g_all, strict=True)
               if b is not None)
    assert diff > 0
    assert loss_func.running["aux_steps"] == 1 and loss_func.running["aux"] > 0


def test_indexer_distillation_trains_only_the_indexer():
    model = _model(dsa_enabled=True, dsa_mode="indexer", sparsity_ratio=0.3, distill_weight=1.0).train()
    x, v, mask = _jets()
    model(x, v, mask)
    model.pop_aux_loss().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".indexer." in n)
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if ".indexer." not in n)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("prior", ["none", "angle"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("block", [16, 64], ids=["two-stage", "exhaustive"])
def test_indexer_never_materialises_n_by_n(training, block, prior, monkeypatch):
    """With the indexer's chunk budget below N x N, no op (forward or backward) returns an N x N-sized tensor."""
    n, k = 512, 4
    monkeypatch.setattr(dsa_indexer, "INDEXER_CHUNK_ELEMENTS", 1 << 14)
    model = _model(dsa_enabled=True, dsa_mode="indexer", topk=k, sparsity_weight=1.0, trim=False,
                   indexer_block_size=block, indexer_prior=prior)
    two_stage = blocks_per_query(k, block_size=block, blocks=None) * block < n
    assert two_stage == (block == 16)
    model.train(training)
    x, v, mask = _jets(n=1, length=n)
    with _LargestTensor() as probe:
        out = model(x, v, mask)
        if training:
            (out.sum() + model.pop_aux_loss()).backward()
    assert torch.isfinite(out).all()
    # the biggest tensors are N x k x embed (gathered keys/values, pair MLP): 512 * 4 * 32 = N * N / 4
    assert probe.largest <= n * k * TINY["embed_dims"][-1], probe.largest
    if training:  # the aux terms (distillation, sparsity through the log-sum-exp) reach the indexer
        grads = [p.grad for name, p in model.named_parameters() if ".indexer." in name]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_training_step_is_finite(mode):
    """--use-amp style mixed precision (CPU autocast bf16 here) through forward, AuxLoss and backward."""
    model = _model(dsa_enabled=True, **MODES[mode], sparsity_ratio=0.3, sparsity_weight=1.0, entropy_weight=0.1)
    model.train()
    x, v, mask = _jets(n=4, length=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = AuxLoss().bind(model)(model(x, v, mask), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _indexer_inputs(*, batch: int = 2, heads: int = 2, queries: int = 8, length: int = 200, dim: int = 8,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random indexer projections with head weights of both signs and a padded tail in the second jet."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, queries, dim, generator=g)
    k = torch.randn(batch, length, dim, generator=g)
    w = torch.randn(batch, heads, queries, 1, generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[1, length - 37:] = True
    return q, k, w, pad


@pytest.mark.parametrize("with_prior", [False, True], ids=["relu_heads", "with_angular_prior"])
def test_block_score_bound_is_an_upper_bound_of_every_key_in_the_block(with_prior):
    """The first selection stage may only drop a block when no key inside it could score higher."""
    q, k, w, pad = _indexer_inputs()
    block = 16
    kmax, kmin, empty = dsa.block_key_bounds(*dsa.key_blocks(k, pad, block))
    prior = bound_prior = None
    if with_prior:  # beta(i) u(i) and unit u(j), as LightningIndexer.prior_terms builds them
        g = torch.Generator().manual_seed(5)
        u = torch.nn.functional.normalize(torch.randn(k.size(0), k.size(1), 3, generator=g), dim=-1)
        pq = torch.rand(q.size(0), q.size(2), 1, generator=g) * 4 * u[:, :q.size(2)]
        prior = (pq, u)
        pmax, pmin = dsa.block_key_bounds(*dsa.key_blocks(u, pad, block))[:2]
        bound_prior = (pq, pmax, pmin)
    bound = dsa.block_score_bound(q, w, kmax, kmin, empty, prior=bound_prior)  # (B, c, nb)
    exact = indexer_scores(q, k, w, pad, prior)  # (B, c, N), -inf on padding
    nb = bound.size(-1)
    padded = torch.nn.functional.pad(exact, (0, nb * block - exact.size(-1)), value=float("-inf"))
    block_max = padded.view(*exact.shape[:2], nb, block).amax(-1)
    assert torch.all(bound >= block_max - 1e-5)
    assert torch.equal(torch.isinf(bound), torch.isinf(block_max))  # -inf exactly for the all-padding blocks
    assert empty[1, -1] and not empty[0].any()


def test_two_stage_selection_is_exact_when_blocks_are_coherent():
    """Keys that cluster by block (as hits ordered along a detector do): two stages find the exhaustive top-k."""
    g = torch.Generator().manual_seed(1)
    length, block, dim, k_keep = 512, 32, 8, 6
    centres = torch.randn(length // block, dim, generator=g) * 3
    keys = (centres.repeat_interleave(block, 0) + 0.01 * torch.randn(length, dim, generator=g)).unsqueeze(0)
    indexer = dsa.LightningIndexer(32, heads=2, dim=dim)
    x = torch.randn(1, length, 32, generator=g)
    with torch.no_grad():
        iq, _, iw = indexer.project(x)
        # feed the clustered keys through the real selection by making k_proj return them
        indexer.k_proj = _Constant(keys)
        selection = dsa.select_keys(indexer, x, None, k_keep, block_size=block)
        idx, found = selection.idx, selection.found
        scores = indexer_scores(iq, keys, iw, None)  # (1, N, N)
    assert blocks_per_query(k_keep, block_size=block, blocks=None) * block < length  # the two-stage path ran
    assert found.all()
    # compare the scores of the chosen keys (ReLU makes exact ties common, so indices may differ among equals)
    chosen = scores.gather(-1, idx).sort(-1, descending=True).values
    best = scores.topk(k_keep, dim=-1).values
    torch.testing.assert_close(chosen, best, rtol=0, atol=1e-6)
    assert (best[..., 0] > 0).float().mean() > 0.5  # not a vacuous all-zero comparison


class _Constant(torch.nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


@pytest.mark.parametrize("prior", ["none", "angle"])
def test_two_stage_and_chunked_inference_agree_with_one_chunk(prior, monkeypatch):
    """Query chunking of the sparse attention and pair bias changes nothing (padded tails included)."""
    model = _model(dsa_enabled=True, dsa_mode="indexer", topk=5, trim=False, indexer_block_size=8,
                   indexer_prior=prior).eval()
    x, v, mask = _jets(n=3, length=80)
    with torch.no_grad():
        one_chunk = model(x, v, mask)
        monkeypatch.setattr(dsa_indexer, "INDEXER_CHUNK_ELEMENTS", 700)  # ~5 queries per chunk in both stages
        chunked = model(x, v, mask)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked, one_chunk, rtol=0, atol=1e-6)


def _prior_only_selection(prior: str, k: int, x: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
    """A fresh indexer with its ReLU heads silenced (q = 0), so only ``prior`` scores: the first sparse layer's
    inputs (seen: x, ctx, bias) and the keys ``select_keys`` picks from them."""
    model = _model(dsa_enabled=True, dsa_mode="indexer", topk=k, indexer_prior=prior, trim=False).eval()
    for module in model.modules():
        if isinstance(module, dsa.LightningIndexer):
            torch.nn.init.zeros_(module.q_proj.weight)
            torch.nn.init.zeros_(module.q_proj.bias)
    core = next(m for m in model.modules() if isinstance(m, dsa.IndexerCore))
    seen = {}
    core.register_forward_pre_hook(lambda _m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(x, v, mask)
        sel = dsa.select_keys(core.indexer, seen["x"], ~mask[:, 0].bool(), k, directions=seen["ctx"].directions,
                              pair_bias=seen["bias"] if prior == "pair" else None)
    return seen, sel


def test_angular_prior_alone_selects_the_angular_neighbours():
    """With the ReLU heads silenced, the prior's selection is each particle's k closest momenta in angle (the
    query itself first), ties by index: what a fresh indexer with ``indexer_prior='angle'`` starts from."""
    k = 5
    x, v, mask = _jets(n=3, length=20)
    seen, sel = _prior_only_selection("angle", k, x, v, mask)
    pad = ~mask[:, 0].bool()
    u = torch.nn.functional.normalize(v[:, :3].transpose(1, 2), dim=-1)
    cosines = (u @ u.transpose(1, 2)).masked_fill(pad[:, None, :], float("-inf"))
    expected = cosines.topk(k, dim=-1).values
    chosen = cosines.gather(-1, sel.idx).sort(-1, descending=True).values
    real = ~pad
    torch.testing.assert_close(chosen[real], expected[real], rtol=0, atol=1e-5)
    assert torch.equal(sel.idx[real][:, 0], torch.nonzero(real)[:, 1])  # every particle picks itself first


def test_too_few_candidate_blocks_for_k_are_raised_to_hold_k_keys():
    """``indexer_blocks 1`` of 4 keys with k = 10: the first stage keeps ceil(10 / 4) blocks instead of failing."""
    assert blocks_per_query(10, block_size=4, blocks=1) == 3
    model = _model(dsa_enabled=True, dsa_mode="indexer", topk=10, indexer_block_size=4, indexer_blocks=1,
                   trim=False).eval()
    x, v, mask = _jets(n=2, length=40)
    with torch.no_grad():
        assert torch.isfinite(model(x, v, mask)).all()


def test_pair_prior_alone_selects_the_keys_of_the_largest_mean_pair_bias():
    """With the ReLU heads silenced, a fresh pair prior selects each query's k keys of largest head-mean ParT pair
    bias (the pair bias dense attention adds); its coefficients then train by distillation."""
    k = 5
    x, v, mask = _jets(n=3, length=20)
    seen, sel = _prior_only_selection("pair", k, x, v, mask)
    pad = ~mask[:, 0].bool()
    assert seen["bias"].shape == (3, TINY["num_heads"], 20, 20)  # the dense bias of ParT, as dense attention gets
    mean_bias = seen["bias"].mean(1).masked_fill(pad[:, None, :], float("-inf"))
    expected = mean_bias.topk(k, dim=-1).values
    chosen = mean_bias.gather(-1, sel.idx).sort(-1, descending=True).values
    real = ~pad
    torch.testing.assert_close(chosen[real], expected[real], rtol=0, atol=1e-5)


def test_pair_prior_needs_the_exhaustive_selection():
    """The pair prior reads an N x N bias: with a two-stage selection (long inputs) it is a one-line error."""
    model = _model(dsa_enabled=True, dsa_mode="indexer", topk=2, indexer_prior="pair", trim=False,
                   indexer_block_size=4, indexer_blocks=2).eval()
    x, v, mask = _jets(n=2, length=40)
    with torch.no_grad(), pytest.raises(ValueError, match="indexer_prior='pair' needs the exhaustive selection"):
        model(x, v, mask)


def test_pair_prior_coefficients_train_by_distillation():
    """One training step: the pair prior's coefficients get a finite, non-zero gradient from the aux loss."""
    model = _model(dsa_enabled=True, dsa_mode="indexer", sparsity_ratio=0.3, indexer_prior="pair").train()
    x, v, mask = _jets(n=4, length=16)
    loss = AuxLoss().bind(model)(model(x, v, mask), torch.arange(4))
    loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "pair_proj" in name]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
