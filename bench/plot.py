"""``docs/benchmark-taint-removal.png``: taint-removal delay per N, ours vs. the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODE_LABEL = {"snapshot": "ours (snapshot)", "reference": "reference (per-node, 1 worker)"}


def plot_taint_removal(results: dict[str, Any], path: Path) -> None:
    runs = [r for r in results.get("runs", []) if r.get("delays_s")]
    sizes = sorted({int(r["nodes"]) for r in runs})
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(sizes)}
    fig, (ax_cdf, ax_box) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})

    for run in sorted(runs, key=lambda r: (int(r["nodes"]), r["mode"])):
        delays = [max(float(d), 1e-3) for d in run["delays_s"]]
        n = int(run["nodes"])
        ys = [(i + 1) / len(delays) for i in range(len(delays))]
        style = "-" if run["mode"] == "snapshot" else "--"
        ax_cdf.step(delays, ys, where="post", linestyle=style, color=colors[n], linewidth=1.8,
                    label=f"N={n:,} {MODE_LABEL.get(run['mode'], run['mode'])}")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("delay from Node create (returned) to taint removal (watch), seconds — log scale")
    ax_cdf.set_ylabel("fraction of nodes initialised")
    ax_cdf.set_ylim(0, 1.02)
    ax_cdf.axvline(2.0, color="grey", linewidth=0.8, linestyle=":")
    ax_cdf.text(2.0, 0.02, " p99 target 2 s", color="grey", fontsize=8)
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower right")
    ax_cdf.set_title("CDF of taint-removal delay")

    ordered = sorted(runs, key=lambda r: (int(r["nodes"]), r["mode"] != "snapshot"))
    data = [[max(float(d), 1e-3) for d in r["delays_s"]] for r in ordered]
    labels = [f"{int(r['nodes']):,}\n{'ours' if r['mode'] == 'snapshot' else 'ref'}" for r in ordered]
    if data:
        box = ax_box.boxplot(data, whis=(1, 99), showfliers=False, patch_artist=True)
        ax_box.set_xticks(range(1, len(labels) + 1), labels)
        for patch, run in zip(box["boxes"], ordered, strict=True):
            patch.set_facecolor(colors[int(run["nodes"])])
            patch.set_alpha(0.35 if run["mode"] == "reference" else 0.8)
            if run["mode"] == "reference":
                patch.set_hatch("//")
    ax_box.set_yscale("log")
    ax_box.set_ylabel("seconds — log scale")
    ax_box.set_title("box: p25-p75, whiskers p1-p99")
    ax_box.grid(True, which="both", axis="y", alpha=0.3)

    opts = results.get("options", {})
    fig.suptitle(f"cloudsigma-ccm taint-removal delay — burst of N Nodes, CloudSigma latency "
                 f"{opts.get('latency_ms', '?')} ms ({str(results.get('date', ''))[:10]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
