"""Export: write the model as an ONNX file any runtime can run, checked against onnxruntime.

Masks, k-means codebooks, fixed-point and other parametrizations are folded
into plain weights first (on a copy: the graph is unchanged), so the file
holds the effective weights a deployed model computes with. Run `shrink`
before it to export a physically smaller network. Inserted modules go as
they are (an activation channel mask is a multiplication); one ONNX cannot
express is a one-line error naming it.

```toml
[passes.export]
path = "NA"       # default: <run folder>/model.onnx
opset = 17        # ONNX opset version
check = true      # run the file with onnxruntime on the dummy input and compare (needs `pip install machop[onnx]`)
tolerance = "NA"  # check: max |difference| allowed, relative to the largest output; "NA": 1e-4 (float16: 1e-2,
                  # int8: 0.05)
int8 = false      # true: fixed-point layers as int8 operators (QDQ: QLinearConv / QGemm in onnxruntime), int8
                  # weights, machop's power-of-two scales; needs opset >= 13 and the onnx package (see `int8`)
kmeans_gather = false  # true: k-means weights stored as uint8 (uint16) indices + codebook, read by a Gather
```

With ``int8`` or ``kmeans_gather`` the file is float32 and rewritten with the
``onnx`` package after the export (`int8`); ``info["int8"]`` lists the int8
layers (scales per tensor or channel, the folded batch norm, the arithmetic),
the layers that stay float and why, and the file's operators;
``info["kmeans_gather"]`` the layers stored as indices and those that could
not be (with the reason); ``argmax_agreement`` (a classifier's outputs)
compares onnxruntime's predictions with the model's.

The file keeps the model's dtype (float32, float64, float16, bfloat16).
Where onnxruntime's CPU provider cannot run that dtype (bfloat16 at all,
float64 convolutions, float16 where a kernel is missing), ``check = true``
exports the model in float32 instead (16-bit weights widened exactly,
float64 ones rounded), checks that, logs a warning and says why in
``info["fallback"]``: the file runs and is checked. ``check = false`` writes
the model's own dtype unchecked.

``info``: ``path``, ``onnx_bytes`` (the file's size), ``opset``, ``inputs`` / ``outputs``
(names and shapes), ``dtype`` (the file's), ``model_dtype``, ``fallback`` (None,
or why the file is float32), ``max_abs_diff``, ``tolerance`` and ``verified``
(None when ``check = false``), ``model_max_abs_diff`` (with a fallback:
against the model's own outputs). The batch dimension is dynamic.
"""

from .export import INT8_TOLERANCE, ExportArgs, check_export_args, export_pass, parse_export_args

__all__ = ["ExportArgs", "INT8_TOLERANCE", "check_export_args", "export_pass", "parse_export_args"]
