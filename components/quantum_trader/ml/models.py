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
import json
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


class CompiledTrees:
    """The booster's trees as padded numpy arrays, evaluated for one row without xgboost's per-call overhead.

    xgboost spends about 0.4 ms of fixed cost per ``inplace_predict`` call, more than the whole budget of one bar,
    while walking 900 depth-4 trees for one row is a few vectorised gathers. The arrays are read from the same
    JSON model the artifact stores, with xgboost's rules: float32 comparisons, ``x < condition`` goes left, a
    missing value takes the default branch, a leaf's ``split_conditions`` entry is its weight, and the margin
    of a class is its intercept plus the sum of its trees' leaves. A test checks it against xgboost on real data.
    """

    def __init__(self, model_json: bytes) -> None:
        learner = json.loads(model_json)["learner"]
        trees = learner["gradient_booster"]["model"]["trees"]
        self.classes = int(learner["learner_model_param"]["num_class"])
        base = learner["learner_model_param"]["base_score"].strip("[]")
        self.intercept = np.array([float(v) for v in base.split(",")], dtype=np.float32)
        if self.intercept.size == 1:
            self.intercept = np.repeat(self.intercept, self.classes)
        width = max(len(t["left_children"]) for t in trees)
        shape = (len(trees), width)
        self.left = np.full(shape, -1, dtype=np.int32)
        self.right = np.full(shape, -1, dtype=np.int32)
        self.feature = np.zeros(shape, dtype=np.int32)
        self.condition = np.zeros(shape, dtype=np.float32)
        self.default_left = np.zeros(shape, dtype=bool)
        for i, tree in enumerate(trees):
            if any(tree["split_type"]):
                raise ValueError("categorical splits are not supported")
            n = len(tree["left_children"])
            self.left[i, :n] = tree["left_children"]
            self.right[i, :n] = tree["right_children"]
            self.feature[i, :n] = tree["split_indices"]
            self.condition[i, :n] = np.array(tree["split_conditions"], dtype=np.float32)
            self.default_left[i, :n] = np.array(tree["default_left"], dtype=bool)
        info = np.array(learner["gradient_booster"]["model"]["tree_info"], dtype=np.int64)
        self.one_hot = np.zeros((len(trees), self.classes), dtype=np.float32)
        self.one_hot[np.arange(len(trees)), info] = 1.0
        self.depth = _max_depth(self.left, self.right)
        # Flat arrays indexed by a "slot", 2 * (tree * width + node), so one gather per level finds the next
        # node: children[slot + 1] is where "go left" leads, children[slot] the other branch, and both slots of
        # a node hold its feature, condition and default. A leaf's children are itself, so a walk may overshoot.
        own = np.arange(len(trees))[:, None] * width + np.arange(width)[None, :]
        leaf = self.left < 0
        offset = np.arange(len(trees))[:, None] * width
        left = np.where(leaf, own, self.left + offset)
        right = np.where(leaf, own, self.right + offset)
        self._children = 2 * np.stack([right.ravel(), left.ravel()], axis=1).ravel().astype(np.int64)
        self._feature = np.repeat(self.feature.ravel().astype(np.int64), 2)
        self._condition = np.repeat(self.condition.ravel(), 2)
        self._default_left = np.repeat(self.default_left.ravel(), 2)
        self._roots = 2 * (np.arange(len(trees)) * width).astype(np.int64)

    def margins(self, x: np.ndarray) -> np.ndarray:
        """Per-class margins of one row (shape (features,) or (1, features)) as shape (1, classes)."""
        return self.row_margins(np.asarray(x, dtype=np.float32).reshape(-1))

    def row_margins(self, values: np.ndarray) -> np.ndarray:
        """``margins`` of a float32 row of shape (features,), which is read, not copied."""
        slot = self._roots
        missing = bool(np.isnan(values).any())
        for _ in range(self.depth):
            value = values.take(self._feature.take(slot))
            go_left = value < self._condition.take(slot)
            if missing:
                go_left = np.where(np.isnan(value), self._default_left.take(slot), go_left)
            slot = self._children.take(slot + go_left)
        leaves = self._condition.take(slot)
        return (self.intercept + leaves @ self.one_hot).astype(np.float64)[None, :]


def _max_depth(left: np.ndarray, right: np.ndarray) -> int:
    """The most splits on any path from a root to a leaf: a walk of that many steps has reached every leaf."""
    depth = np.zeros(left.shape, dtype=np.int32)
    deepest = 0
    for column in range(left.shape[1]):  # children always have larger ids than their parent in xgboost's layout
        for children in (left[:, column], right[:, column]):
            has = children >= 0
            rows = np.flatnonzero(has)
            depth[rows, children[has]] = depth[rows, column] + 1
        deepest = max(deepest, int(depth[:, column].max()))
    return deepest


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
    trees: CompiledTrees | None = None
    """The booster's trees for single rows (``CompiledTrees``); xgboost itself for batches."""

    def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(xgboost, torch) calibrated probabilities, each of shape (rows, 3)."""
        single = len(x) == 1 and self.trees is not None
        margins = self.trees.margins(x) if single else xgb_margins(self.booster, x)  # type: ignore[union-attr]
        return (
            softmax(margins, self.xgb_temperature),
            softmax(mlp_logits(self.mlp, x), self.mlp_temperature),
        )


class RowPredictor:
    """Both models of an ensemble for one vector at a time, the way ai-engine runs them per bar.

    The same arithmetic as ``Ensemble.probabilities`` on one row, bit for bit (a test checks it on real
    bars), without its per-call costs: the vector is written once into a preallocated float32 row that
    the tree walk reads and torch sees as a (1, features) tensor of the same memory; the MLP runs as its
    three ``addmm`` into preallocated tensors (what ``nn.Linear`` calls for a 2-D input) under
    ``inference_mode``, with no module dispatch, autograd bookkeeping or new tensors. Not thread-safe:
    one predictor per consumer loop.
    """

    def __init__(self, model: Ensemble) -> None:
        if model.trees is None:
            raise ValueError("the ensemble has no compiled trees")
        self.trees = model.trees
        self.xgb_temperature = model.xgb_temperature
        self.mlp_temperature = model.mlp_temperature
        mlp = model.mlp
        kinds = [type(m) for m in mlp.net]
        if kinds != [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]:  # what logits() replays
            raise ValueError(f"RowPredictor runs MarketMLP's layers, not {[k.__name__ for k in kinds]}")
        self.row = np.zeros(mlp.mean.numel(), dtype=np.float32)
        self._input = torch.from_numpy(self.row).unsqueeze(0)
        self._mean, self._scale = mlp.mean.detach(), mlp.scale.detach()
        linear = [m for m in mlp.net if isinstance(m, nn.Linear)]
        self._layers = [(layer.bias.detach(), layer.weight.detach().t()) for layer in linear]
        self._scaled = torch.empty_like(self._input)
        self._outputs = [torch.empty(1, layer.out_features) for layer in linear]

    def probabilities(self, values: tuple[float, ...] | list[float]) -> tuple[np.ndarray, np.ndarray]:
        """(xgboost, torch) calibrated probabilities of one vector's values, each of shape (1, 3)."""
        self.row[:] = values
        p_xgb = softmax(self.trees.row_margins(self.row), self.xgb_temperature)
        return p_xgb, softmax(self.logits(), self.mlp_temperature)

    def logits(self) -> np.ndarray:
        """The MLP's logits of the row last written to ``row``, shape (1, 3)."""
        with torch.inference_mode():
            hidden = torch.div(torch.sub(self._input, self._mean, out=self._scaled), self._scale, out=self._scaled)
            last = len(self._layers) - 1
            for i, ((bias, weight), out) in enumerate(zip(self._layers, self._outputs, strict=True)):
                hidden = torch.addmm(bias, hidden, weight, out=out)
                if i < last:
                    hidden.relu_()
        return hidden.numpy().astype(np.float64)
