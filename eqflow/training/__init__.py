"""Losses, the training loop and whole training runs."""
from .losses import maximum_likelihood_loss, reverse_kl_loss
from .trainer import (Trainer, TrainingInterrupted, load_model_weights, make_scheduler, save_checkpoint_atomic,
                      seed_everything)
from .run import check_device, prepare_run_folder, read_metrics, resolve_reference, run_training
