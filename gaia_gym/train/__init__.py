"""Training: one loop (`train`, a `Trainer` run) for every gaia_gym model that has `compute_loss(batch)`."""

from gaia_gym.train.loop import TrainConfig, Trainer, data_seed, lr_at, train

from gaia_gym.errors import ResumeError, TrainingError

__all__ = ["ResumeError", "TrainConfig", "Trainer", "TrainingError", "data_seed", "lr_at", "train"]
