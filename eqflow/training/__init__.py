"""Losses, the training loop and whole training runs."""
# Data-free, mass-covering training pieces (issue #8).
from .flow_matching import align_pairs, draw_base, flow_matching_loss, hungarian_permutation
from .buffer import ReplayBuffer
from .weighted import weighted_flow_matching_loss, weighted_maximum_likelihood_loss
from .annealing import TemperatureLadder, geometric_ladder
from .ema import ParameterEMA
from .losses import maximum_likelihood_loss, path_gradient_kl_loss, reverse_kl_loss
from .solve_gap import training_solve_gap
from .trainer import (Trainer, TrainingInterrupted, load_model_weights, make_scheduler, save_checkpoint_atomic,
                      seed_everything)
from .run import check_device, prepare_run_folder, read_metrics, resolve_reference, run_training
