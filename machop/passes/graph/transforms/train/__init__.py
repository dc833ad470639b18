"""The train (retrain) pass and the test (evaluate) pass."""

from .train import parse_test_args, parse_train_args, test_pass, train_transform_pass

__all__ = ["train_transform_pass", "parse_train_args", "test_pass", "parse_test_args"]
