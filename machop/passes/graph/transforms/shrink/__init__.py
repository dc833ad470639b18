"""Shrink: turn channel masks into a physically smaller network.

Channelwise pruning (``granularity = "channelwise"``, weights or activation
channel masks) chooses whole channels but only zeroes them: the tensors keep
their size and nothing runs faster. ``shrink`` removes them: a convolution or
Linear layer loses the output channels whose weights are all pruned, every
layer reading them loses the matching input channels (a Linear layer after a
flatten loses the ``H*W`` consecutive columns of each channel), batch norms
lose their entries, activation masks their positions. The result is an
ordinary, smaller graph of plain ``nn.Conv*d`` / ``nn.Linear`` /
``nn.BatchNorm*d`` modules that every later pass (train, quantize, Huffman,
save/load) takes as it is.

```toml
[passes.prune.weight]
sparsity = 0.5
granularity = "channelwise"
method = "l1-norm-single"

[passes.shrink]            # after pruning (and retraining), before quantize
exclude = []               # layers whose channels stay (node names or module paths)
carrier = true             # see "Exact" below; false: such channels stay instead
```

```python
graph, info = PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise"}})
graph, info = PASSES["shrink"](graph, {})
print(info["totals"]["params"], info["totals"]["macs"], info["kept"])
```

**Exact.** The shrunk model computes what the masked model computed (eval
mode; checked to ~1e-6 relative in the tests). A channel whose weights are
all pruned still outputs its bias, and through BatchNorm, ReLU or pooling a
per-channel constant, which the next layer consumes. The pass follows
channels through the fx graph (`channels`), reads each removed channel's
constant where a layer reads it, and folds it into that layer: into its
bias (Linear, a convolution without zero padding; a bias is added where the
layer had none), or, for a zero-padded convolution (where a constant input
is not constant at the borders), into the weights of one kept constant
channel, the *carrier* (one pruned channel is kept for that when no kept
channel is constant). Batch norm is folded with its running statistics
(eval mode): in train mode the masked and shrunk models differ.

**Groups.** Channels coupled by a residual ``add`` (or any elementwise op
of two tensors) or ``cat`` along another dimension are one group: removed
only if every layer writing it pruned it. A depthwise convolution's channel
goes with its input channel. ``cat`` along channels keeps each part's
channels at its offset.

**What stays, and why** (``info["kept"]``: layer, channels, reason): the
output layer's channels and the model's input (never removed), channels
reaching an op the pass does not follow (grouped convolutions, a reshape to
a fixed size, ops that mix channels), layers tied to another or called
twice, per-sample activation pruning, ``exclude``, a pruned channel coupled
with one that is not pruned or read where it is not constant, a carrier,
and one channel of a layer that would lose them all.

**Masks** of the remaining weights stay `WeightMask` parametrizations,
restricted to the kept channels (a later prune or train step keeps them).
A model already quantized (k-means codebook, fixed point) is refused:
shrink before quantizing.

**Files.** A shrunk registry model is no longer the registry's architecture:
the pass sets ``graph.context.model_name`` to None (``info["registry_model"]``
keeps the name), so the files written afterwards (`save_graph`, Huffman)
hold "your own model". To open one in a new process, build the skeleton
with `shrunk_like` (the registry or your model, resized to the shapes the
file records) and pass it: ``load_graph(path, model=shrunk_like(get_model("vgg7", info), path))``.
"""

from .shrink import ShrinkArgs, check_shrink_args, parse_shrink_args, shrink_transform_pass
from .skeleton import shrunk_like

__all__ = ["ShrinkArgs", "check_shrink_args", "parse_shrink_args", "shrink_transform_pass", "shrunk_like"]
