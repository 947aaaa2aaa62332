"""#16 warm restart, offline: NDCG@10 of the lists over the second half of a stream, for a scorer that runs
uninterrupted, one restored from a snapshot taken at the kill (or 1/20 or 1/6 of the stream before it,
then the log replayed up to the kill, learning only), and one restarted cold.

    .venv/bin/python -m benchmarks.warm_restart [--seeds 11,12,13]

The stream, the scorer core and the metric are those of ``tests/streams/test_scorer_snapshot.py`` (whose
test asserts the 1/20 case within 2%); the snapshot is the scorer's own (``encode_state``/``install_state``).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "streams"))

import test_scorer_snapshot as t  # noqa: E402

from streams.agents.serving import encode_state, install_state  # noqa: E402


def run(seed: int) -> dict[str, float]:
    batches, hist = t.stream(seed=seed)
    n = len(batches)
    kill_at = n // 2
    gaps = {"at the kill": kill_at, "1/20 before": kill_at - n // 20, "1/6 before": n // 3}
    whole, rest_whole, snaps = t.fresh_core(), [], {}
    for i, batch in enumerate(batches):
        for gap, at in gaps.items():
            if i == at:
                snaps[gap] = encode_state(whole)
        out = whole.process(batch, now=0.0)
        if i >= kill_at:
            rest_whole += out.recommendations
    row = {"uninterrupted": t.ndcg(rest_whole, hist)}
    for gap, at in gaps.items():
        core = t.fresh_core()
        install_state(core, pickle.loads(snaps[gap]))
        for batch in batches[at:kill_at]:
            core.learn(batch)
        row[gap] = t.ndcg([r for b in batches[kill_at:] for r in core.process(b, now=0.0).recommendations], hist)
    cold = t.fresh_core()
    row["cold"] = t.ndcg([r for b in batches[kill_at:] for r in cold.process(b, now=0.0).recommendations], hist)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="11,12,13")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        row = run(seed)
        base = row["uninterrupted"]
        print(f"seed {seed}: uninterrupted {base:.4f}; " + "; ".join(
            f"{name} {value:.4f} ({(value - base) / base:+.2%})" for name, value in row.items() if name != "uninterrupted"),
            flush=True)


if __name__ == "__main__":
    main()
