"""The fleet study's figure (benchmarks/fleet_study.py): cost against SLO attainment per
model, and replicas over time for one model on one card across the autoscaling policies."""

from __future__ import annotations

from pathlib import Path

CARD_COLORS = {"gaudi2": "tab:blue", "gaudi3": "tab:cyan", "h100": "tab:green", "h200": "tab:olive"}
ROUTER_MARKERS = {"kv_aware": "o", "round_robin": "s", "power_of_two": "^", "prefix_affinity": "D"}
POLICY_STYLES = {"slo": "-", "ongoing_requests": "--"}


def plot_study(runs: list[dict], timeline: dict | None, path: Path) -> None:
    """One PNG: a scatter of card-hours per million output tokens against SLO attainment
    per model (colour: card, marker: router, filled: slo policy, hollow: ongoing_requests),
    and, when `timeline` is given ({"model", "card", "router", "rate_per_min", "runs"}),
    the replicas over time of its runs with the trace's arrival rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in runs))
    ncols = max(len(models), 1)
    nrows = 2 if timeline else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.8 * nrows), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        _scatter(ax, [r for r in runs if r["model"] == model], model)
    if timeline:
        ax = plt.subplot2grid((nrows, ncols), (1, 0), colspan=ncols, fig=fig)
        for extra in axes[1]:
            extra.remove()
        _timeline(ax, timeline)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scatter(ax, runs: list[dict], model: str) -> None:
    for r in runs:
        if r["slo_attainment"] is None or r["card_hours_per_m_tokens"] is None:
            continue
        color = CARD_COLORS.get(r["card"], "gray")
        filled = r["policy"] == "slo"
        ax.scatter(
            100 * r["slo_attainment"],
            r["card_hours_per_m_tokens"],
            marker=ROUTER_MARKERS.get(r["router"], "x"),
            s=55,
            facecolors=color if filled else "none",
            edgecolors=color,
        )
    slo = runs[0] if runs else {}
    ax.set_title(
        f"{model}: TTFT <= {slo.get('slo_ttft_s', 0):g} s, TPOT <= "
        f"{1000 * slo.get('slo_tpot_s', 0):g} ms"
    )
    ax.set_xlabel("SLO attainment (% of requests)")
    ax.set_ylabel("card-hours per million output tokens")
    ax.grid(alpha=0.3)
    handles = [
        ax.scatter([], [], color=c, marker="o", label=card) for card, c in CARD_COLORS.items()
    ]
    handles += [
        ax.scatter([], [], facecolors="none", edgecolors="k", marker=m, label=router)
        for router, m in ROUTER_MARKERS.items()
    ]
    ax.legend(handles=handles, fontsize=7, title="filled: slo, hollow: ongoing", title_fontsize=7)


def _timeline(ax, timeline: dict) -> None:
    for run in timeline["runs"]:
        times = [p[0] / 60 for p in run["series"]]
        ax.step(
            times,
            [p[1] for p in run["series"]],
            where="post",
            linestyle=POLICY_STYLES.get(run["policy"], ":"),
            label=f"{run['policy']}: replicas (serving + starting)",
        )
    ax.set_xlabel("minutes")
    ax.set_ylabel("replicas")
    ax.set_title(
        f"{timeline['model']} on {timeline['card']}, router {timeline['router']}: replicas "
        "over time"
    )
    ax.grid(alpha=0.3)
    rate = timeline.get("rate_per_min") or []
    if rate:
        twin = ax.twinx()
        twin.plot(
            [m + 0.5 for m in range(len(rate))],
            [n / 60 for n in rate],
            color="gray",
            alpha=0.5,
            label="arrivals (req/s, per minute)",
        )
        twin.set_ylabel("requests/s (1-minute mean)")
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = twin.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, fontsize=8, loc="upper left")
    else:
        ax.legend(fontsize=8)
