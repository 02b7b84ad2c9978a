"""The card beside a trained model's weights (model.json next to model.safetensors): how it was
trained, on what, for how long and on which machine, what it scored, and the weights' sha256.

A second training phase (`train --init earlier.safetensors`) keeps the whole chain: its card counts
the epochs and training time of every phase and nests the earlier card as "previous_phase".
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .data import ImageSet
from .files import sha256_file
from .train import EvalResult, TrainConfig, hardware_name, pick_device

PREVIOUS_KEYS = ("recipe", "epochs", "phase_epochs", "training_time_s", "hardware", "test_accuracy", "sha256",
                 "trained_on", "previous_phase")


def card_path(weights: str | os.PathLike) -> Path:
    """Where a model's card lives: beside its weights, with the suffix .json."""
    return Path(weights).with_suffix(".json")


def previous_card(weights: str | os.PathLike) -> dict:
    """The card of the model a new phase starts from (only its file name when it has none), with the
    sha256 of its weights."""
    card = card_path(weights)
    previous = json.loads(card.read_text()) if card.exists() else {"weights": Path(weights).name}
    previous["sha256"] = sha256_file(weights)
    return previous


def training_card(weights: str | os.PathLike, arch: str, width: float, config: TrainConfig, train_set: ImageSet,
                  test_set: ImageSet, result: EvalResult, elapsed_s: float, previous: dict | None = None) -> dict:
    """The card of a finished run whose weights are saved at `weights`. Epochs and training time add up
    over the phases; `previous` (from previous_card) is the phase this run continued."""
    weights = Path(weights)
    card = {
        "arch": arch, "width": width, "weights": weights.name,
        "recipe": {**config.to_dict(), "optimizer": "SGD (Nesterov)", "augmentation": "pad-4 random crop + flip",
                   "train_images": len(train_set)},
        "epochs": config.epochs + (previous or {}).get("epochs", 0), "seed": config.seed,
        "training_time_s": round(elapsed_s + (previous or {}).get("training_time_s", 0), 1),
        "hardware": hardware_name(pick_device(config.device)),
        "torch": torch.__version__,
        "test_set": test_set.name, "test_images": result.images, "test_accuracy": round(result.accuracy, 4),
        "sha256": sha256_file(weights),
        "trained_on": time.strftime("%Y-%m-%d"),
    }
    if previous:
        card["recipe"]["phase"] = previous.get("recipe", {}).get("phase", 1) + 1
        card["phase_epochs"] = config.epochs
        card["previous_phase"] = {k: previous[k] for k in PREVIOUS_KEYS if k in previous}
    return card


def write_card(weights: str | os.PathLike, card: dict) -> Path:
    """Write `card` beside the weights; returns its path."""
    path = card_path(weights)
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path
