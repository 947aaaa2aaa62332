"""``report.json`` (``{system: {metric: value}}``, the docs/design.md §3/§4 names), ``run.json`` (the run's
details and verdicts), ``report.md`` and the PNG plots of ``tailcast evaluate`` (docs/design.md §6).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from online.exposure import lorenz_curve

from .harness import SystemResult
from .systems import BASELINE_KINDS, TAILBOOST_CURVES, TAILCAST_KINDS

__all__ = ["write_report", "tradeoff_verdicts", "markdown_table", "BUCKETS", "MAX_CONSUMED_SHARE", "QUALITY_RATIO"]

BUCKETS = ("<=5", "6-20", ">20")
#: docs/design.md §7: tailcast at knob 0 has NDCG@10 >= this x the best single system.
QUALITY_RATIO = 1.05
#: docs/design.md §7: at most this share of recommended slots are items the user already consumed.
MAX_CONSUMED_SHARE = 0.005
_TAILCAST_KINDS = (*TAILCAST_KINDS, "live")


def _f(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def markdown_table(results: dict[str, SystemResult]) -> str:
    rows = ["| system | HR@10 | ±95% | NDCG@10 | tail HR@10 | HR@10 users ≤5 | HR@10 6-20 | HR@10 >20 | tail share | "
            "coverage | Gini | APLT | novelty | consumed share | evaluated | exact | stale | none |",
            "|---|" + "---:|" * 17]
    for name, r in results.items():
        m = r.metrics
        b = m.get("hr_by_bucket", {})
        n = m.get("evaluated") or 0
        ci = 1.96 * math.sqrt(m["hr"] * (1 - m["hr"]) / n) if n else float("nan")  # normal approximation
        rows.append(f"| {name} | {_f(m['hr'])} | {_f(ci)} | {_f(m['ndcg'])} | {_f(m['tail_hr'])} | "
                    + " | ".join(_f(b.get(x, float("nan"))) for x in BUCKETS)
                    + f" | {_f(m.get('tail_share'))} | {_f(m.get('coverage'))} | {_f(m.get('gini'))} | "
                      f"{_f(m.get('aplt'))} | {_f(m.get('novelty'))} | {_f(m.get('consumed_share'))} | "
                      f"{m.get('evaluated', '-')} | "
                      f"{m.get('exact', '-')} | {m.get('stale', '-')} | {m.get('none', '-')} |")
    return "\n".join(rows)


def _curve(results: dict[str, SystemResult], kinds: Sequence[str], y: str) -> list[tuple[float, float, float, str]]:
    """(NDCG@10, y, knob, name) of the systems of ``kinds``, by knob (λ; the λ = 0 kind counts as 0)."""
    pts = [(r.metrics["ndcg"], r.metrics[y], r.param if r.param is not None else 0.0, name)
           for name, r in results.items() if r.kind in kinds]
    return sorted(pts, key=lambda p: p[2])


def _against(curve: list[tuple[float, float, float, str]], ndcg: float, val: float) -> tuple[float, bool, str]:
    """Where a (NDCG, y) point lies against a curve: (the curve's y at that NDCG, above it?, how)."""
    curve = sorted(curve, key=lambda p: p[0])
    xs = [p[0] for p in curve]
    if xs[0] <= ndcg <= xs[-1]:
        ref = float(np.interp(ndcg, xs, [p[1] for p in curve]))
        return ref, val > ref, "interpolated"
    end = curve[0] if ndcg < xs[0] else curve[-1]
    return end[1], val > end[1] and ndcg > end[0], f"outside the curve's NDCG range; nearest end {end[3]}"


def paired_difference(a: np.ndarray | None, b: np.ndarray | None) -> dict:
    """The mean per-event NDCG@10 difference ``a - b`` over the events both scored, with its standard error:
    two systems replayed on one stream share each event's difficulty, so this judges a small gap against its
    own noise (``{}`` without per-event gains)."""
    if a is None or b is None or len(a) != len(b):
        return {}
    both = ~(np.isnan(a) | np.isnan(b))
    d = a[both] - b[both]
    if d.size < 2:
        return {}
    return {"paired_diff": float(d.mean()), "paired_se": float(d.std(ddof=1) / math.sqrt(d.size)),
            "paired_events": int(d.size)}


def tradeoff_verdicts(results: dict[str, SystemResult]) -> dict:
    """The docs/design.md §7 checks one run can answer: ``tradeoff`` (each tailcast point above every
    :data:`TAILBOOST_CURVES` curve at the same NDCG@10, for tail share and tail HR@10; outside a curve's range,
    beating its nearest end on both), ``quality`` (:data:`QUALITY_RATIO`), ``consumed``
    (:data:`MAX_CONSUMED_SHARE`), ``long_tail_users`` (``<=5`` HR@10 vs every baseline) and ``batch_models``."""
    out: dict = {"tradeoff": {}, "quality": {}, "consumed": {}, "long_tail_users": {}, "batch_models": {}}
    for y in ("tail_share", "tail_hr"):
        tc = _curve(results, ("tailcast",), y)
        curves, missing = {}, []
        for label, kinds in TAILBOOST_CURVES.items():
            curve = _curve(results, kinds, y)
            if not curve:
                missing.append(label)
                continue
            rows = []
            for ndcg, val, _param, name in tc:
                ref, above, how = _against(curve, ndcg, val)
                rows.append({"system": name, "ndcg": ndcg, y: val, "curve_at_same_ndcg": ref, "above": above,
                             "how": how})
            curves[label] = {"points": rows, "above_at_every_setting": bool(rows) and all(r["above"] for r in rows)}
        out["tradeoff"][y] = {"curves": curves, "missing_curves": missing, "above_at_every_setting": bool(curves)
                              and all(c["above_at_every_setting"] for c in curves.values())}
    singles = {n: r.metrics["ndcg"] for n, r in results.items() if r.kind in BASELINE_KINDS}
    knob0 = [(n, r) for n, r in results.items() if r.kind == "tailcast" and r.param == 0.0]
    if singles and knob0:
        best = max(singles, key=singles.__getitem__)
        for name, r in knob0:
            ratio = r.metrics["ndcg"] / singles[best] if singles[best] > 0 else math.inf
            out["quality"][name] = {"ndcg": r.metrics["ndcg"], "best_single": best, "best_single_ndcg": singles[best],
                                    "ratio": ratio, "meets": ratio >= QUALITY_RATIO}
    for name, r in results.items():
        if r.kind in _TAILCAST_KINDS and "consumed_share" in r.metrics:
            share = r.metrics["consumed_share"]
            out["consumed"][name] = {"consumed_share": share, "meets": share <= MAX_CONSUMED_SHARE}
    baselines = {n: r.metrics["hr_by_bucket"]["<=5"] for n, r in results.items()
                 if r.kind in BASELINE_KINDS and "hr_by_bucket" in r.metrics}
    for name, r in results.items():
        if r.kind in ("tailcast", "live") and "hr_by_bucket" in r.metrics:
            mine = r.metrics["hr_by_bucket"]["<=5"]
            beaten = {b: mine > v for b, v in baselines.items()}
            out["long_tail_users"][name] = {"hr_<=5": mine, "above_every_baseline": all(beaten.values()),
                                            "vs": beaten}
    online = {r.param: (n, r) for n, r in results.items() if r.kind == "tailcast-online"}
    for name, r in results.items():
        if r.kind == "tailcast" and r.param in online:
            other, o = online[r.param]
            ndcg, base = r.metrics["ndcg"], o.metrics["ndcg"]
            out["batch_models"][name] = {"ndcg": ndcg, "online_only": other, "online_only_ndcg": base,
                                         "ratio": ndcg / base if base > 0 else math.inf, "meets": ndcg > base,
                                         **paired_difference(r.gains, o.gains)}
    return out


def _plots(results: dict[str, SystemResult], out: Path, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = list(results)

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    # 1. trade-off: tail share and tail HR vs NDCG, one curve per family
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, y, label in ((axes[0], "tail_share", "tail exposure share"), (axes[1], "tail_hr", "tail HR@10")):
        families = [(("tailcast",), "o-", "tailcast (re-ranking strength s)")]
        families += [(kinds, style, f"{label}: score × (1 + λ·tail)")
                     for (label, kinds), style in zip(TAILBOOST_CURVES.items(), ("s--", "D:"))]
        for kinds, style, lab in families:
            pts = _curve(results, kinds, y)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=lab)
            for p in pts:
                ax.annotate(f"{p[2]:g}", (p[0], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for name, r in results.items():
            if r.kind in ("mostpop", "recentpop", "mf", "content", "transformer", "vae", "live", "tailcast-online"):
                ax.plot([r.metrics["ndcg"]], [r.metrics[y]], "^", label=name)
        ax.set_xlabel("NDCG@10 (prequential)")
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: accuracy vs long-tail trade-off")
    save(fig, "tradeoff.png")
    # 2. HR@10 by user-activity bucket
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(names) + 3), 4.8))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(BUCKETS))
    for n, name in enumerate(names):
        b = results[name].metrics.get("hr_by_bucket", {})
        ax.bar(x + n * width - 0.4 + width / 2, [b.get(k, 0.0) for k in BUCKETS], width, label=name)
    ax.set_xticks(x, [f"users with {k} prior events" for k in BUCKETS])
    ax.set_ylabel("HR@10")
    ax.set_title(f"{title}: HR@10 by user activity")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    save(fig, "hr_by_bucket.png")
    # 3. Lorenz curves of exposure
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for name in names:
        r = results[name]
        if not r.exposure:
            continue
        lx, ly = lorenz_curve(r.exposure)
        ax.plot(lx, ly, label=f"{name} (Gini {r.metrics.get('gini', float('nan')):.2f})")
    ax.plot([0, 1], [0, 1], "k:", label="equal exposure")
    ax.set_xlabel("share of active items (least exposed first)")
    ax.set_ylabel("share of recommendation slots")
    ax.set_title(f"{title}: Lorenz curves of exposure")
    ax.legend(fontsize=7)
    save(fig, "lorenz.png")
    # 4. metrics over time
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        ch = results[name].chunks
        if not ch:
            continue
        axes[0].plot([c["chunk"] + 1 for c in ch], [c["hr"] for c in ch], marker=".", label=name)
        axes[1].plot([c["chunk"] + 1 for c in ch], [c["tail_share"] for c in ch], marker=".", label=name)
    axes[0].set_ylabel("HR@10")
    axes[1].set_ylabel("tail exposure share")
    for ax in axes:
        ax.set_xlabel("chunk of the (scored) stream, in time order")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{title}: metrics over time")
    save(fig, "over_time.png")
    return files


def write_report(out: Path, results: dict[str, SystemResult], *, command: str, title: str,
                 intro: Sequence[str] = (), notes: Sequence[str] = (), meta: dict | None = None,
                 plots: bool = True, loo: bool = False) -> dict:
    """Write report.json, run.json, report.md and (unless ``plots=False``) the PNGs; return run.json's dict."""
    out.mkdir(parents=True, exist_ok=True)
    report = {name: r.metrics for name, r in results.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False))
    verdicts = tradeoff_verdicts(results) if not loo else {}
    files = _plots(results, out, title) if plots and not loo else []
    run = {"command": command, "title": title, **(meta or {}), "verdicts": verdicts, "plots": files,
           "chunks": {name: r.chunks for name, r in results.items()}, "notes": list(notes)}
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
    md = [f"# tailcast evaluate: {title}", "", "Command:", "", "```", command, "```", ""]
    md += list(intro)
    md += ["", markdown_table(results) if not loo else _loo_table(results), ""]
    if verdicts:
        md += ["## docs/design.md §7 checks", ""]
        for name, v in verdicts["quality"].items():
            rel = ">=" if v["meets"] else "<"
            md.append(f"- {name} NDCG@10 {v['ndcg']:.4f} vs the best single system, {v['best_single']} "
                      f"{v['best_single_ndcg']:.4f}: ratio {v['ratio']:.3f} {rel} {QUALITY_RATIO}: "
                      f"**{'yes' if v['meets'] else 'no'}**")
        for y, v in verdicts["tradeoff"].items():
            names = " and ".join(v["curves"]) or "no TailBoost curve"
            md.append(f"- tailcast's curve above {names} ({y} at equal NDCG@10) at every setting: "
                      f"**{'yes' if v['above_at_every_setting'] else 'no'}**"
                      + (f" (not in this run: {', '.join(v['missing_curves'])})" if v["missing_curves"] else ""))
            for label, curve in v["curves"].items():
                for p in curve["points"]:
                    md.append(f"  - {p['system']}: NDCG {p['ndcg']:.4f}, {y} {p[y]:.4f} vs {label} "
                              f"{p['curve_at_same_ndcg']:.4f} -> {'above' if p['above'] else 'NOT above'} "
                              f"({p['how']})")
        for name, v in verdicts["consumed"].items():
            md.append(f"- {name}: {100 * v['consumed_share']:.2f}% of recommended slots are items the user already "
                      f"consumed, <= {100 * MAX_CONSUMED_SHARE:g}%: **{'yes' if v['meets'] else 'no'}**")
        for name, v in verdicts["long_tail_users"].items():
            losers = [b for b, ok in v["vs"].items() if not ok]
            md.append(f"- long-tail users (<=5 prior events) HR@10 of {name} = {v['hr_<=5']:.4f}, above every "
                      f"baseline: **{'yes' if v['above_every_baseline'] else 'no'}**"
                      + (f" (not above: {', '.join(losers)})" if losers else ""))
        how = (meta or {}).get("batch_models", "mode not recorded")
        for name, v in verdicts["batch_models"].items():
            rel = ">" if v["meets"] else "<="
            md.append(f"- the batch models add accuracy (batch models {how}): {name} NDCG@10 {v['ndcg']:.4f} "
                      f"{rel} {v['online_only']} {v['online_only_ndcg']:.4f} (ratio {v['ratio']:.3f}"
                      + (f"; paired per-event difference {v['paired_diff']:+.4f} ± {1.96 * v['paired_se']:.4f}, "
                         f"95%, {v['paired_events']} events" if "paired_diff" in v else "")
                      + f"): **{'yes' if v['meets'] else 'no'}**")
        md.append("")
    if files:
        md += ["## Plots", ""] + [f"- `{f}`" for f in files] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    (out / "report.md").write_text("\n".join(md))
    return run


def _loo_table(results: dict[str, SystemResult]) -> str:
    rows = ["| system | HR@10 | NDCG@10 | tail HR@10 | tail NDCG@10 | short-user HR@10 | users | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m = r.metrics
        rows.append(f"| {name} | {_f(m['hr'])} | {_f(m['ndcg'])} | {_f(m['tail_hr'])} | {_f(m.get('tail_ndcg'))} | "
                    f"{_f(m.get('short_hr'))} | {m.get('users', '-')} | {m.get('seconds', 0):.0f} |")
    return "\n".join(rows)
