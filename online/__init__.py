"""Incremental models and long-tail metrics: pure numpy/river computation, no Kafka, no I/O."""

from online.arms import ArmAssigner, ArmConfig, ArmSpecError, parse_arms
from online.base import SOURCES, Candidate, OnlineModel, learn_many
from online.blender import FeedbackBlender
from online.content import ContentNeighbours, ShapeMismatchError, TagVectoriser
from online.covisit import CoVisitation
from online.exposure import (APLT, Coverage, ExposureGini, ExposureWindow, ItemWindow, Novelty, TailShare, aplt,
                             coverage, gini, lorenz_curve, novelty, tail_share)
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.prequential import ArmMetrics, Outcome, PrequentialMetrics, PrequentialPairer, hit_rank
from online.recommender import ArmView, OnlineRecommender, UnknownArmError, UnknownSourceError
from online.rerank import TailBoost, TailReranker, tail_appetite
from online.synthetic import SyntheticData, generate

__all__ = [
    "APLT", "SOURCES", "ArmAssigner", "ArmConfig", "ArmMetrics", "ArmSpecError", "ArmView", "Candidate",
    "CoVisitation", "ContentNeighbours", "Coverage", "DecayedPopularity", "ExposureGini", "ExposureWindow",
    "FeedbackBlender", "ItemWindow", "Novelty", "OnlineMF", "OnlineModel", "OnlineRecommender", "Outcome",
    "PrequentialMetrics", "PrequentialPairer", "ShapeMismatchError", "SyntheticData", "TagVectoriser",
    "TailBoost", "TailReranker", "TailShare", "UnknownArmError", "UnknownSourceError", "aplt", "coverage", "generate", "gini",
    "hit_rank", "learn_many", "lorenz_curve", "novelty", "parse_arms", "tail_appetite", "tail_share",
]
