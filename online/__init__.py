"""Incremental models and long-tail metrics: pure numpy/river computation, no Kafka, no I/O."""

from online.ab import ArmCounts, Impression, ImpressionLedger, wilson
from online.arms import ArmAssigner, ArmConfig, ArmSpecError, parse_arms
from online.base import SOURCES, Candidate, OnlineModel, learn_many
from online.blender import FeedbackBlender
from online.content import ContentNeighbours, ShapeMismatchError, TagVectoriser
from online.covisit import CoVisitation
from online.exposure import ExposureWindow
from online.headtail import ItemWindow, head_positions, head_size
from online.metrics import (APLT, NDCG, Coverage, ExposureGini, HitRate, Metrics, Novelty, Rolling, Shown, TailShare,
                            gini, lorenz_curve)
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.prequential import ArmMetrics, Outcome, PrequentialMetrics, PrequentialPairer, hit_rank
from online.recommender import OnlineRecommender, UnknownArmError, UnknownSourceError
from online.rerank import TailBoost, TailReranker, appetite_from_counts
from online.synthetic import SyntheticData, generate

__all__ = [
    "APLT", "SOURCES", "ArmAssigner", "ArmConfig", "ArmCounts", "ArmMetrics", "ArmSpecError", "Candidate",
    "CoVisitation", "ContentNeighbours", "Coverage", "DecayedPopularity", "ExposureGini", "ExposureWindow",
    "FeedbackBlender", "HitRate", "Impression", "ImpressionLedger", "ItemWindow", "Metrics", "NDCG", "Novelty", "OnlineMF", "OnlineModel",
    "OnlineRecommender", "Outcome", "PrequentialMetrics", "PrequentialPairer", "Rolling",
    "ShapeMismatchError", "Shown", "SyntheticData", "TagVectoriser", "TailBoost", "TailReranker", "TailShare",
    "UnknownArmError", "UnknownSourceError", "generate", "gini", "head_positions", "head_size", "hit_rank",
    "learn_many", "lorenz_curve", "parse_arms", "appetite_from_counts", "wilson",
]
