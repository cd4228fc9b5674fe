"""Check network configs under multi-process DistributedDataParallel on CPU (gloo), wrapped exactly as weaver does.

weaver-core 0.5.3 wraps the model in ``DistributedDataParallel(model, find_unused_parameters=False)`` after
``SyncBatchNorm.convert_sync_batchnorm``; a model that leaves a parameter without gradient in a step fails there.
``run_ddp_check`` spawns ``world_size`` processes, trains every case for a few steps on different data per rank and
reports, per case, whether every parameter got a gradient and whether the parameters stay identical across ranks.
CLI: ``python -m tests.ddp_check networks/part.py data/JetClass/JetClass_kin.yaml -o num_layers 1``.
A test tool, not part of the ``weaver_ext`` library: it builds every case through its network config only.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from profiling import loading

__all__ = ["DDPCase", "DDPResult", "main", "run_ddp_check"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DDPCase:
    """One network config with its ``-o`` options (Python values) and the data config it is built for."""

    name: str
    network: str  # path of the network config (relative to the repository root or absolute)
    data_config: str
    options: dict[str, Any] = field(default_factory=dict)
    inputs: str = "jets"  # 'jets' (JetClass layout) or 'tracks' (hit_points, hit_features, hit_mask)
    sync_batchnorm: bool = False  # True: convert BatchNorm to SyncBatchNorm first, as weaver does (CUDA only)


@dataclass
class DDPResult:
    """What one case did under DDP (filled on rank 0)."""

    name: str
    ok: bool
    steps: int = 0
    num_params: int = 0
    missing_grad: list[str] = field(default_factory=list)  # parameters without gradient after a backward
    max_param_diff: float = 0.0  # max |p_rank - p_rank0| over all parameters and steps
    params_changed: bool = False  # the optimizer moved the parameters (the step was not a no-op)
    error: str = ""


def _resolve(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else REPO_ROOT / p)


def _jet_batch(data_config: Any, *, batch_size: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random-but-physical JetClass-layout jets (5-20 particles in 24 slots) and random class labels."""
    inputs = loading.synthetic_inputs(data_config, batch_size=batch_size, multiplicity=(5, 20), seed=seed, length=24)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(data_config.label_value), (batch_size,), generator=gen)
    return [inputs[k] for k in data_config.input_names], labels


def _track_batch(data_config: Any, *, batch_size: int, seed: int,
                 length: int = 32) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random hit events (half to all of ``length`` slots real) and random (entry point, direction) targets."""
    inputs = loading.synthetic_hits(batch_size=batch_size, length=length, hits=(length // 2, length), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.cat((nn.functional.normalize(torch.randn(batch_size, 3, generator=g), dim=1),
                        nn.functional.normalize(torch.randn(batch_size, 3, generator=g), dim=1)), 1)
    return [inputs[k] for k in data_config.input_names], target


def _flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _max_rank_diff(flat: torch.Tensor) -> float:
    """Max |flat_r - flat_0| over ranks (an all_gather, so every rank must call it)."""
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def _run_case(case: DDPCase, result: DDPResult, *, rank: int, steps: int, batch_size: int) -> DDPResult:
    """Build, wrap and train one case, filling ``result`` as it goes; every rank runs it (collectives inside)."""
    data_config = loading.load_data_config(_resolve(case.data_config))
    network = loading.import_network_config(_resolve(case.network), name=f"_ddp_check_{case.name}")
    torch.manual_seed(1000 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model, _ = network.get_model(data_config, **case.options)
    loss_func = network.get_loss(data_config, **case.options)
    if case.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)  # as weaver-core 0.5.3
    if hasattr(loss_func, "bind"):  # what weaver_ext's training hook does with the model weaver trains
        loss_func.bind(ddp)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    result.num_params = sum(p.numel() for p in model.parameters())
    result.max_param_diff = _max_rank_diff(_flat_params(model))
    before = _flat_params(model).clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ddp.train()
    for step in range(steps):
        seed = 7919 * (rank + 1) + step  # different data on each rank and step
        if case.inputs == "tracks":
            inputs, label = _track_batch(data_config, batch_size=batch_size, seed=seed)
        else:
            inputs, label = _jet_batch(data_config, batch_size=batch_size, seed=seed)
        opt.zero_grad(set_to_none=True)
        loss = loss_func(ddp(*inputs), label)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{case.name}: non-finite loss {float(loss)} at step {step}")
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        result.missing_grad = sorted(set(result.missing_grad) | set(missing))
        opt.step()
        result.max_param_diff = max(result.max_param_diff, _max_rank_diff(_flat_params(model)))
        result.steps = step + 1
    result.params_changed = bool((_flat_params(model) != before).any())
    result.ok = not result.missing_grad and result.max_param_diff == 0.0 and result.params_changed and bool(names)
    return result


def _worker(rank: int, world_size: int, init_file: str, cases: list[DDPCase], steps: int, batch_size: int,
            out_dir: str) -> None:
    """One DDP process: run every case in sequence and write this rank's results as JSON."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    results = []
    try:
        for case in cases:
            result = DDPResult(name=case.name, ok=False)
            try:
                _run_case(case, result, rank=rank, steps=steps, batch_size=batch_size)
            except Exception as exc:  # recorded per case so the other cases still run
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                result.ok, result.error = False, f"{type(exc).__name__}: {line}"
                if os.environ.get("WEAVERLAB_DDP_TRACEBACK"):
                    traceback.print_exc()
            results.append(asdict(result))
            dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def run_ddp_check(cases: Sequence[DDPCase], *, world_size: int = 2, steps: int = 2, batch_size: int = 8,
                  work_dir: str | Path | None = None) -> list[DDPResult]:
    """Spawn ``world_size`` gloo processes on CPU that train every case; return rank 0's results per case.

    A case whose ranks disagree on success/failure is reported as failed with both errors.
    """
    import torch.multiprocessing as mp

    if world_size < 2:
        raise ValueError(f"world_size must be >= 2 for a DDP check, got {world_size}")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        init_file = str(Path(tmp, "init"))
        mp.spawn(_worker, args=(world_size, init_file, list(cases), steps, batch_size, tmp), nprocs=world_size,
                 join=True)
        per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]
    results = []
    for i, first in enumerate(per_rank[0]):
        res = DDPResult(**first)
        others = [rank_results[i] for rank_results in per_rank[1:]]
        if any(o["ok"] != res.ok for o in others):
            res.ok = False
            res.error = "; ".join([res.error] + [o["error"] for o in others]).strip("; ") or "ranks disagree"
        results.append(res)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: check one network config under 2-process CPU DDP; exit code 1 if the check fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="network config file, e.g. networks/part.py")
    parser.add_argument("data_config", help="weaver data config, e.g. data/JetClass/JetClass_kin.yaml")
    loading.add_network_option_argument(parser)
    parser.add_argument("--inputs", choices=["jets", "tracks"], default="jets")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sync-batchnorm", action="store_true", help="convert to SyncBatchNorm (fails on CPU)")
    args = parser.parse_args(argv)
    try:
        options = loading.parse_network_options(args.network_option)
    except ValueError as err:
        parser.error(str(err))
    case = DDPCase(name=Path(args.network).stem, network=args.network, data_config=args.data_config,
                   options=options, inputs=args.inputs, sync_batchnorm=args.sync_batchnorm)
    (result,) = run_ddp_check([case], world_size=args.world_size, steps=args.steps, batch_size=args.batch_size)
    print(json.dumps(asdict(result), indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
