"""Gradual pruning while training: AGP (Zhu & Gupta 2017, "To prune or not to prune").

A ``[passes.X.gradual]`` table (`GradualArgs`) turns a prune step into
"prune while training". Each pruned weight's sparsity rises from
``initial_sparsity`` (capped at the weight's final sparsity) to its final
sparsity (the weight table's ``sparsity``, a number or a per-layer table)
on the cubic schedule

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / ramp) ** 3      for t_0 <= t <= t_0 + ramp

(`agp_sparsity`), ``t`` counted in optimizer steps. The masks are updated at
``t_0, t_0 + frequency, t_0 + 2 * frequency, ...`` and at ``t_0 + ramp``
(`update_steps`), where every weight reaches exactly its final sparsity
(``round(s_f * n)`` weights or groups, as the one-shot pass prunes);
training then goes on at it until ``max_epochs``. Before ``t_0`` the model
trains dense.

Each update is the one-shot pass's own weight pruning (`weights.prune_weights`):
scores on the effective weights with the configured method
and scope, the new mask ANDed into the existing one, so masks only grow
and a mask from an earlier step is kept. The `WeightMask` parametrizations
are registered (all ones) before training starts: torch's parametrize
keeps the weight's `nn.Parameter` object (now ``parametrizations.weight.original``),
so the optimizer Lightning builds trains it, and the gradient of a pruned
weight is masked.

Epochs become steps once Lightning knows the training loader:
``steps_per_epoch = ceil(batches per epoch / accumulate_grad_batches)``
(``limit_train_batches`` and the processes of a DDP run included).
``frequency`` defaults to ``ceil(ramp / 30)``: about 30 updates over the
ramp (Zhu & Gupta update every 100–1000 steps over ramps of 10^4–10^5).

Best epoch: `machop.training.fit` keeps the weights of the best ``val_acc``
and writes Lightning's ``best.ckpt``; an early, less sparse epoch would
win. Only validations after the last mask update count (`fit`'s
``keep_best``): with ``ramp_epochs`` the first of them is the ramp's last
epoch (``start_epoch + ramp_epochs - 1``, counted from 0), whose final
update comes right after its last optimizer step, before it is validated.
"""

from __future__ import annotations

import json
import logging
import math
from bisect import bisect_right
from dataclasses import replace
from typing import Callable

import pytorch_lightning as pl
import torch

from machop.config import ConfigError, join
from machop.ir.graph import MaseGraph
from machop.ir.serialize import describe_structure
from machop.nn import apply_mask
from machop.ir.teacher import check_teacher, find_teacher
from machop.training import build_objective, check_accelerator, parse_objective_args, train_step

from .args import DEFAULT_UPDATES, GradualArgs, WeightPruneArgs
from .targets import Target, active
from .weights import prune_weights, pruned_weights

logger = logging.getLogger(__name__)

SCHEDULE_ROWS = 64  # at most this many (step, target, achieved) rows in info["gradual"]["schedule"]


def agp_sparsity(step: int, initial: float, final: float, start: int, ramp: int) -> float:
    """Zhu & Gupta's cubic schedule: ``final + (initial - final) * (1 - (step - start) / ramp) ** 3``.

    ``initial`` up to ``start``, ``final`` from ``start + ramp`` on (both
    exactly, no rounding error), non-decreasing in between when
    ``initial <= final``.
    """
    if ramp < 1:
        raise ValueError(f"ramp must be >= 1 step, got {ramp}")
    progress = (step - start) / ramp
    if progress <= 0:
        return initial
    if progress >= 1:
        return final
    return final + (initial - final) * (1.0 - progress) ** 3


def update_steps(start: int, ramp: int, frequency: int) -> list[int]:
    """The optimizer steps at which the masks are updated: ``start + k * frequency`` before the ramp's end,
    then ``start + ramp`` (the final sparsity)."""
    if ramp < 1 or frequency < 1:
        raise ValueError(f"ramp and frequency must be >= 1, got {ramp} and {frequency}")
    return [*range(start, start + ramp, frequency), start + ramp]


def default_frequency(ramp: int) -> int:
    """About `DEFAULT_UPDATES` (30) updates over a ramp of ``ramp`` steps: ``ceil(ramp / 30)``."""
    return max(1, math.ceil(ramp / DEFAULT_UPDATES))


class GradualPruning(pl.Callback):
    """Updates the masks on the AGP schedule while Lightning trains.

    ``update(step, start, ramp)`` prunes to the targets of optimizer step ``step`` and
    returns ``(mean target, achieved)`` sparsity over the pruned weights.
    The schedule is fixed in ``on_train_start`` (Lightning then knows the
    batches per epoch); ``final`` turns true after the last update.
    """

    def __init__(self, args: GradualArgs, path: str, update: Callable[[int, int, int], tuple[float, float]]):
        self.args = args
        self.path = path
        self.update = update
        self.steps: list[int] = []
        self.done = 0  # updates applied
        self.history: list[list] = []  # [step, mean target, achieved]
        self.final = False
        self.final_epoch: int | None = None
        self.steps_per_epoch: int | None = None
        self.start = self.ramp = self.frequency = None

    def plan(self, batches_per_epoch: float, accumulate: int, total_steps: float) -> None:
        """Fix the schedule in optimizer steps; ConfigError if the ramp does not end within training."""
        a = self.args
        if not math.isfinite(batches_per_epoch):
            if a.ramp_epochs is not None or a.start_epoch:
                key = "ramp_epochs" if a.ramp_epochs is not None else "start_epoch"
                raise ConfigError(join(self.path, key), "the training loader has no length, so epochs cannot be "
                                                        "counted in steps; use ramp_steps and start_epoch = 0")
            self.steps_per_epoch = None
        else:
            self.steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
        self.start = a.start_epoch * (self.steps_per_epoch or 0)
        self.ramp = a.ramp_steps if a.ramp_steps is not None else a.ramp_epochs * self.steps_per_epoch
        if self.ramp < 1:
            raise ConfigError(join(self.path, "ramp_epochs"), "the training loader has no batches")
        self.frequency = a.frequency or default_frequency(self.ramp)
        if self.start + self.ramp > total_steps:
            key = "ramp_steps" if a.ramp_steps is not None else "ramp_epochs"
            raise ConfigError(join(self.path, key),
                              f"the ramp ends at optimizer step {self.start + self.ramp} "
                              f"(start {self.start} + ramp {self.ramp}, {self.steps_per_epoch} steps per epoch), "
                              f"after training ends (step {total_steps}: max_epochs, max_steps, limit_train_batches)")
        self.steps = update_steps(self.start, self.ramp, self.frequency)

    def on_train_start(self, trainer, module):
        self.plan(trainer.num_training_batches, trainer.accumulate_grad_batches, trainer.estimated_stepping_batches)
        logger.debug("gradual pruning: %d updates at steps %d..%d (every %d), %s steps per epoch", len(self.steps),
                     self.steps[0], self.steps[-1], self.frequency, self.steps_per_epoch)
        self.catch_up(trainer.global_step, trainer.current_epoch)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.catch_up(trainer.global_step, trainer.current_epoch)

    def catch_up(self, global_step: int, epoch: int | None = None) -> None:
        """Apply the latest update due at ``global_step`` (optimizer steps done), if not applied yet."""
        due = bisect_right(self.steps, global_step)
        if due <= self.done:
            return
        step = self.steps[due - 1]
        target, achieved = self.update(step, self.start, self.ramp)
        self.done = due
        self.history.append([step, round(target, 6), round(achieved, 6)])
        logger.debug("gradual pruning: update %d/%d at step %d (epoch %s): target %.4f, achieved %.4f",
                     due, len(self.steps), step, epoch, target, achieved)
        if due == len(self.steps):
            self.final = True
            self.final_epoch = epoch

    def summary(self) -> dict:
        """The schedule as ``info["gradual"]`` holds it (at most `SCHEDULE_ROWS` rows, the first and last kept)."""
        rows = self.history
        if len(rows) > SCHEDULE_ROWS:
            picks = sorted({round(i * (len(rows) - 1) / (SCHEDULE_ROWS - 1)) for i in range(SCHEDULE_ROWS)})
            rows = [rows[i] for i in picks]
        return {
            "initial_sparsity": self.args.initial_sparsity,
            "steps_per_epoch": self.steps_per_epoch,
            "start_step": self.start,
            "ramp_steps": self.ramp,
            "frequency": self.frequency,
            "updates": len(self.history),
            "final_epoch": self.final_epoch,
            "schedule": rows,  # [optimizer step, mean target sparsity, achieved sparsity] of the pruned weights
        }


def check_gradual(graph: MaseGraph, gradual: GradualArgs, path: str, earlier: list[str] = ()) -> None:
    """ConfigError naming ``path`` (the gradual table) unless the ramp fits the training's epochs, this
    machine can run its trainer and the teacher it distills from will be there."""
    s = gradual.settings(graph.context.training, path)
    gradual.check_fits(s, path)
    check_accelerator(s, join(path, "trainer"))
    check_teacher(graph, gradual.distill, path, earlier)


def prune_while_training(
    graph: MaseGraph,
    weight: WeightPruneArgs,
    gradual: GradualArgs,
    targets: list[Target],
    seed: int,
    path: str,
) -> tuple[dict, dict, dict]:
    """Train ``graph.model`` while pruning its ``targets`` (`select`'s, with their final sparsities) on the
    AGP schedule, with the one-shot pass's `prune_weights` at each update.

    Returns ``(weight summary of the last update, training figures, schedule)``:
    the training figures are `train_step`'s (``val_acc``, ``best_val_acc``, ...,
    best counted only at the final sparsity; ``test_acc`` and ``test_loss``
    unless ``test = false``).
    """
    ctx = graph.context
    gpath = join(path, "gradual")
    s = gradual.settings(ctx.training, gpath)
    data = ctx.require_data("prune")
    targets = active(targets, weight)
    sizes = [t.weight.stored().numel() for t in targets]
    total = sum(sizes)
    last: dict = {}

    def update(step: int, start: int, ramp: int) -> tuple[float, float]:
        if weight.scope == "local":
            now = [replace(t, sparsity=agp_sparsity(step, min(gradual.initial_sparsity, t.sparsity), t.sparsity,
                                                    start, ramp)) for t in targets]
            args = weight
            target = sum(t.sparsity * n for t, n in zip(now, sizes)) / total if total else 0.0
        else:
            sparsity = agp_sparsity(step, min(gradual.initial_sparsity, weight.sparsity), weight.sparsity, start, ramp)
            now, args, target = targets, replace(weight, sparsity=sparsity), sparsity
        with torch.no_grad():
            last.update(prune_weights(graph, args, now, seed))
        return target, pruned_weights(targets) / total if total else 0.0

    def finish() -> None:
        """Prune to the final sparsities now if training stopped before the ramp's end (the checks make this rare)."""
        if callback.final:
            return
        logger.warning("%s: training ended before the last mask update; pruning to the final sparsity now", gpath)
        if callback.steps:
            callback.catch_up(callback.steps[-1])
        else:
            update(1, 0, 1)

    # masks registered before training: the optimizer then holds the Parameters the masks read
    for t in targets:
        apply_mask(t.weight, torch.ones(t.weight.stored().shape, dtype=torch.bool))
    callback = GradualPruning(gradual, gpath, update)
    distill, prior = parse_objective_args(gradual.distill, gradual.prior, gpath)
    teacher = find_teacher(graph, distill.teacher, join(gpath, "distill.teacher")) if distill else None
    figures = train_step(graph.model, data, s, training=gradual.training, path=gpath, output_dir=ctx.output_dir,
                         folder=ctx.step or "prune", structure=json.dumps(describe_structure(graph)),
                         test=gradual.test, progress=ctx.progress_bar, callbacks=[callback],
                         keep_best=lambda: callback.final, before_test=finish,
                         objective=build_objective(graph.weights(), teacher, distill, prior))
    schedule = callback.summary()
    final = schedule["schedule"][-1] if schedule["schedule"] else None
    logger.info("gradual pruning: %d mask update(s) over steps %s..%s (every %s), final sparsity %s; "
                "best val_acc %s over the epochs at the final sparsity", schedule["updates"], schedule["start_step"],
                None if schedule["ramp_steps"] is None else schedule["start_step"] + schedule["ramp_steps"],
                schedule["frequency"], None if final is None else f"{final[2]:.4f}",
                "none" if figures.get("best_val_acc") is None else f"{figures['best_val_acc']:.4f}")
    return last, figures, schedule
