"""``tailcast evaluate``: the offline, live and leave-one-out evaluation harness (docs/design.md §5).

* :mod:`streams.evaluation.systems` - the compared systems behind the scorer's micro-batch logic;
* :mod:`streams.evaluation.window` - the baselines' ranked item window (MostPop, docs/design.md §4 head/tail);
* :mod:`streams.evaluation.harness` - micro-batched prequential replay and pairing;
* :mod:`streams.evaluation.live` - the same pairing over a live worker + scorer on a broker;
* :mod:`streams.evaluation.loo` - leave-one-out full-catalogue ranking (``models/loo.py``);
* :mod:`streams.evaluation.report` - ``report.json``, ``report.md`` and the PNG plots.

The command itself is :mod:`streams.evaluate`.
"""
