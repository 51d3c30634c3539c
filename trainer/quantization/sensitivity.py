"""Per-layer sensitivity: quantize everything, switch one top-level layer back to float at a time.

A layer whose float version recovers the most mAP is the most sensitive to quantization and the
first candidate for ``--ignore-policy``. A quantizer shared with another layer (scale group) is
switched off with it, which is what ignoring that layer would do to the shared scale too.
"""

from __future__ import annotations

from collections.abc import Callable

from pytorch_quantization import nn as quant_nn
from torch import nn

from .qat import top_layers


def layer_sensitivity(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], dict],
    prefix: str = "model",
    on_layer: Callable[[int, int], None] | None = None,
    only: set[int] | None = None,
) -> dict:
    """{"quantized": mAPs of the full model, "layers": [{layer, name, type, map50, map}] best first}.

    ``only`` restricts the scan to those top-level layer indices (big models, quick looks).
    """
    layers = top_layers(model)
    base = {k: float(v) for k, v in evaluate_fn(model).items()}
    rows = []
    candidates = [
        (
            i,
            [
                m
                for m in layer.modules()
                if isinstance(m, quant_nn.TensorQuantizer) and not m._disabled
            ],
        )
        for i, layer in enumerate(layers)
    ]
    candidates = [(i, qs) for i, qs in candidates if qs and (only is None or i in only)]
    for n, (i, qs) in enumerate(candidates):
        for q in qs:
            q.disable()
        try:
            res = {k: float(v) for k, v in evaluate_fn(model).items()}
        finally:
            for q in qs:
                q.enable()
        rows.append(
            {
                "layer": i,
                "name": f"{prefix}.{i}",
                "type": type(layers[i]).__name__,
                "quantizers": len(qs),
                **res,
                "gain_map": res.get("map", 0.0) - base.get("map", 0.0),
            }
        )
        if on_layer is not None:
            on_layer(n + 1, len(candidates))
    rows.sort(key=lambda r: (-r.get("map", 0.0), -r.get("map50", 0.0), r["layer"]))
    return {"quantized": base, "layers": rows}
