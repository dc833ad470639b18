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
tolerance = 1e-4  # check: max |difference| allowed, relative to the largest output
```

``info``: ``path``, ``onnx_bytes`` (the file's size), ``opset``, ``inputs`` / ``outputs``
(names and shapes), ``max_abs_diff`` and ``verified`` (None when
``check = false``). The batch dimension is dynamic.
"""

from .export import ExportArgs, check_export_args, export_pass, parse_export_args

__all__ = ["ExportArgs", "check_export_args", "export_pass", "parse_export_args"]
