"""The two learned models, their calibration and their in-memory (de)serialisation.

- an xgboost classifier (``multi:softprob`` over down / flat / up), histogram trees, fixed threads;
- a torch MLP over one ``market-v1`` vector, with the input standardisation as buffers of the
  module, so its ``state_dict`` is everything needed to run it (loaded with ``weights_only=True``).

Both are calibrated by temperature scaling: one scalar per model, fitted on a held-out slice
after training, divides the logits. It changes confidence, never the ranking of classes.

Reproducibility: every random choice takes the seed (xgboost's subsampling, torch's init and
shuffling), torch runs with deterministic algorithms on one thread, and xgboost's thread count is
part of the training configuration. Serialisation is to bytes; files are the caller's business.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xgboost as xgb
from torch import nn

N_CLASSES = 3


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = 7
    xgb_rounds: int = 300
    xgb_depth: int = 4
    xgb_eta: float = 0.05
    xgb_threads: int = 2
    mlp_hidden: int = 32
    mlp_epochs: int = 30
    mlp_batch: int = 512
    mlp_lr: float = 2e-3
    mlp_weight_decay: float = 1e-4


def deterministic_torch(seed: int) -> None:
    """Seed torch and make its kernels deterministic on one thread: the same data gives the same weights."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


# --- xgboost ---------------------------------------------------------------------------------------


def xgb_params(config: TrainConfig) -> dict[str, object]:
    return {
        "objective": "multi:softprob",
        "num_class": N_CLASSES,
        "eval_metric": "mlogloss",
        "tree_method": "hist",
        "max_depth": config.xgb_depth,
        "eta": config.xgb_eta,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 20,
        "lambda": 1.0,
        "nthread": config.xgb_threads,
        "seed": config.seed,
        "verbosity": 0,
    }


def train_xgboost(
    x: np.ndarray, y: np.ndarray, config: TrainConfig, progress: Callable[[int], None] | None = None
) -> xgb.Booster:
    dtrain = xgb.DMatrix(x, label=y, nthread=config.xgb_threads)
    callbacks = [_XgbProgress(progress)] if progress is not None else []
    return xgb.train(xgb_params(config), dtrain, num_boost_round=config.xgb_rounds, callbacks=callbacks)


class _XgbProgress(xgb.callback.TrainingCallback):
    def __init__(self, progress: Callable[[int], None]) -> None:
        super().__init__()
        self.progress = progress

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        self.progress(1)
        return False


def xgb_margins(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    """Raw per-class scores (logits) of the rows of ``x``."""
    return np.asarray(booster.inplace_predict(x, predict_type="margin"), dtype=np.float64).reshape(-1, N_CLASSES)


def xgb_to_bytes(booster: xgb.Booster) -> bytes:
    return bytes(booster.save_raw(raw_format="json"))


def xgb_from_bytes(data: bytes, threads: int = 1) -> xgb.Booster:
    booster = xgb.Booster(params={"nthread": threads})
    booster.load_model(bytearray(data))
    return booster


# --- torch -----------------------------------------------------------------------------------------


class MarketMLP(nn.Module):
    """Standardise, two hidden layers, three logits. The scaler is part of the weights."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float32))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.scale)


def train_mlp(
    x: np.ndarray, y: np.ndarray, config: TrainConfig, progress: Callable[[int], None] | None = None
) -> MarketMLP:
    deterministic_torch(config.seed)
    model = MarketMLP(x.shape[1], config.mlp_hidden)
    std = x.std(axis=0)
    model.mean.copy_(torch.from_numpy(x.mean(axis=0).astype(np.float32)))
    model.scale.copy_(torch.from_numpy(np.where(std > 0, std, 1.0).astype(np.float32)))
    features = torch.from_numpy(x.astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.mlp_lr, weight_decay=config.mlp_weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.mlp_epochs):
        order = torch.randperm(len(features), generator=shuffle)
        for start in range(0, len(order), config.mlp_batch):
            batch = order[start : start + config.mlp_batch]
            optimiser.zero_grad()
            loss = loss_fn(model(features[batch]), labels[batch])
            loss.backward()
            optimiser.step()
        if progress is not None:
            progress(1)
    model.eval()
    return model


def mlp_logits(model: MarketMLP, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()


def mlp_to_bytes(model: MarketMLP) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def mlp_from_bytes(data: bytes, n_features: int, hidden: int) -> MarketMLP:
    model = MarketMLP(n_features, hidden)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


# --- calibration -----------------------------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.mean(np.log(picked)))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising log-loss on held-out rows (golden-section search on log T in [-3, 3])."""
    if len(y) == 0:
        return 1.0
    low, high = -3.0, 3.0
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return log_loss(softmax(logits, math.exp(log_t)), y)

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    return float(round(math.exp((low + high) / 2), 6))


@dataclass
class Ensemble:
    """Both models with their temperatures: calibrated class probabilities for one or many vectors."""

    booster: xgb.Booster
    mlp: MarketMLP
    xgb_temperature: float
    mlp_temperature: float

    def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(xgboost, torch) calibrated probabilities, each of shape (rows, 3)."""
        return (
            softmax(xgb_margins(self.booster, x), self.xgb_temperature),
            softmax(mlp_logits(self.mlp, x), self.mlp_temperature),
        )
