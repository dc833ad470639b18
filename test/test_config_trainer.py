"""The Lightning keys of the config (precision, max_steps, accumulate_grad_batches, limit_*_batches):
validation, a train step's trainer table, and what reaches `pl.Trainer`."""

from __future__ import annotations

import typing

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.connector import _PRECISION_INPUT
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from machop.actions.run import effective_config
from machop.actions.transform import plan
from machop.cli import action_options, build_parser, overrides_from_args
from machop.config import ConfigError, Precision, TrainSettings, load_config
from machop.training import evaluate, fit
from machop.training.trainer import build_trainer

TRAINER = "passes.train.trainer"


def test_precision_choices_are_lightnings():
    """Every value Lightning's Trainer takes, less those needing the transformer_engine package."""
    lightning = {v for group in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(group)}
    assert set(typing.get_args(Precision)) == {v for v in lightning if "transformer-engine" not in str(v)}


@pytest.mark.parametrize("key,value", [
    ("precision", "bf16-mixed"), ("precision", "16-mixed"), ("precision", "64-true"), ("precision", 32),
    ("precision", "bf16"), ("max_steps", -1), ("max_steps", 1), ("accumulate_grad_batches", 8),
    ("limit_val_batches", 0.5), ("limit_val_batches", 1.0), ("limit_val_batches", 7),
    ("limit_test_batches", 1), ("limit_train_batches", 0.1),
])
def test_top_level_key_accepted(key, value):
    got = getattr(load_config(None, {key: value}), key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("key,value,message", [
    ("precision", "fp8", "precision: must be one of '64-true', '32-true', "),
    ("precision", 8, "precision: must be one of "),
    ("precision", 32.0, "precision: must be one of "),
    ("max_steps", 0, "max_steps: must be -1 (no limit) or >= 1, got 0"),
    ("max_steps", -5, "max_steps: must be -1 (no limit) or >= 1, got -5"),
    ("max_steps", 2.5, "max_steps: must be an integer, got 2.5"),
    ("accumulate_grad_batches", 0, "accumulate_grad_batches: must be in [1, "),
    ("limit_train_batches", 0, "limit_train_batches: must be a fraction in (0, 1] or a whole number of batches >= 1"),
    ("limit_train_batches", 1.5, "limit_train_batches: must be a fraction in (0, 1]"),
    ("limit_val_batches", 0.0, "limit_val_batches: must be a fraction in (0, 1]"),
    ("limit_val_batches", -2, "limit_val_batches: must be a fraction in (0, 1]"),
    ("limit_test_batches", 2.0, "limit_test_batches: must be a fraction in (0, 1]"),
    ("limit_test_batches", "all", "limit_test_batches: must be an integer or a number, got 'all'"),
])
def test_top_level_key_refused(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: value})
    assert str(e.value).startswith(message), str(e.value)


def test_trainer_table_overrides_the_new_keys():
    table = {"precision": "bf16-mixed", "max_steps": 30, "accumulate_grad_batches": 2,
             "limit_val_batches": 0.5, "limit_test_batches": 4}
    base = TrainSettings(max_epochs=3)
    s = base.override(table, TrainSettings.TRAINER_KEYS, TRAINER)
    assert {k: getattr(s, k) for k in table} == table
    assert s.max_epochs == 3 and base.precision == "32-true" and base.max_steps == -1  # the base is not changed


@pytest.mark.parametrize("key,value", [
    ("precision", "half"), ("max_steps", 0), ("accumulate_grad_batches", -1), ("limit_val_batches", 3.5),
    ("limit_test_batches", 0),
])
def test_trainer_table_errors_name_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        TrainSettings().override({key: value}, TrainSettings.TRAINER_KEYS, TRAINER)
    assert str(e.value).startswith(f"{TRAINER}.{key}: must be ")


def test_new_keys_are_not_training_table_keys():
    with pytest.raises(ConfigError, match=r"^passes.train.training.precision: unknown key"):
        TrainSettings().override({"precision": "16-mixed"}, TrainSettings.TRAINING_KEYS, "passes.train.training")


def test_build_trainer_passes_the_settings():
    s = TrainSettings(accelerator="cpu", precision="bf16-mixed", max_steps=7, accumulate_grad_batches=3,
                      limit_train_batches=5, limit_val_batches=0.25, limit_test_batches=2)
    trainer = build_trainer(s, progress=False)
    assert trainer.precision == "bf16-mixed"
    assert trainer.strategy.precision_plugin.precision == "bf16-mixed"
    assert trainer.max_steps == 7
    assert trainer.accumulate_grad_batches == 3
    assert trainer.limit_train_batches == 5 and isinstance(trainer.limit_train_batches, int)
    assert trainer.limit_val_batches == 0.25
    assert trainer.limit_test_batches == 2


def test_build_trainer_defaults_are_lightnings():
    trainer = build_trainer(TrainSettings(accelerator="cpu"), progress=False)
    assert (trainer.precision, trainer.max_steps, trainer.accumulate_grad_batches) == ("32-true", -1, 1)
    assert trainer.limit_train_batches == trainer.limit_val_batches == trainer.limit_test_batches == 1.0


# --------------------------------------------------------------------------- on real (tiny) loops


class _Constant(nn.Module):
    """Predicts class 0 for every input; counts its forward passes in train and eval mode."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.calls = {"train": 0, "eval": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["train" if self.training else "eval"] += 1
        return self.bias.expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


class _TwoBatches(pl.LightningDataModule):
    """Val and test splits of two batches of 4: the first all class 0, the second all class 1; 64 train batches."""

    def _loader(self, n_batches: int) -> DataLoader:
        y = torch.cat([torch.zeros(4), torch.ones(4)]).long().repeat(n_batches // 2)
        return DataLoader(TensorDataset(torch.zeros(len(y), 1, 2, 2), y), batch_size=4)

    def train_dataloader(self):
        return self._loader(64)

    def val_dataloader(self):
        return self._loader(2)

    def test_dataloader(self):
        return self._loader(2)


@pytest.mark.parametrize("stage,key", [("test", "limit_test_batches"), ("val", "limit_val_batches")])
def test_evaluate_uses_the_limit_of_its_split(stage, key):
    """One batch: only the class-0 batch is seen, accuracy 1.0; both: 0.5."""
    one = TrainSettings(accelerator="cpu", **{key: 1})
    assert evaluate(_Constant(), _TwoBatches(), one, stage=stage, progress=False)[f"{stage}_acc"] == 1.0
    other = "limit_val_batches" if key == "limit_test_batches" else "limit_test_batches"
    all_of_it = TrainSettings(accelerator="cpu", **{other: 1})  # the other split's limit does not apply
    assert evaluate(_Constant(), _TwoBatches(), all_of_it, stage=stage, progress=False)[f"{stage}_acc"] == 0.5


def test_fit_stops_at_max_steps_with_accumulation_and_still_validates():
    """2 optimizer steps of 3 accumulated batches = 6 training batches, mid-epoch; one validation batch at
    the end of training (no sanity pass) gives the best val_acc."""
    model = _Constant()
    s = TrainSettings(accelerator="cpu", max_epochs=5, max_steps=2, accumulate_grad_batches=3, limit_val_batches=1,
                      learning_rate=1e-6)
    result = fit(model, _TwoBatches(), s, progress=False)
    assert model.calls["train"] == 6
    assert model.calls["eval"] == 1
    assert result["best_val_acc"] == 1.0


class _DictOut(nn.Module):
    """`_Constant`'s scores returned in a dict, as Hugging Face models do (``extra`` adds a second tensor)."""

    def __init__(self, key: str = "logits", extra: bool = False):
        super().__init__()
        self.inner, self.key, self.extra = _Constant(), key, extra

    def forward(self, x: torch.Tensor) -> dict:
        out = {self.key: self.inner(x), "note": "not a tensor"}
        return out | ({"hidden": x.flatten(1)} if self.extra else {})


@pytest.mark.parametrize("key,extra", [("logits", False), ("logits", True), ("scores", False)])
def test_a_dict_output_gives_its_logits(key, extra):
    """The 'logits' entry, or the one tensor: the same accuracy as the plain model (0.5 on both batches)."""
    s = TrainSettings(accelerator="cpu")
    assert evaluate(_DictOut(key, extra), _TwoBatches(), s, progress=False)["test_acc"] == 0.5
    assert fit(_DictOut(key, extra), _TwoBatches(), TrainSettings(accelerator="cpu", max_steps=1, learning_rate=1e-6),
               progress=False)["best_val_acc"] == 0.5


def test_a_dict_output_without_logits_is_one_clear_line():
    with pytest.raises(TypeError) as e:
        evaluate(_DictOut("scores", extra=True), _TwoBatches(), TrainSettings(accelerator="cpu"), progress=False)
    assert str(e.value) == ("the model returned a dict (keys 'scores', 'note', 'hidden') without a 'logits' tensor "
                            "and with 2 tensors: return the class scores as a tensor or under 'logits'")


@pytest.mark.parametrize("argv,expected", [
    # (command line, {step: max_epochs it trains}) over a config of 10 / 3 / default (the top level: 7)
    ([], {"baseline": 7, "agp": 10, "finetune": 3}),
    (["--max-epochs", "4"], {"baseline": 4, "agp": 10, "finetune": 3}),
    (["--max-epochs-all", "2"], {"baseline": 2, "agp": 2, "finetune": 2}),
    (["--max-epochs", "1", "--max-epochs-all", "2"], {"baseline": 1, "agp": 2, "finetune": 2}),
])
def test_max_epochs_all_caps_every_training(argv, expected, tmp_path):
    """The precedence --help states: a step trains min(N, its own), its own being its table's, else the top level."""
    (tmp_path / "c.toml").write_text(
        "max_epochs = 7\n[passes.baseline]\npass = 'train'\n"
        "[passes.agp.weight]\nsparsity = 0.5\n[passes.agp]\npass = 'prune'\n[passes.agp.gradual]\nramp_epochs = 6\n"
        "start_epoch = 2\n[passes.agp.gradual.training]\nmax_epochs = 10\n"
        "[passes.finetune]\npass = 'train'\n[passes.finetune.training]\nmax_epochs = 3\n")
    args = build_parser().parse_args(["transform", "--config", str(tmp_path / "c.toml"), *argv])
    config = effective_config(args.config, overrides_from_args(args), action_options(args).get("max_epochs_all"))
    got = {}
    for step in plan(config):
        settings = step.args.gradual.settings(config.training) if step.name == "prune" else \
            step.args.settings(config.training)
        got[step.label] = settings.max_epochs
        if step.name == "prune":  # the ramp still ends while the step trains
            step.args.gradual.check_fits(settings, step.path)
            assert step.args.gradual.start_epoch + step.args.gradual.ramp_epochs <= settings.max_epochs
    assert got == expected
