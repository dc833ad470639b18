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
borders = "carrier"        # see "Exact" below: "carrier" | "keep" | "bias"
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
layer had none, unless a batch norm alone reads it: then the norm's running
mean absorbs it, and no parameter is added), or, for a zero-padded convolution (where a constant input
is not constant at the borders), into the weights of one kept constant
channel, the *carrier* (one pruned channel is kept for that when no kept
channel is constant). Batch norm is folded with its running statistics
(eval mode): in train mode the masked and shrunk models differ.

``borders`` chooses what happens to a removed channel's constant that a
zero-padded convolution reads: ``"carrier"`` (default, exact) as above;
``"keep"`` (exact) keeps such channels instead; ``"bias"`` folds it into
the bias as for an unpadded layer: exact except at the outputs whose window
reaches the padding, and no extra channel, so every width is the pruned one
(``info["approximate"]`` names those layers). A carrier makes widths like
65 or 129, which run slower than 64 and 128 on most kernels. (Torch-Pruning
folds nothing: what removed channels output is simply lost.)

**Groups.** Channels coupled by a residual ``add`` (or any elementwise op
of two tensors) or ``cat`` along another dimension are one group: removed
only if every layer writing it pruned it. A depthwise convolution's channel
goes with its input channel. The prune pass's channelwise methods score and
prune such a group together (``group = true``, the default), so it goes. ``cat`` along channels keeps each part's
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

**Files.** A shrunk model is no longer its class's architecture: the pass
sets ``graph.context.shrunk``, so the files written afterwards
(`save_graph`, Huffman) record ``"shrunk": true``. A registry model's file
loads by name like any registry model's (``load_graph(path)``,
``load_compressed(path)``, ``./ch test --load``, ``load_name``;
``info["registry_model"]`` names it); a file of your own model opens into
a fresh instance of its class (``load_compressed(path, model=MyNet())``,
``load_graph(path, model=MyNet())``, ``huffman_decode``). Either way the
loader resizes the model's Conv/Linear/BatchNorm layers to the shapes the
file records (none may be larger than the model's, nor of another kernel:
checked on the meta device first), checks the architecture and loads.
"""

from machop.ir.serialize import shrunk_like

from .shrink import ShrinkArgs, check_shrink_args, parse_shrink_args, shrink_transform_pass

__all__ = ["ShrinkArgs", "check_shrink_args", "parse_shrink_args", "shrink_transform_pass", "shrunk_like"]
