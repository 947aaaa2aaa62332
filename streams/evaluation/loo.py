"""Leave-one-out evaluation (``--mode loo``): ``models/loo.py``'s split, metrics and baselines, plus tailcast,
which replays the stream minus the test events through the scorer's micro-batches (the trained models as
frozen batch sources from the validation events on, so the ranker learns their weight out of sample; every
user re-scored before them after a seeded-shuffle burst of every user's last train event, so that each
validation event labels a list made as the test list is, after the validation events' own burst) and
ranks one top-``k`` list per user: a rank beyond ``k``, or a target repeating a history item, is a miss.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from models.scoring import BatchScorer
from models.sequence import pad_batch
from streams.agents.scorer import BATCH_SOURCES
from streams.config import Settings

from .harness import PreparedStream, SystemResult, gate_fields, micro_batches
from .report import paired_difference
from .systems import SystemSpec, batch_model_for, build_core
from .transformer import Refresher

__all__ = ["run_loo"]


def _groups(split, index, targets, *, head_share: float, short_max: int = 5):
    from models.loo import tail_items, train_counts

    tail = tail_items(train_counts(split.train_sequences(index), len(index)), head_share=head_share)
    is_tail = tail[np.asarray(targets, dtype=np.int64)]
    is_short = np.array([len(split.train[u]) <= short_max for u in split.users()], dtype=bool)
    return is_tail, is_short


def _metrics(ranks: np.ndarray, is_tail: np.ndarray, is_short: np.ndarray, k: int) -> dict:
    from models.loo import metrics_from_ranks

    overall, tail_m, short_m = (metrics_from_ranks(r, k=k) for r in (ranks, ranks[is_tail], ranks[is_short]))
    return {"k": k, "hr": overall["hr"], "ndcg": overall["ndcg"], "tail_hr": tail_m["hr"], "tail_ndcg": tail_m["ndcg"],
            "short_hr": short_m["hr"], "users": overall["users"], "tail_users": tail_m["users"],
            "short_users": short_m["users"]}


def _in_index(scorer: BatchScorer, index: Mapping[Hashable, int], *, vae: bool = False):
    """``scorer``'s Transformer (or Mult-VAE) as a ``models.loo`` score function over ``index``'s item indices:
    histories mapped to its vocabulary, scores mapped back; items outside its vocabulary score -inf."""
    from models.vae import score_users

    ids = [None] * (len(index) + 1)
    for item, i in index.items():
        ids[i] = item
    cols = np.array([0] + [scorer.vocab.get(str(ids[i])) or 0 for i in range(1, len(ids))], dtype=np.int64)

    def score(histories: list[list[int]]) -> np.ndarray:
        encoded = [scorer.vocab.encode([str(ids[i]) for i in h]) for h in histories]
        if vae:
            s = score_users(scorer.vae, encoded)
        else:
            s = scorer.score_encoded(pad_batch(encoded, scorer.max_len, device=scorer.device)).float().cpu().numpy()
        out = s[:, cols]
        out[:, cols == 0] = -np.inf
        return out

    return score


def paired_gain(ranks: np.ndarray, base: np.ndarray, k: int) -> tuple[float, float]:
    """Mean and standard error of the per-user NDCG@k difference ``ranks`` minus ``base`` (0-based ranks
    of the same users' targets; k or more is a miss).

    >>> paired_gain(np.array([0, 9, 20]), np.array([0, 20, 20]), 10)
    (0.0964, 0.0964)
    """
    from online.metrics import gain

    def gains(r: np.ndarray) -> np.ndarray:
        return np.array([gain(x, k) for x in np.asarray(r).tolist()], dtype=float)

    d = paired_difference(gains(ranks), gains(base))
    return round(d["paired_diff"], 4), round(d["paired_se"], 4)


def run_loo(stream: PreparedStream, settings: Settings, *, strengths: Sequence[float], seed: int = 0,
            trainer: Refresher | None = None, batch: int = 256, text_vectors=None, ablate: bool = False,
            log: Callable[[str], None] = print) -> tuple[dict[str, SystemResult], list[str]]:
    """``trainer``: the batch models, trained once on every event but the test events (selected on the newest
    of them and refit on all, as the trainer does) and served frozen; None = online models only."""
    from models.loo import ItemCF, MostPop, evaluate_split, item_index, leave_one_out

    k = settings.scorer.k
    head_share = settings.longtail.head_share
    events = [(e.user, e.item, e.ts) for e in stream.events]
    split = leave_one_out(events)
    index = item_index(split)
    n_items = len(index)
    train_seqs = split.train_sequences(index)
    notes = [f"leave-one-out: {len(split.train)} users, {len(split.test)} evaluated (>= 3 events), {n_items} items; "
             f"tail = bottom {100 * (1 - head_share):.0f}% of the items seen in training, by train count (models.loo.tail_items); "
             f"short users = <= 5 train events"]
    results: dict[str, SystemResult] = {}

    def add(name: str, kind: str, param, metrics: dict, seconds: float) -> None:
        metrics = {**metrics, "seconds": round(seconds, 1)}
        results[name] = SystemResult(name, kind, param, metrics, [], [], seconds)
        log(f"  {name}: HR@{k} {metrics['hr']:.4f} NDCG@{k} {metrics['ndcg']:.4f} tail HR {metrics['tail_hr']:.4f} "
            f"({seconds:.0f}s)")

    for name, cls in (("MostPop", MostPop), ("ItemCF", ItemCF)):
        t = time.perf_counter()
        m = evaluate_split(cls(train_seqs, n_items=n_items), split, index, stage="test", k=k, head_share=head_share,
                           seed=seed)
        add(name, name.lower(), None, m, time.perf_counter() - t)

    per_user_last = {}
    for n, (u, _i, _ts) in enumerate(events):
        per_user_last[u] = n
    test_pos = {n for u, n in per_user_last.items() if u in split.test}
    kept = [e for n, e in enumerate(stream.events) if n not in test_pos]
    valid_count = {u: len(split.train[u]) + 1 for u in split.valid}  # a validation event's count in its user's stream
    batch_model = None
    if trainer is not None:
        t = time.perf_counter()
        batch_model = trainer(kept)  # the test events never seen: the model the test lists are made with
        batch_model.version = "loo-trained"
        seconds = time.perf_counter() - t
        h = trainer.history[-1]
        for name, kind, score, valid in (("Transformer", "transformer", _in_index(batch_model, index), h["valid_ndcg"]),
                                         ("Mult-VAE", "vae", _in_index(batch_model, index, vae=True), h["vae_valid_ndcg"])):
            if kind == "vae" and batch_model.vae is None:
                continue
            t = time.perf_counter()
            m = evaluate_split(score, split, index, stage="test", k=k, head_share=head_share, seed=seed)
            m.update(valid_ndcg=valid, epochs=h["epochs" if kind == "transformer" else "vae_epochs"])
            add(name, kind, None, m, time.perf_counter() - t + (seconds if kind == "transformer" else 0.0))
        notes.append(f"batch models trained here as the trainer does: the {h['variant']} encoder kept (validation "
                     "NDCG@10 " + ", ".join(f"{v} {x:.4f}" for v, x in h["variants_valid_ndcg"].items()) + ")")
    else:
        notes.append("Transformer not trained (give --train-transformer SECONDS to include it)")

    if strengths:
        histories, targets = split.histories("test", index)
        is_tail, is_short = _groups(split, index, targets, head_share=head_share)
        users = split.users()
        specs = [SystemSpec("tailcast", float(s)) for s in strengths]
        if batch_model is not None and batch_model.vae is not None:
            specs += [SystemSpec("tailcast-novae", float(s)) for s in strengths]
        # on the train part the batch models' candidates are in-sample, and a ranker learning there would trust
        # them too much: the online models alone replay it, the batch models come in for the validation events.
        # Every user is re-scored then, with or without them: a validation event labels the list made with the
        # models of the whole train part, as its user's test list is, not the one made after their previous
        # event (on MovieLens the median user's in 2007, the train part ending in 2018). Those batch models are
        # trained on the train part only, so that they are out of sample on the validation events as a live
        # checkpoint is on the events after it; the test lists are made after a second refresh, with the models
        # above (trained on the validation events too)
        valid_model = None
        if trainer is not None:
            seen: Counter = Counter()
            train_part = []
            for e in kept:
                seen[e.user] += 1
                if seen[e.user] != valid_count.get(e.user):
                    train_part.append(e)
            valid_model = trainer(train_part)
            notes.append(f"the validation lists' batch models: trained on the train part ({len(train_part)} events), "
                         "the {variant} encoder kept, {epochs} epochs".format(**trainer.history[-1]))
        requests = [r for _start, _end, rs in micro_batches(kept, settings, 1) for r in rs]
        # the validation lists are made as the test lists are: the online models learn every user's event before
        # them in one burst, then every user is re-scored, as the validation events are learned before the test
        # lists. Learned in stream order instead, those events would leave the online models (MF above all:
        # item biases and vectors moved by one event of every user) in a state the ranker never met before the
        # test lists. Each burst is learned in a seeded shuffle: the lists are all made at one model time, so
        # stream order carries nothing, and kept, it would give the ranker (a constant-rate learner, fit most to
        # its last lessons) the users who left last as its final lessons, where the test lists are every user's
        phases: list[list] = [[], [], []]  # the rest of the train part, the last-train burst, the validation burst
        for r in requests:  # by how many events it lies before its user's validation event: 2 or more, 1, 0
            ahead = valid_count.get(r.user_id, r.event_count + 2) - r.event_count
            if ahead >= 0:
                phases[max(0, 2 - ahead)].append(r)
        shuffle = random.Random(seed).shuffle
        shuffle(phases[1])
        shuffle(phases[2])
        rows = [(s.name, s, build_core(s, settings, text_vectors=text_vectors, seed=seed)) for s in specs]
        if ablate:  # tailcast at the first strength with each source off in turn (the models still learn it)
            first = SystemSpec("tailcast", float(strengths[0]))
            served = [src for src in rows[0][2].recommender.blender.sources
                      if src not in BATCH_SOURCES or batch_model is not None]
            for source in served:
                if source == "vae" and any(s.kind == "tailcast-novae" for s in specs):
                    continue  # the "no VAE" rows
                core = build_core(first, settings, text_vectors=text_vectors, seed=seed)
                core.recommender.off = frozenset({source})
                rows.append((f"{first.name} no {source}", first, core))
        seconds = {name: 0.0 for name, _s, _c in rows}
        for phase, reqs in enumerate(phases):
            for name, s, core in rows:
                t = time.perf_counter()
                if phase == 2:
                    if valid_model is not None:
                        core.swap_model(batch_model_for(s.kind, valid_model))
                    for _lists in core.rescore_active(batch=batch, now=max((r.event_ts for r in reqs), default=None)):
                        pass
                for lo in range(0, len(reqs), batch):
                    chunk = reqs[lo:lo + batch]
                    core.process(chunk, now=chunk[-1].event_ts)
                seconds[name] += time.perf_counter() - t
        # the state before each test event: last history_len items of train + valid, as the worker keeps it
        full = {u: split.train[u] + [split.valid[u]] for u in users}
        hl = settings.worker.history_len

        def test_ranks(core, arm: str) -> np.ndarray:
            """(users,) each user's test item's rank in their top-k list, ``n_items`` when not in it."""
            ranks = np.full(len(users), n_items, dtype=np.int64)
            for lo in range(0, len(users), batch):
                chunk = users[lo:lo + batch]
                hs = [full[u][-hl:] for u in chunk]
                lists = core.recommender.recommend_many(chunk, hs, [len(full[u]) for u in chunk],
                                                        arms=[arm] * len(chunk), extras=core.batch_candidates(hs))
                for b, shown in enumerate(lists):
                    items = [c.item for c in shown][:k]
                    if split.test[chunk[b]] in items:
                        ranks[lo + b] = items.index(split.test[chunk[b]])
            return ranks

        ranks_of = {}
        for name, s, core in rows:
            t = time.perf_counter()
            if batch_model is not None:
                core.swap_model(batch_model_for(s.kind, batch_model))
            ranks_of[name] = ranks = test_ranks(core, s.name)
            seconds[name] += time.perf_counter() - t
            add(name, s.kind, s.param, {**_metrics(ranks, is_tail, is_short, k),
                                        **gate_fields(core.recommender.blender)}, seconds[name])
        served_name = rows[0][0]
        left_out = {seg: sorted(n for n, j in srcs.items() if not j["served"])
                    for seg, srcs in rows[0][2].recommender.blender.gate().items()}
        notes.append(f"{served_name}'s source gate at the end of the replay, sources left out per user segment: "
                     + "; ".join(f"{seg}: {', '.join(names) or 'none'}" for seg, names in left_out.items()))
        ablations = {n: results[n].metrics["ndcg"] for n, _s, _c in rows if n.startswith(served_name + " no ")}
        if ablations:
            served_ndcg = results[served_name].metrics["ndcg"]
            above = sorted(n for n, v in ablations.items() if v > served_ndcg)
            notes.append(f"{served_name} NDCG@{k} {served_ndcg:.4f} >= tailcast without any one source "
                         f"({len(ablations)} measured, best {max(ablations.values()):.4f}): "
                         f"**{'no' if above else 'yes'}**" + (f" (above it: {', '.join(above)})" if above else ""))
            def listed(gains: Mapping[str, tuple[float, float]]) -> str:
                return "; ".join(f"{n.removeprefix(served_name + ' ')} {m:+.4f} ± {se:.4f}"
                                 + (" **above**" if m > 2 * se else "") for n, (m, se) in gains.items())

            # the same users, so the paired difference says how much of a gap is noise
            gains = {n: paired_gain(ranks_of[n], ranks_of[served_name], k) for n in ablations}
            notes.append(f"paired per-user NDCG@{k} difference, ablation minus {served_name} (mean ± standard "
                         "error; above 2 standard errors = the source costs accuracy): " + listed(gains))
            # the same sources switched off in the served ranker, trained with them: what the source gate can do
            served_core = rows[0][2]
            masked = {}
            for n in ablations:
                source = n.removeprefix(served_name + " no ")
                served_core.recommender.off = frozenset({"vae" if source == "VAE" else source})
                masked[n] = paired_gain(test_ranks(served_core, rows[0][1].name), ranks_of[served_name], k)
            served_core.recommender.off = frozenset()
            notes.append(f"the same sources masked in {served_name}'s ranker (trained with every source; the source "
                         "off in its lists, as the source gate leaves one out), paired difference: " + listed(masked))
        notes.append("tailcast in leave-one-out: the stream minus each user's test event is replayed through the "
                     "scorer's micro-batches (each user's last train event, then their validation event, learned in "
                     "a seeded shuffle, all users' at once, every user re-scored between them), then one top-k list "
                     "per user; ranks beyond k are 'not in the list' "
                     "(HR@k/NDCG@k exact), and a target repeating a history item is a miss for tailcast"
                     + ("; tailcast serves the Transformer trained here (and the Mult-VAE, off in the 'no VAE' rows) "
                        "as its batch candidate sources, installed after the train part (trained on it: the ranker learns their "
                        "weight on the validation events, which they were not trained on) and refreshed before the "
                        "test lists (trained on the validation events too)" if batch_model is not None
                        else ""))
    return results, notes
