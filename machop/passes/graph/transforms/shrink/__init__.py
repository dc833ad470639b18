"""Shrink: turn channel masks into a physically smaller network.

Channelwise pruning chooses whole channels but only zeroes them, so nothing
runs faster; ``shrink`` removes them (and the matching inputs of the layers
reading them), leaving plain ``nn.Conv*d`` / ``nn.Linear`` / ``nn.BatchNorm*d``
modules that every later pass takes as they are. The shrunk model computes
what the masked one did (eval mode): the constant a removed channel still
outputs is folded into the layers reading it (`shrink`); coupled channels
(residual adds, depthwise convolutions) go together, found by the channel
analysis (`machop.passes.graph.analysis.channels`).

The ``[passes.shrink]`` table, what stays and why, and how shrunk files load:
docs/CONFIGURATION.md, "shrink".
"""

from machop.ir.serialize import shrunk_like

from .shrink import ShrinkArgs, check_shrink_args, parse_shrink_args, shrink_transform_pass

__all__ = ["ShrinkArgs", "check_shrink_args", "parse_shrink_args", "shrink_transform_pass", "shrunk_like"]
