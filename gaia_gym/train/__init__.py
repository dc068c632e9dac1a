"""Training: one loop (`train`) for every gaia_gym model that has `compute_loss(batch)`."""

from gaia_gym.train.loop import TrainConfig, data_seed, lr_at, train

from gaia_gym.errors import ResumeError

__all__ = ["ResumeError", "TrainConfig", "data_seed", "lr_at", "train"]
