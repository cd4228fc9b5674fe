"""Write a profiling run as ``report.json`` + ``report.md`` + PNG plots, and a short terminal summary."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from profiling.loading import fmt_si

__all__ = [
    "ATTENTION_PLOTS",
    "PLOTS",
    "markdown",
    "plot_attention",
    "plot_compare",
    "plot_multiplicity",
    "plot_ops",
    "plot_throughput",
    "terminal_summary",
    "write_json",
    "write_plots",
    "write_report",
]

PLOTS = {
    "throughput_vs_batch": "throughput_vs_batch.png",
    "latency_vs_multiplicity": "latency_vs_multiplicity.png",
    "op_breakdown": "op_breakdown.png",
    "trained_vs_untrained": "trained_vs_untrained.png",
}


ATTENTION_PLOTS = {"entropy": "attention_entropy.png", "k_needed": "attention_k_needed.png",
                   "example_maps": "attention_maps.png"}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def write_json(results: dict[str, Any], path: Path) -> None:
    """Everything measured, machine-readable."""
    path.write_text(json.dumps(results, indent=2, default=_json_default))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """One-axes figure: yields the axes, then lays out, saves ``path`` (100 dpi) and closes the figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    """Jets/s vs batch size (log-x)."""
    rows = results["latency_vs_batch"]
    with _figure(path, (5, 3.5)) as ax:
        ax.errorbar([r["batch_size"] for r in rows], [r["jets_per_s"] for r in rows],
                    yerr=[r["batch_size"] * r["iqr_s"] / r["median_s"] ** 2 / 2 for r in rows], marker="o",
                    capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("jets / s (median; bar = IQR)")
        ax.set_title(f"{results['model']['model_class']} on {results['environment']['device']}")
        ax.grid(alpha=0.3)


def plot_multiplicity(results: dict[str, Any], path: Path) -> None:
    """Per-call latency and FLOPs/jet vs particle multiplicity."""
    rows = results["latency_vs_multiplicity"]
    with _figure(path, (5, 3.5)) as ax:
        if rows:
            xs = [r["multiplicity"] for r in rows]
            ax.errorbar(xs, [1e3 * r["median_s"] for r in rows], yerr=[1e3 * r["iqr_s"] / 2 for r in rows],
                        marker="o", capsize=3, label="latency")
            ax2 = ax.twinx()
            ax2.plot(xs, [r["flops_per_jet"] / 1e6 for r in rows], "s--", color="C1", label="MFLOP/jet")
            ax2.set_ylabel("MFLOP / jet (ours)", color="C1")
        ax.set_xlabel("particles per jet")
        ax.set_ylabel(f"latency per batch of {results['config']['profile_batch']} [ms]")
        ax.grid(alpha=0.3)


def plot_ops(results: dict[str, Any], path: Path) -> None:
    """Horizontal bars: top ops by self CPU time per forward."""
    rows = results["profiler"]["top_self_cpu"][:12][::-1]
    with _figure(path, (6, 4)) as ax:
        ax.barh([r["op"][:40] for r in rows], [r["self_cpu_ms"] for r in rows])
        ax.set_xlabel("self CPU time per forward [ms]")
        ax.set_title("op-time breakdown (torch.profiler)")


def plot_compare(results: dict[str, Any], path: Path) -> None:
    """Interleaved latency samples of A (given weights) and B (other weights) as box plots."""
    cmp = results["compare"]
    with _figure(path, (5, 3.5)) as ax:
        ax.boxplot([[1e3 * x for x in cmp["samples"]["A"]], [1e3 * x for x in cmp["samples"]["B"]]])
        ax.set_xticks([1, 2], [f"A: {Path(cmp['A']['weights']).name}", f"B: {Path(cmp['B']['weights']).name}"])
        ax.set_ylabel(f"latency per batch of {cmp['batch_size']} [ms]")
        lo, hi = cmp["latency_ratio_ci95"]
        ax.set_title(f"B/A = {cmp['latency_ratio_B_over_A']:.3f} (95% CI {lo:.3f}-{hi:.3f})")


def plot_attention(sides: dict[str, list], out: Path) -> list[str]:
    """Attention structure, trained against random where both exist: per-layer entropy distributions, the top-k
    needed for 90/95/99% of the mass, and one jet's map per layer (``sides``: label -> ``LayerResult`` list)."""
    first = next(iter(sides.values()))
    names = [f"L{i}" for i in range(len(first))]
    with _figure(out / ATTENTION_PLOTS["entropy"], (1.2 + 0.9 * len(names), 3.5)) as ax:
        for offset, color, (label, layers) in zip((-0.2, 0.2), ("tab:blue", "tab:orange"), sides.items(),
                                                  strict=False):
            pos = [i + 1 + offset for i in range(len(layers))]
            parts = ax.violinplot([layer.query_entropy.numpy() for layer in layers], positions=pos, widths=0.35)
            for body in parts["bodies"]:
                body.set_facecolor(color)
            for line in ("cmins", "cmaxes", "cbars"):
                parts[line].set_color(color)
            ax.plot([], [], color=color, linewidth=6, label=label)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_ylabel("attention entropy per query [nats]")
        ax.legend(fontsize=8)
    with _figure(out / ATTENTION_PLOTS["k_needed"], (5, 3.5)) as ax:
        for label, layers in sides.items():
            for level, style in (("0.9", ":"), ("0.95", "-"), ("0.99", "--")):
                ax.plot(names, [layer.summary["k_for_mass"][level] for layer in layers], style, marker="o",
                        label=f"{label} {float(level):.0%}")
        ax.set_ylabel("top-k keeping the mass")
        ax.legend(fontsize=7)
    plt = _plt()
    fig, axes = plt.subplots(1, len(first), figsize=(2.2 * len(first), 2.4), squeeze=False)
    for ax, name, layer in zip(axes[0], names, first, strict=True):
        ax.imshow(layer.example_map.numpy(), cmap="viridis")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"one jet, head-averaged attention ({next(iter(sides))})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / ATTENTION_PLOTS["example_maps"], dpi=100)
    plt.close(fig)
    return list(ATTENTION_PLOTS.values())


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """All PNGs that apply to this run; returns their file names."""
    written = []
    for key, fn in (("throughput_vs_batch", plot_throughput), ("latency_vs_multiplicity", plot_multiplicity),
                    ("op_breakdown", plot_ops), ("trained_vs_untrained", plot_compare)):
        if key == "trained_vs_untrained" and "compare" not in results:
            continue
        fn(results, out / PLOTS[key])
        written.append(PLOTS[key])
    return written


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt_opt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt_si(x, unit)


def markdown(results: dict[str, Any]) -> str:
    """Human-readable report."""
    parts = [
        *_run_md(results), "",
        *_batch_md(results), "",
        *_multiplicity_md(results), "",
        *_flops_md(results), "",
        *_ops_md(results), "",
        *_memory_md(results), "",
        *_subnormal_md(results),
    ]
    pred = results.get("predictions") or {}
    if pred:
        parts += ["", "## Outputs", f"- mean max-probability {pred['mean_max_prob']:.3f}, mean entropy "
                  f"{pred['mean_entropy']:.3f} (uniform: {pred['uniform_entropy']:.3f})"]
    if "compare" in results:
        parts += ["", _compare_md(results["compare"])]
    if "attention" in results:
        parts += ["", *_attention_md(results["attention"])]
    parts += ["", "## Plots"] + [f"![{k}]({v})" for k, v in PLOTS.items()
                                 if k != "trained_vs_untrained" or "compare" in results]
    return "\n".join(parts) + "\n"


def _run_md(results: dict[str, Any]) -> list[str]:
    """Title and what was run: model, weights, device, inputs, wall time."""
    m, env, cfg = results["model"], results["environment"], results["config"]
    return [
        f"# Forward-pass profile: {m['model_class']} ({Path(m['network_config']).name})",
        "",
        f"- weights: `{m['weights']}`; parameters: {m['params']:,}",
        f"- device: {env['device']}, threads: {env['threads']}, torch {env['torch']}",
        f"- inputs: {results['inputs']['source']}; for_inference={cfg['for_inference']}",
        *(f"  - {note}" for note in results["inputs"].get("notes", [])),
        f"- wall time of this run: {results['wall_time_s']:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in results.get("phase_times_s", {}).items()) + ")",
    ]


def _batch_md(results: dict[str, Any]) -> list[str]:
    return [
        "## Latency and throughput vs batch size",
        _table(["batch", "median latency [ms]", "IQR [ms]", "runs", "jets/s"],
               [[r["batch_size"], f"{1e3 * r['median_s']:.3f}", f"{1e3 * r['iqr_s']:.3f}", r["runs"],
                 f"{r['jets_per_s']:.1f}"] for r in results["latency_vs_batch"]]),
        *(f"- {note}" for note in results.get("batch_size_notes", [])),
    ]


def _multiplicity_md(results: dict[str, Any]) -> list[str]:
    return [
        f"## Latency vs particle multiplicity (batch {results['config']['profile_batch']}, synthetic jets of n "
        "particles, inputs padded to n)",
        _table(["particles", "slots", "median latency [ms]", "IQR [ms]", "jets/s", "MFLOP/jet"],
               [[r["multiplicity"], r.get("slots", r["multiplicity"]), f"{1e3 * r['median_s']:.3f}",
                 f"{1e3 * r['iqr_s']:.3f}", f"{r['jets_per_s']:.1f}", f"{r['flops_per_jet'] / 1e6:.2f}"]
                for r in results["latency_vs_multiplicity"]]),
        *(f"- {note}" for note in results.get("multiplicity_notes", [])),
    ]


def _flops_md(results: dict[str, Any]) -> list[str]:
    fl = results["flops"]["per_jet"]
    return [
        f"## FLOPs per jet (batch {results['flops']['batch']})",
        _table(["counter", "value", "note"], [
            ["ours (matmul FLOPs, 1 MAC = 2 FLOPs)", _fmt_opt(fl["ours_matmul_flops"], "FLOP"),
             "module hooks incl. attention and pair embedding"],
            ["ours (elementwise estimate)", _fmt_opt(fl["ours_other_flops"], "FLOP"), "norms, activations, softmax"],
            ["torch FlopCounterMode", _fmt_opt(fl["flopcountermode_flops"], "FLOP"), "aten-level, run with grad on"],
            ["ptflops (pytorch backend)", _fmt_opt(fl["ptflops_macs"], "MAC"), "module hooks; misses functional ops"],
        ]),
        "",
        _table(["module type", "MFLOP/jet"],
               [[k, f"{v / 1e6:.2f}"] for k, v in results["flops"]["ours_by_type"].items()]),
    ]


def _ops_md(results: dict[str, Any]) -> list[str]:
    return [
        "## Where the time goes (torch.profiler, per forward)",
        f"Trace: `{results['profiler']['trace']}` (open in https://ui.perfetto.dev or chrome://tracing).",
        "",
        _table(["op", "calls", "self CPU [ms]", "self CUDA [ms]", "self CPU mem [MiB]"],
               [[r["op"], r["calls"], f"{r['self_cpu_ms']:.3f}", f"{r['self_device_ms']:.3f}",
                 f"{r['self_cpu_mem_mb']:.2f}"] for r in results["profiler"]["top_self_cpu"]]),
    ]


def _memory_md(results: dict[str, Any]) -> list[str]:
    mem = results["memory"]
    c = mem.get("cuda")
    cuda = [f"- CUDA max allocated: {c['max_allocated_mb']:.1f} MiB (snapshot `{c['snapshot']}`)"] if c else []
    return ["## Memory", f"- CPU peak RSS of the process: {mem['cpu_peak_rss_mb']:.1f} MiB",
            f"- CPU bytes allocated per forward (profiler): {mem['cpu_alloc_mb_per_forward']:.2f} MiB", *cuda]


def _subnormal_md(results: dict[str, Any]) -> list[str]:
    sub = results["subnormals"]
    return ["## Subnormal numbers", f"- weights: {sub['weights']['subnormal']} of {sub['weights']['total']:,}",
            f"- activations (one forward): {sub['activations']['subnormal']} of {sub['activations']['total']:,}",
            *_flush_denormal_md(sub.get("flush_denormal", {}))]


def _flush_denormal_md(ftz: dict[str, Any]) -> list[str]:
    if ftz.get("supported"):
        return [f"- `torch.set_flush_denormal(True)` latency ratio on/off: {ftz['ratio_on_over_off']:.3f} "
                f"(95% CI {ftz['ratio_ci95'][0]:.3f}-{ftz['ratio_ci95'][1]:.3f})"]
    return [f"- flush-denormal timing skipped: {ftz['skipped']}"] if "skipped" in ftz else []


def _attention_md(att: dict[str, Any]) -> list[str]:
    """Per layer and side: entropy, effective number, top-k masses, pair-bias share; then what DSA would save."""
    lines = ["## Attention structure", f"Particle blocks on {att['jets']} real jets (the modules read: "
             "docs/profiling.md, Attention structure)."]
    ks = [str(k) for k in att["ks"]]
    for label, layers in att["sides"].items():
        rows = [[layer["layer"], f"{layer['entropy']:.2f}", f"{layer['effective_number']:.1f}",
                 *(f"{layer['topk_mass'][int(k)]:.3f}" for k in ks),
                 "n/a" if layer["bias_share"] is None else f"{layer['bias_share']:.2f}",
                 " / ".join(str(layer["k_for_mass"][lv]) for lv in ("0.9", "0.95", "0.99"))] for layer in layers]
        lines += ["", f"### {label}", _table(["layer", "entropy", "exp(entropy)", *(f"top-{k} mass" for k in ks),
                                              "pair-bias share", "k for 90/95/99%"], rows)]
    if att.get("dsa"):
        rows = [[r["mass"], r["layer"], r["topk"], f"{r['attention_flops_fraction']:.2f}",
                 "n/a" if r["max_abs_diff_softmax"] is None else f"{r['max_abs_diff_softmax']:.2e}"]
                for r in att["dsa"]]
        lines += ["", f"### What DSA would save ({att['dsa_side']} weights)",
                  "Per layer: that layer alone runs `dsa_topk` at its k; `all`: every layer at the largest k.",
                  _table(["mass kept", "layer", "top-k", "attention work vs dense", "max |d softmax| of dsa_topk"],
                         rows)]
    lines += [""] + [f"![{name}]({name})" for name in att["plots"]]
    return lines


def _compare_md(cmp: dict[str, Any]) -> str:
    rows = []
    for key in ("A", "B"):
        e = cmp[key]
        ftz = e.get("flush_denormal", {})
        ftz_txt = f"{ftz['ratio_on_over_off']:.3f}" if ftz.get("supported") else "n/a"
        rows.append([key, f"`{e['weights']}`", f"{1e3 * e['latency']['median_s']:.3f}",
                     f"{1e3 * e['latency']['iqr_s']:.3f}", f"{e['flops_per_jet'] / 1e6:.2f}", f"{e['memory_mb']:.2f}",
                     f"{e['subnormal_weights']['subnormal']}", f"{e['subnormal_activations']['subnormal']}", ftz_txt,
                     f"{e['predictions'].get('mean_max_prob', float('nan')):.3f}",
                     f"{e['predictions'].get('mean_entropy', float('nan')):.3f}"])
    lo, hi = cmp["latency_ratio_ci95"]
    return "\n".join([
        f"## Trained vs other weights (same inputs, batch {cmp['batch_size']}, {cmp['rounds']} interleaved rounds)",
        _table(["", "weights", "median [ms]", "IQR [ms]", "MFLOP/jet", "memory [MiB]", "subnormal weights",
                "subnormal activations", "FTZ on/off latency", "mean max-prob", "mean entropy"], rows),
        "",
        f"Latency ratio B/A: {cmp['latency_ratio_B_over_A']:.3f} (bootstrap 95% CI {lo:.3f}-{hi:.3f}); "
        "a CI containing 1 means no measurable difference.",
    ])


def write_report(results: dict[str, Any], out: Path) -> None:
    """report.json, report.md and PNGs in ``out`` (the trace was written by the profiler already)."""
    out.mkdir(parents=True, exist_ok=True)
    results["files"] = {"json": "report.json", "markdown": "report.md", "trace": results["profiler"]["trace"],
                        "plots": write_plots(results, out)}
    write_json(results, out / "report.json")
    (out / "report.md").write_text(markdown(results))


def terminal_summary(results: dict[str, Any]) -> str:
    """A few readable lines for the console."""
    m, fl = results["model"], results["flops"]["per_jet"]
    lines = [
        f"{m['model_class']} ({m['weights']}): {m['params']:,} params, "
        f"{fl['ours_matmul_flops'] / 1e6:.1f} MFLOP/jet (ours) | FlopCounterMode "
        f"{_fmt_opt(fl['flopcountermode_flops'], 'FLOP')} | ptflops {_fmt_opt(fl['ptflops_macs'], 'MAC')}",
    ]
    for r in results["latency_vs_batch"]:
        lines.append(f"  batch {r['batch_size']:>5}: {1e3 * r['median_s']:9.3f} ms (IQR {1e3 * r['iqr_s']:.3f})"
                     f"  {r['jets_per_s']:10.1f} jets/s")
    top = results["profiler"]["top_self_cpu"][:3]
    lines.append("  top ops: " + ", ".join(f"{r['op']} {r['self_cpu_ms']:.2f} ms" for r in top))
    lines.append(f"  peak RSS {results['memory']['cpu_peak_rss_mb']:.0f} MiB; run took {results['wall_time_s']:.1f} s")
    if "compare" in results:
        c = results["compare"]
        lo, hi = c["latency_ratio_ci95"]
        lines.append(f"  B/A latency {c['latency_ratio_B_over_A']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    lines.append(f"  report: {results['config']['out_dir']}/report.md")
    return "\n".join(lines)
