from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from online.arms import ArmAssigner, ArmConfig, ArmSpecError, parse_arms


def test_assignment_is_a_fixed_function_of_salt_and_user() -> None:
    """Pinned values: blake2b is stable across processes, runs and machines (Python's hash() is not)."""
    a = ArmAssigner({"control": 0.5, "tail": 0.5})
    assert [a.assign(f"user-{i}") for i in range(8)] == [
        "control", "control", "tail", "tail", "control", "tail", "control", "control",
    ]
    assert a.position("user-0") == pytest.approx(0.22526995116813778)


def test_same_assignment_in_another_process() -> None:
    code = "from online.arms import ArmAssigner; a = ArmAssigner({'a': 1, 'b': 2}); print(','.join(a.assign(f'u{i}') for i in range(50)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    a = ArmAssigner({"a": 1, "b": 2})
    assert out.split(",") == [a.assign(f"u{i}") for i in range(50)]


def test_shares_follow_the_weights_on_10k_users() -> None:
    a = ArmAssigner({"control": 0.5, "tail": 0.3, "strong": 0.2, "off": 0.0})
    counts = Counter(a.assign(f"user-{i}") for i in range(10_000))
    assert counts["off"] == 0
    for name, w in [("control", 0.5), ("tail", 0.3), ("strong", 0.2)]:
        assert abs(counts[name] / 10_000 - w) < 0.02, counts


def test_weights_are_relative_and_salt_reshuffles() -> None:
    users = [f"u{i}" for i in range(2000)]
    assert [ArmAssigner({"a": 1, "b": 1}).assign(u) for u in users] == [ArmAssigner({"a": 5, "b": 5}).assign(u) for u in users]
    other = ArmAssigner({"a": 1, "b": 1}, salt="experiment-2")
    moved = sum(ArmAssigner({"a": 1, "b": 1}).assign(u) != other.assign(u) for u in users)
    assert 800 < moved < 1200  # independent coin flips


def test_parse_arms() -> None:
    arms = parse_arms(" control:0.5:0.0 , tail:0.5:0.3")
    assert list(arms) == [ArmConfig("control", 0.5, 0.0), ArmConfig("tail", 0.5, 0.3)]
    assigner = ArmAssigner.from_configs(arms)
    assert assigner.names == ("control", "tail") and assigner.weights == (0.5, 0.5)
    assert assigner.salt == arms.salt == "tailcast"


def test_the_salt_is_declared_with_the_arms_and_reshuffles_users() -> None:
    import pickle

    plain, salted = parse_arms("control:0.5:0.0,tail:0.5:0.3"), parse_arms("control:0.5:0.0, salt=exp-2,tail:0.5:0.3")
    assert list(salted) == list(plain) and salted.salt == "exp-2"
    assert pickle.loads(pickle.dumps(salted)).salt == "exp-2"
    a, b = ArmAssigner.from_configs(plain), ArmAssigner.from_configs(salted)
    users = [f"u{n}" for n in range(2000)]
    moved = sum(a.assign(u) != b.assign(u) for u in users) / len(users)
    assert 0.4 < moved < 0.6  # independent halves: about one user in two changes arm
    assert ArmAssigner.from_configs(salted, salt="tailcast").salt == "tailcast"
    for spec in ("salt=,control:1:0", "salt=a,salt=b,control:1:0"):
        with pytest.raises(ArmSpecError, match="salt"):
            parse_arms(spec)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("control:0.5", "'control:0.5'"),
        ("control:0.5:0.0,tail:abc:0.3", "weight 'abc'"),
        ("control:0.5:zz", "strength 'zz'"),
        ("control:0.5:1.5", "rerank_strength"),
        ("control:-1:0.0", "weight"),
        ("a:1:0,a:1:0.2", "duplicate arm name(s) ['a']"),
        ("a:0:0,b:0:0.2", "sum to 0"),
        ("a:1:0,,b:1:0", "empty arm"),
        (":1:0", "name"),
    ],
)
def test_parse_arms_names_the_bad_part(spec: str, names: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_arms(spec)
    assert isinstance(err.value, ArmSpecError) and names in str(err.value)


def test_assigner_rejects_bad_tables() -> None:
    with pytest.raises(ArmSpecError):
        ArmAssigner({})
    with pytest.raises(ArmSpecError, match="'x'"):
        ArmAssigner({"x": float("nan")})


def test_an_arm_may_switch_sources_off() -> None:
    arms = parse_arms("control:0.5:0.0,online-only:0.25:0.0:off=transformer+vae,no-mf:0.25:0.5:off= mf")
    assert [a.off for a in arms] == [frozenset(), frozenset({"transformer", "vae"}), frozenset({"mf"})]
    for spec, why in (("a:1:0:off=magic", "unknown source"), ("a:1:0:off=", "unknown source"),
                      ("a:1:0:vae", "off=SOURCE"), ("a:1:0:off=vae:x", "5 field")):
        with pytest.raises(ArmSpecError, match=why):
            parse_arms(spec)
