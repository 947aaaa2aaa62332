"""``tailcast evaluate``: replay a dataset through tailcast and baselines; write a side-by-side report.

    tailcast evaluate --dataset PATH --out DIR [--mode offline|live|loo] [--limit N] [--seed S]
    python -m streams.evaluate --dataset PATH --out DIR [same options] [the extra options below]

Modes (docs/design.md §5): ``offline``, micro-batches of ``--batch`` events (1: a list after every event)
through the worker's and the scorer's own logic for tailcast at each ``--strengths`` and the baselines
(:mod:`streams.evaluation.systems`), with a batch model frozen or retrained every ``--refresh-every`` events;
``live``, the real worker and scorer on a broker, per A/B arm; ``loo``, leave-one-out ranking. Writes
``report.json``, ``report.md`` (with the §7 checks), ``run.json``, PNG plots and ``recommendations.jsonl``
to ``--out``; deterministic (``--seed``); ``--warmup F``: the first fraction F trains but is not scored.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from streams.config import Settings

__all__ = ["add_arguments", "run_evaluate", "main", "DEFAULT_STRENGTHS", "DEFAULT_BOOSTS"]

DEFAULT_STRENGTHS = "0,0.25,0.5,1"
DEFAULT_BOOSTS = "0.5,1,2,4"


def add_arguments(p: argparse.ArgumentParser, *, base: bool = False) -> argparse.ArgumentParser:
    """Declare ``evaluate``'s options on ``p`` (``base=True`` also adds --dataset/--out/--limit/--mode/--seed)."""
    if base:
        p.add_argument("--dataset", required=True, help="MovieLens dir/file, CSV user_id,item_id,ts[,event], or "
                       "synthetic[:USERS,ITEMS,EVENTS[,SEED]] (the built-in long-tail stream)")
        p.add_argument("--out", default="out/evaluate", help="output folder")
        p.add_argument("--limit", type=int, default=None, help="first N events (time order)")
        p.add_argument("--mode", choices=("live", "offline", "loo"), default="live")
        p.add_argument("--seed", type=int, default=0,
                       help="training draws: the online models' (0 = the live scorer's), the Transformer's and the "
                            "Mult-VAE's, and leave-one-out tie-breaks; repeat a run with other seeds to see the spread")
    p.add_argument("--batch", type=int, default=None,
                   help="micro-batch (events) of the offline replay: default 1 = fresh pairing (docs/design.md §5: each "
                        "event is paired with the list made after the user's previous event), in offline and live "
                        "mode; larger = a coarser stress option (more stale pairings, faster). loo mode: default 256")
    p.add_argument("--workers", type=int, default=2,
                   help="offline/live: processes replaying the offline systems (2: the baselines run in a second "
                        "process beside tailcast; results are the same as with 1)")
    p.add_argument("--scorers", type=int, default=1,
                   help="offline: scorers serving each tailcast system, splitting the partitions as `tailcast "
                        "scorer` instances do (each learns from its own users' events only); 1 to the partitions")
    p.add_argument("--strengths", default=DEFAULT_STRENGTHS,
                   help="tailcast re-ranking strengths to sweep, one forced arm each (comma list)")
    p.add_argument("--boosts", default=DEFAULT_BOOSTS, help="TailBoost λ values (comma list; ItemCF = λ 0)")
    p.add_argument("--checkpoint", default=None, help="Transformer checkpoint file or registry folder")
    p.add_argument("--train-transformer", type=float, default=0.0, metavar="SECONDS",
                   help="train a Transformer here for this many seconds (offline/live: on the warm-up part; loo: on "
                        "the train part for the validation lists, then again with the validation events)")
    p.add_argument("--train-vae", type=float, default=0.0, metavar="SECONDS",
                   help="with --train-transformer: also train a Mult-VAE for this many seconds and serve it as the "
                        "vae source; adds 'tailcast[s] no VAE' and 'Mult-VAE' rows (loo: a Mult-VAE row)")
    p.add_argument("--refresh-every", type=int, default=0, metavar="N",
                   help="offline, with --train-transformer: retrain the Transformer (and the Mult-VAE with "
                        "--train-vae) every N events on all events so far as the trainer does (from scratch; with "
                        "item texts, ids-only and text encoders, the better kept), each with those budgets, and "
                        "swap it into every system that serves it (as deployed: docs/design.md §5); 0 = train once "
                        "on the warm-up part and freeze it. Warm-up defaults to 0 here")
    p.add_argument("--ablate", action="store_true",
                   help="loo: add a tailcast row with each candidate source off in turn (at the first strength), "
                        "retrained without it; the report also masks each in the served ranker (not retrained)")
    p.add_argument("--augment-cap", type=int, default=0, metavar="N",
                   help="offline/live with --train-vae: train the Transformer with up to N Mult-VAE items prepended "
                        "to each user with <= 5 events (models.augment); 0 = off")
    p.add_argument("--augment-weight", type=float, default=0.5, help="loss weight of those synthetic items")
    p.add_argument("--warmup", type=float, default=None, metavar="FRACTION",
                   help="first fraction of the stream trains but is not scored (default 0.2 with "
                        "--train-transformer, else 0)")
    p.add_argument("--rate", type=float, default=1000.0, help="live: replay rate, events/s")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="live: seconds to wait after the replay for every user's final list")
    p.add_argument("--chunks", type=int, default=10, help="chunks for the metrics-over-time plot")
    p.add_argument("--progress-every", type=int, default=20_000, help="events between progress lines")
    p.add_argument("--lists", choices=("tailcast", "all", "none"), default="tailcast",
                   help="offline: which systems' lists go to recommendations.jsonl")
    p.add_argument("--device", default="auto", help="torch device for the Transformer")
    p.add_argument("--workdir", default=None, help="live: folder for broker/worker/scorer logs (default: temp)")
    return p


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"tailcast evaluate: expected a comma list of numbers, got {text!r}") from None


def _command(args: argparse.Namespace) -> str:
    given = getattr(args, "command_line", None)
    if given:
        return given
    prog = Path(sys.argv[0]).name
    if prog in ("tailcast", "cli.py"):
        return shlex.join(["tailcast", *sys.argv[1:]])
    if prog == "evaluate.py" or prog.startswith("__main__"):
        return shlex.join([".venv/bin/python", "-m", "streams.evaluate", *sys.argv[1:]])
    return shlex.join(sys.argv)


def _text_cache_dir() -> Path:
    """Where encoded item texts are kept between runs: ``$XDG_CACHE_HOME/tailcast/text-vectors``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tailcast" / "text-vectors"


def item_text_vectors(settings: Settings, item_text: dict[str, str], log) -> tuple[list[str], np.ndarray] | None:
    """Item vectors exactly as the scorer's catalogue task makes them from ``replay``'s item records, cached
    in :func:`_text_cache_dir` (keyed by the encoder and every id and text): encoding takes minutes."""
    import hashlib

    if not item_text:
        return None
    from streams.records import ItemRecord

    t = time.perf_counter()
    encoder = settings.scorer.text_encoder
    ids = sorted(item_text)
    texts = [ItemRecord(i, item_text[i].split(". ")[0], item_text[i], ()).content() for i in ids]
    key = hashlib.sha256(orjson.dumps([encoder, ids, texts])).hexdigest()[:32]
    path = _text_cache_dir() / f"{key}.npy"
    if path.exists():
        vecs = np.load(path)
        if vecs.shape[0] == len(ids):
            log(f"  item text vectors of {len(ids)} items read from {path}")
            return ids, vecs
    from streams.agents.serving import TextVectors

    enc = TextVectors(encoder, settings.scorer.device)
    vecs = np.asarray(enc.encode(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)  # atomic: a concurrent run reads a whole file or none
    log(f"  encoded {len(ids)} item texts with {encoder} in {time.perf_counter() - t:.0f}s (cached in {path})")
    return ids, vecs


class _Jsonl:
    def __init__(self, path: Path) -> None:
        self.fh = path.open("wb")
        self.n = 0

    def __call__(self, rec) -> None:
        d = rec if isinstance(rec, dict) else rec.to_dict()
        self.fh.write(orjson.dumps({k: v for k, v in d.items() if not k.startswith("_")}) + b"\n")
        self.n += 1

    def close(self) -> None:
        self.fh.close()


def _code_version() -> str:
    """The git commit of the code that ran, with ``+dirty`` when tracked files were modified."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return commit + ("+dirty" if dirty else "")


def _ndcg(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _trained(h: dict) -> str:
    """One training's figures (a ``Refresher.history`` entry), for the report's notes."""
    return (f"{h['events']} events, {h['items']} items, the {h['variant']} encoder kept (validation NDCG@10 "
            + ", ".join(f"{k} {_ndcg(v)}" for k, v in h["variants_valid_ndcg"].items()) + f"), {h['epochs']} epochs"
            + (f"; Mult-VAE {h['vae_epochs']} epochs, best validation NDCG@10 {_ndcg(h['vae_valid_ndcg'])}"
               if h["vae_epochs"] else ""))


def _pairing_line(name: str, m: dict) -> str:
    return (f"  {name}: evaluated {m['evaluated']} events: exact {m['exact']}, stale {m['stale']} (coalesced: the "
            f"user's previous event fell in the same micro-batch), none {m['none']} ({m['none_first_event']} first "
            f"events of a user, {m['none_later']} later events with no list yet)")


def run_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from streams.datasets import load_dataset

    from .evaluation.harness import prepare_events, run_offline
    from .evaluation.report import write_report
    from .evaluation.systems import KINDS, default_systems

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    seed = int(args.seed)
    random.seed(seed)
    np.random.seed(seed)
    mode = args.mode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = _command(args)
    ds = load_dataset(args.dataset, limit=args.limit)
    stream = prepare_events(ds.events, max_event_bytes=settings.worker.max_event_bytes)
    n = len(stream.events)
    n_users = len(stream.final_counts)
    log(f"evaluate [{mode}] {ds.name}: {n} events, {n_users} users, {ds.n_items} items"
        + (f" (first {args.limit} events)" if args.limit else "")
        + (f"; {sum(stream.rejected.values())} events rejected at the edge: {stream.rejected}" if stream.rejected else ""))
    batch = args.batch
    batch = (256 if mode == "loo" else 1) if batch is None else int(batch)  # fresh pairing unless asked
    if batch < 1:
        raise SystemExit(f"tailcast evaluate: --batch must be >= 1, got {batch}")
    workers = int(args.workers)
    if workers not in (1, 2):
        raise SystemExit(f"tailcast evaluate: --workers must be 1 or 2, got {workers}")
    scorers = int(args.scorers)
    if not 1 <= scorers <= settings.kafka.partitions or (scorers > 1 and mode != "offline"):
        raise SystemExit(f"tailcast evaluate: --scorers must be 1 to {settings.kafka.partitions} (the partitions), "
                         f"and only in offline mode; got {scorers} ({mode})")
    train_s = float(args.train_transformer)
    refresh_every = int(args.refresh_every)
    if refresh_every < 0:
        raise SystemExit(f"tailcast evaluate: --refresh-every must be >= 0, got {refresh_every}")
    if refresh_every and mode != "offline":
        raise SystemExit("tailcast evaluate: --refresh-every is for --mode offline")
    if refresh_every and (args.checkpoint or train_s <= 0):
        raise SystemExit("tailcast evaluate: --refresh-every trains its own models: give --train-transformer "
                         "SECONDS (the budget of each refresh) and no --checkpoint")
    strengths = _floats(args.strengths)
    boosts = _floats(args.boosts)
    device = args.device
    vae_s = float(args.train_vae)
    augment = {"augment_cap": int(args.augment_cap), "augment_weight": float(args.augment_weight)}
    notes = [f"dataset {args.dataset}: {n} events, {n_users} users, {ds.n_items} items"
             + (f", limited to the first {args.limit} events in time order" if args.limit else ""),
             "pairing: event j of a user is scored against the user's latest list with user_event_count <= j-1 "
             "(exact = j-1; stale = older, the previous event was coalesced in the same micro-batch; none = no list "
             "yet, counted as a miss); window = the whole stream",
             "head/tail for the metrics: top 20% of active items by count over the events so far (docs/design.md §4)",
             "TailBoost: online.rerank.TailBoost; CoVisit-raw = online.covisit.CoVisitation.transitions() "
             "(plain transition counts, lookback 5, forward 1 / backward 0.5, score = sum over the user's last 5 "
             "distinct items of W[h_r][j]/r); the baselines never recommend an item the user consumed (their own "
             "exact per-user sets, all history) and are topped up with window MostPop when short of k",
             "consumed_share: share of recommended top-k slots holding an item the user had consumed before the list",
             f"--seed {seed}: the online models' training draws (build_recommender; 0 = the live scorer's; MF "
             "alone's too), Transformer and Mult-VAE training, leave-one-out tie-breaks"]
    # the code this process runs: read at the start (a commit made during a long run is not in it)
    code = _code_version()
    meta = {"dataset": str(args.dataset), "mode": mode, "events": n, "users": n_users, "items": ds.n_items,
            "limit": args.limit, "seed": seed, "k": settings.scorer.k, "rejected": stream.rejected, "code": code}
    text_vectors = item_text_vectors(settings, ds.item_text, log) if ds.item_text else None
    trainer = None  # the batch models trained here, as the trainer trains them
    if train_s > 0 and not args.checkpoint:
        from .evaluation.transformer import Refresher

        catalogue = dict(zip(text_vectors[0], text_vectors[1])) if text_vectors is not None else {}
        trainer = Refresher(seconds=train_s, vae_seconds=vae_s, seed=seed, device=device, **augment,
                            max_len=settings.worker.history_len, text_vectors=catalogue, log_line=log)
        if trainer.augment_cap:
            notes.append(f"each Transformer trained on sequences augmented from the Mult-VAE trained with it: up to "
                         f"{trainer.augment_cap} items per user with <= 5 events, weight {trainer.augment_weight}")

    if mode == "loo":
        from .evaluation.loo import run_loo

        results, loo_notes = run_loo(stream, settings, strengths=strengths, seed=seed, trainer=trainer, batch=batch,
                                     text_vectors=text_vectors, ablate=bool(args.ablate), log=log)
        (out / "recommendations.jsonl").write_bytes(b"")
        notes += loo_notes + ["recommendations.jsonl is empty in loo mode: no stream of lists is paired"]
        write_report(out, results, command=command, title=f"{ds.name} leave-one-out", notes=notes, meta=meta,
                     loo=True)
        log((out / "report.md").read_text())
        return 0

    # the Transformer: a given checkpoint, or one trained on the warm-up part, or one refreshed every N events
    model = None
    refresher = None
    warmup = args.warmup
    if refresh_every:
        refresher = trainer
        points, due = [], refresh_every  # the harness's schedule: the first micro-batch start at or after kN
        while (at := -(-due // batch) * batch) < n:
            points.append(at)
            due = (at // refresh_every + 1) * refresh_every
        notes.append(f"batch models AS DEPLOYED (--refresh-every {refresh_every}): the Transformer"
                     + (" and the Mult-VAE are" if refresher.vae_seconds > 0 else " is")
                     + " retrained from scratch, as the trainer does (models.refresh.fit_refresh"
                     + (", item text 'auto': an ids-only and a text encoder, the better on the newest events kept and "
                        "refit on all; the text one names every catalogue item through its text" if trainer.text_vectors
                        else ", ids "
                        "only: no item texts") + f") at events {', '.join(map(str, points)) or '(none: the stream is shorter)'} "
                     f"on ALL events before that point (budget {train_s:g}s"
                     + (f" + {refresher.vae_seconds:g}s Mult-VAE" if refresher.vae_seconds > 0 else "")
                     + " an encoder) and swapped into tailcast, 'no VAE', "
                     "Transformer and Mult-VAE between micro-batches, then every active user is re-scored "
                     "(ScorerCore.swap_model + rescore_active, as the live scorer); a model never trains on an "
                     "event at or after the point where it starts serving. Before the first refresh these "
                     "systems serve without a batch model (the Transformer and Mult-VAE rows: the MostPop top-up)")
        meta["batch_models"] = f"refreshed every {refresh_every} events (as deployed)"
        meta["refresh_every"] = refresh_every
    elif args.checkpoint:
        from .evaluation.transformer import load_model

        model = load_model(args.checkpoint, device=device, quantize=settings.scorer.quantize)
        notes.append(f"Transformer: checkpoint {args.checkpoint} (version {model.version}), frozen for the run")
        meta["batch_models"] = "checkpoint (frozen)"
    elif trainer is not None:
        warmup = 0.2 if warmup is None else warmup
        head = stream.events[: int(warmup * n)]
        model = trainer(head)
        notes.append(f"batch models FROZEN: trained here as the trainer does on the first {len(head)} events (the "
                     f"warm-up, not scored): {_trained(trainer.history[-1])}; frozen afterwards (items first seen "
                     "later are unknown to an ids-only Transformer; --refresh-every N evaluates them as deployed)")
        meta["batch_models"] = "trained on the warm-up (frozen)"
    else:
        notes.append("Transformer without tail re-ranking: SKIPPED (no --checkpoint, no --train-transformer)")
    warmup = 0.0 if warmup is None else float(warmup)
    if not 0.0 <= warmup < 1.0:
        raise SystemExit(f"tailcast evaluate: --warmup must be in [0, 1), got {warmup}")
    warmup_events = int(warmup * n)
    if warmup_events:
        notes.append(f"warm-up: the first {warmup_events} events ({100 * warmup:.0f}%) train every system and are "
                     f"not scored; metrics are over the last {n - warmup_events} events")
    meta["warmup_events"] = warmup_events
    meta["scorers"] = scorers
    specs = default_systems(strengths, boosts, transformer=model is not None or refresher is not None,
                            vae=getattr(model, "vae", None) is not None
                            or (refresher is not None and refresher.vae_seconds > 0), text=text_vectors is not None)

    results = {}
    refreshes = []
    lists = _Jsonl(out / "recommendations.jsonl")
    try:
        if mode == "live":
            from .evaluation.live import run_live, score_live

            rate = float(args.rate)
            log(f"live: worker + scorer, replay at {rate:.0f} events/s")
            consumed, info = run_live(settings, stream, ds.item_text, rate=rate, timeout=float(args.timeout),
                                      workdir=args.workdir, log=log)
            for rec in consumed:
                lists(rec)
            live_results, live_info = score_live(stream, consumed, settings, n_chunks=int(args.chunks),
                                                 pseudonymize_key=settings.worker.pseudonymize_key)
            results.update(live_results)
            meta["live"] = {**info, **live_info, "rate": rate, "lists": len(consumed)}
            notes.append(f"live: {len(consumed)} lists consumed from `recommendations`; replay {info['replay_seconds']}s, "
                         f"complete={info['complete']}; per-arm systems use TAILCAST_ARMS "
                         f"({', '.join(f'{a.name}:{a.rerank_strength}' for a in settings.scorer.arms)}); every event of a "
                         "user is scored in that user's arm; the offline systems below ran on the same stream")
            if warmup_events:
                notes.append("live arms are scored on the whole stream (warm-up applies to the offline systems)")
        log(f"offline: {len(specs)} systems, micro-batches of {batch} events"
            + (" (fresh pairing)" if batch == 1 else ""))
        sink_kinds = {"tailcast": ("tailcast",), "all": KINDS, "none": ()}[args.lists]
        offline = run_offline(stream, specs, settings, batch=batch, warmup_events=warmup_events,
                              text_vectors=text_vectors, model=model, n_chunks=int(args.chunks),
                              progress_every=int(args.progress_every),
                              lists_sink=lists if mode == "offline" else None, sink_kinds=sink_kinds, log=log,
                              workers=workers, refresh_every=refresh_every if refresher else 0,
                              refresher=refresher, refreshes=refreshes, scorers=scorers, seed=seed)
        results.update(offline)
    finally:
        lists.close()
    if refresher is not None:
        meta["refreshes"] = [{**h, "at": r.at, "train_seconds": r.train_seconds, "rescored": r.rescored}
                             for h, r in zip(refresher.history, refreshes)]
        for h, r in zip(refresher.history, refreshes):
            notes.append(f"refresh at event {r.at}: {h['version']} on {_trained(h)}; {r.train_seconds:.0f}s; "
                         f"{sum(r.rescored.values())} lists re-scored after the swap")
    first = next(iter(offline.values()))
    learned = first.metrics["learned_events"]
    if learned < n:
        notes.append(f"{n - learned} events were never learned by the online models (expected 0: a score "
                     "request carries every new event of its micro-batch and the scorer learns each once). "
                     "They are still scored as targets")
    from online.rowindex import ANN_MIN_ITEMS

    if ds.n_items >= ANN_MIN_ITEMS:
        notes.append(f"{ds.n_items:,} items >= ANN_MIN_ITEMS ({ANN_MIN_ITEMS:,}): online MF and content retrieve "
                     "through faiss indexes built in the call, as the live scorer does in a thread "
                     "(docs/decisions.md, '#16 MF and content from 50,000 items')")
    for name, r in results.items():
        aucs = {key[len("blender_auc_"):]: v for key, v in r.metrics.items() if key.startswith("blender_auc_")}
        if "blend" in aucs:
            best = max((v for key, v in aucs.items() if key != "blend"), default=float("nan"))
            notes.append(f"{name}: feedback blender online ROC AUC {aucs['blend']:.4f} (best single source "
                         f"{best:.4f}; " + ", ".join(f"{key} {v:.4f}" for key, v in aucs.items() if key != "blend")
                         + f"; over {r.metrics.get('blender_window_examples', 0):,} labelled examples, "
                         f"{r.metrics.get('blender_window_clicks', 0):,} of them clicked)")
        left_out = [key[len("served_"):] for key, v in r.metrics.items() if key.startswith("served_") and not v]
        if any(key.startswith("served_") for key in r.metrics):
            notes.append(f"{name}: source gate at the end of the replay, left out (segment_source): "
                         + (", ".join(left_out) or "none"))
    for name, r in results.items():
        if r.kind == "live" or name == first.name:
            log(_pairing_line(name, r.metrics))
    meta["seconds"] = round(time.perf_counter() - started, 1)
    intro = [f"Dataset `{args.dataset}` ({ds.name}): {n} events, {n_users} users, {ds.n_items} items"
             + (f", first {args.limit} events" if args.limit else "") + f"; mode {mode}; k = {settings.scorer.k}; "
             f"offline micro-batch {batch} events; {meta['seconds']:.0f}s; code {meta['code']}"
             + (f"; batch models {meta['batch_models']}" if "batch_models" in meta else "")
             + (f"; tailcast served by {scorers} scorers splitting {settings.kafka.partitions} partitions"
                if scorers > 1 else "") + "."]
    write_report(out, results, command=command, title=f"{ds.name} {mode}", intro=intro, notes=notes, meta=meta)
    log((out / "report.md").read_text())
    log(f"wrote {out}/report.json, report.md, run.json, recommendations.jsonl ({lists.n} lists) and PNG plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    from streams.config import ConfigError, load_settings

    parser = add_arguments(argparse.ArgumentParser(prog="python -m streams.evaluate", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), base=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tailcast: configuration error: {exc}", file=sys.stderr)
        return 2
    return run_evaluate(settings, args)


if __name__ == "__main__":
    sys.exit(main())
