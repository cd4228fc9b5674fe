"""ParticleNet network config for weaver (JetClass layout), loadable with the published JetClass checkpoints.

Usage: ``weaver --network-config networks/particlenet.py -o conv_params "[(16,(64,64,64))]" ...``. The module tree
(``mod.`` prefix around weaver-core's ``ParticleNet``) matches the published ``ParticleNet_{kin,kinpid,full}.pt``
state_dicts so that they load with strict key matching. ``-o seed N`` makes training reproducible and
``--load-epoch`` exact (weaver_ext/reproducibility.py).
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from weaver.nn.model.ParticleNet import ParticleNet

from weaver_ext.config import from_options
from weaver_ext.network import CountsNonFinite, NonFiniteMask, jet_model_info, nonfinite_mask, resolve_num_classes
from weaver_ext.reproducibility import apply_seed_option, without_seed
from weaver_ext.weaver_hooks import network_hooks

# published JetClass ParticleNet (particle_transformer repository): three EdgeConv blocks, no fusion block
JETCLASS_CONV_PARAMS = [(16, (64, 64, 64)), (16, (128, 128, 128)), (16, (256, 256, 256))]
JETCLASS_FC_PARAMS = [(256, 0.1)]
WHERE = "networks/particlenet.py"


@dataclass
class ParticleNetOptions:
    """Every ``-o`` option of this network config, with the published JetClass values as defaults."""

    conv_params: list = field(default_factory=lambda: list(JETCLASS_CONV_PARAMS))
    fc_params: list = field(default_factory=lambda: list(JETCLASS_FC_PARAMS))
    use_fusion: bool = False
    use_fts_bn: bool = True
    use_counts: bool = True
    trim: bool = True
    # injected by weaver itself (--export-onnx / --use-amp / --compile)
    for_inference: bool = False
    use_amp: bool = False
    compile_model: bool = False


def parse_options(options: dict[str, Any]) -> ParticleNetOptions:
    """Turn weaver's ``-o`` kwargs into a typed config; an unknown key is a one-line error listing valid ones."""
    return from_options(ParticleNetOptions, options, where=WHERE)


class MinLengthTrimmer(torch.nn.Module):
    """weaver's SequenceTrimmer, but never shorter than ``min_length`` slots (re-padded with masked zeros).

    ParticleNet's k-nearest-neighbour search needs at least k + 1 slots; weaver's trimmer cuts a batch to its
    longest jet, which fails when every jet in the batch has <= k particles (e.g. ``--predict --batch-size 1``).
    Inputs that are shorter than ``min_length`` to begin with (a caller trimming to 16 particles) are padded too.
    """

    def __init__(self, trimmer: torch.nn.Module, min_length: int) -> None:
        super().__init__()
        self.trimmer = trimmer
        self.min_length = min_length

    def forward(self, x, v=None, mask=None, uu=None):  # same signature as weaver's SequenceTrimmer
        x, v, mask, uu = self.trimmer(x, v, mask, uu)
        missing = self.min_length - x.size(-1)
        if missing > 0:
            x = torch.nn.functional.pad(x, (0, missing))
            mask = torch.nn.functional.pad(mask, (0, missing))
            v = None if v is None else torch.nn.functional.pad(v, (0, missing))
        return x, v, mask, uu


class ParticleNetWrapper(CountsNonFinite, torch.nn.Module):
    """Adapts weaver's inputs (points, features, lorentz_vectors, mask) to ``ParticleNet(points, fts, mask)``.

    ``nonfinite`` applies the same non-finite input policy as ParT's ``JetTagger`` (``-o mask_nonfinite``).
    """

    def __init__(self, *, nonfinite: NonFiniteMask | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.mod = ParticleNet(**kwargs)
        max_k = max(k for k, _ in kwargs["conv_params"])
        self.mod.trimmer = MinLengthTrimmer(self.mod.trimmer, max_k + 1)
        self.min_input_length = max_k + 1  # read by the profiler's multiplicity sweep
        self.nonfinite = nonfinite

    def forward(
        self, points: torch.Tensor, features: torch.Tensor, lorentz_vectors: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if self.nonfinite is not None:
            points, features, lorentz_vectors, mask = self.nonfinite(points, features, lorentz_vectors, mask)
        return self.mod(points, features, mask)


def get_model(data_config: Any, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build ParticleNet for weaver: returns ``(model, model_info)`` with dynamic batch and particle axes."""
    options = apply_seed_option(kwargs)
    nonfinite = nonfinite_mask(options, where=WHERE)
    num_classes = resolve_num_classes(data_config, options, where=WHERE)
    opts = parse_options(options)
    model = ParticleNetWrapper(
        nonfinite=nonfinite,
        input_dims=len(data_config.input_dicts["pf_features"]),
        num_classes=num_classes,
        conv_params=[(int(k), tuple(int(c) for c in ch)) for k, ch in opts.conv_params],
        fc_params=[(int(c), float(d)) for c, d in opts.fc_params],
        use_fusion=opts.use_fusion,
        use_fts_bn=opts.use_fts_bn,
        use_counts=opts.use_counts,
        trim=opts.trim,
        for_inference=opts.for_inference,
        use_amp=opts.use_amp,
        compile_model=opts.compile_model,
    )
    model_info = jet_model_info(data_config)
    return model, model_info


def get_loss(data_config: Any, **kwargs: Any) -> torch.nn.Module:
    """Cross-entropy over the JetClass labels (options are validated like in ``get_model``)."""
    options = without_seed(kwargs)
    nonfinite_mask(options, where=WHERE)
    resolve_num_classes(data_config, options, where=WHERE)
    parse_options(options)
    return torch.nn.CrossEntropyLoss()


get_train_fn, get_evaluate_fn = network_hooks("classification")
