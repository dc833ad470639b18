"""The train (retrain) pass and the test (evaluate) pass."""

from .train import TestArgs, TrainArgs, check_train_args, parse_test_args, parse_train_args, test_pass, train_transform_pass

__all__ = ["TestArgs", "TrainArgs", "check_train_args", "parse_test_args", "parse_train_args", "test_pass",
           "train_transform_pass"]
