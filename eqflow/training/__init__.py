"""Losses, the training loop and whole training runs."""
from .losses import maximum_likelihood_loss, reverse_kl_loss
from .trainer import Trainer, make_scheduler, save_checkpoint_atomic, seed_everything
from .run import resolve_reference, run_training
