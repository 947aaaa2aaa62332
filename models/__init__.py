"""Torch models: the Transformer sequence encoder, the text encoder, the Mult-VAE, augmentation of sparse
users, training, the periodic refresh, checkpoints, batched scoring.

No Kafka here; ``streams/`` wires these to topics. Importing this package imports transformers (a few s).
"""

from models.augment import AugmentConfig, augment_sequences
from models.checkpoint import Checkpoint, CheckpointError, CheckpointRegistry, load_checkpoint, save_checkpoint
from models.content import ItemTextCache, TextEncoder, TextEncoderLoadError
from models.device import DeviceUnavailableError, choose_device
from models.refresh import RefreshConfig, RefreshResult, fit_refresh
from models.scoring import BatchScorer
from models.sequence import ConfigError, SeqEncoder, SeqEncoderConfig, pad_batch
from models.train import EpochLog, TrainConfig, TrainResult, evaluate_model, train
from models.vae import MultVAE, MultVAEConfig, fit_vae, save_vae, score_users
from models.vocab import PAD, ItemVocab

__all__ = [
    "PAD", "AugmentConfig", "augment_sequences", "BatchScorer", "Checkpoint", "CheckpointError", "CheckpointRegistry", "ConfigError",
    "DeviceUnavailableError", "EpochLog", "ItemTextCache", "ItemVocab", "RefreshConfig", "RefreshResult",
    "SeqEncoder", "SeqEncoderConfig", "TextEncoder", "TextEncoderLoadError", "TrainConfig", "TrainResult",
    "choose_device", "evaluate_model", "fit_refresh", "load_checkpoint", "pad_batch",
    "save_checkpoint", "train", "MultVAE", "MultVAEConfig", "fit_vae", "save_vae", "score_users",
]
