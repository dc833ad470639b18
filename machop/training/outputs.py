"""What a model returned, as class scores: a tensor, or a dict's ``"logits"`` (Hugging Face's name)."""

from __future__ import annotations

from typing import Any

import torch

LOGITS_KEY = "logits"  # the entry of a dict output that holds the class scores (Hugging Face's name)


def logits_of(out: Any) -> torch.Tensor:
    """The class scores in a model's output: the tensor itself, or a dict's ``"logits"`` entry, or its one tensor.

    Anything else is a one-line TypeError saying what the model returned.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if isinstance(out.get(LOGITS_KEY), torch.Tensor):
            return out[LOGITS_KEY]
        tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return out[tensors[0]]
        keys = ", ".join(repr(k) for k in list(out)[:10]) or "none"
        raise TypeError(f"the model returned a dict (keys {keys}) without a {LOGITS_KEY!r} tensor and with "
                        f"{len(tensors)} tensors: return the class scores as a tensor or under {LOGITS_KEY!r}")
    raise TypeError(f"the model returned a {type(out).__name__}, not a tensor of class scores (or a dict with a "
                    f"{LOGITS_KEY!r} tensor)")
