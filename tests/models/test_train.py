import numpy as np

from models.loo import MostPop, evaluate_ranking, metrics_from_ranks
from models.train import evaluate_model, make_windows


def test_learns_sequential_pattern_far_above_popularity(trained, synthetic):
    model, result = trained
    test = evaluate_model(model, *synthetic.test)
    pop = metrics_from_ranks(evaluate_ranking(MostPop(synthetic.train, n_items=100), *synthetic.test))
    assert test["hr"] > 0.8, test
    assert pop["hr"] < 0.3, pop
    assert test["ndcg"] > 2 * pop["ndcg"]


def test_model_selection_uses_validation_and_restores_best(trained, synthetic):
    model, result = trained
    scored = [h.valid_ndcg for h in result.history]
    assert all(v is not None for v in scored)
    assert result.best_valid_ndcg == max(scored)
    assert result.history[result.best_epoch - 1].improved
    # the model holds the best state, whose validation score is reproducible
    again = evaluate_model(model, *synthetic.valid)["ndcg"]
    assert np.isclose(again, result.best_valid_ndcg)


def test_windows_cover_every_transition_once():
    seqs = [list(range(1, 24)), [5, 6], [7]]
    w = make_windows(seqs, max_len=5)
    inputs, targets = w[:, :-1], w[:, 1:]
    pairs = sorted((int(a), int(b)) for a, b in zip(inputs.flatten(), targets.flatten()) if a and b)
    expected = sorted([(i, i + 1) for i in range(1, 23)] + [(5, 6)])
    assert pairs == expected
