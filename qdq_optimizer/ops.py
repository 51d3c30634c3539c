"""The op vocabulary of TensorRT's Q/DQ handling: which ONNX ops play which part in its fusions.

One home for these facts: the rule actions, the lint checks, the scale groups and ``inspect``
read them from here. It imports nothing (``inspect`` stays free of onnx); the one commute
predicate over it is ``commute.joining_inputs`` and the fusion patterns are in ``trt_patterns``. Sources: TensorRT's developer guide,
"Working with Quantized Types" (Q/DQ placement, propagation, fusions), as summarised with quotes
in ``docs/rules.md`` and ``../shared/docs/tensorrt-qdq-facts.md``; the pooling fact is from a
real engine report (see ``INT8_POOLING_OPS``).
"""

from __future__ import annotations

# Ops with weights: TensorRT expects Q/DQ on the data input and the weight, and fuses the output
# BatchNormalization / activation (and a residual Add) into them as an epilogue.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
CONV_OPS = frozenset({"Conv", "ConvTranspose"})

# Activations TensorRT fuses into the preceding conv/gemm. SiLU appears as Sigmoid + Mul and
# hard-swish as HardSigmoid + Mul (``trt_patterns.silu_parts`` recognises both).
FUSED_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid"})
# The gates of a gated activation x * gate(x).
GATES = frozenset({"Sigmoid", "HardSigmoid"})
# What may sit between a weighted op and its activation and still fold/fuse (Mul: the SiLU's).
EPILOGUE_OPS = FUSED_ACTIVATIONS | {"BatchNormalization", "Mul"}

# Ops whose data input and outputs are one value to TensorRT: a Q/DQ commutes through them
# (it propagates Q backwards and DQ forwards) unconditionally.
DATA_MOVEMENT_OPS = frozenset(
    {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity"}
)
# Ops Q/DQ commute through only under a condition ``commute.joining_inputs`` checks:
# MaxPool (positive scale; not its indices output), Pad (constant mode, zero padding),
# Resize/Upsample (nearest mode), Concat (all data inputs join its output's scale).
CONDITIONAL_COMMUTING_OPS = frozenset({"MaxPool", "Pad", "Resize", "Upsample", "Concat"})
COMMUTING_OPS = DATA_MOVEMENT_OPS | CONDITIONAL_COMMUTING_OPS

# Ops that carry a constant offset of their data inputs to their output (x - c in, y - c out):
# data movement, MaxPool (its padding is -inf), Concat (every input offset alike), Resize /
# Upsample whose interpolation weights sum to one (nearest, linear) and averages over the inputs
# they read (global average pooling; AveragePool unless it counts zero padding). Not Pad (its
# padding value would move) nor anything else arithmetic. ``commute.offset_inputs`` holds the
# conditions; ``shift-relu-range`` moves a one-sided range through them.
OFFSET_COMMUTING_OPS = DATA_MOVEMENT_OPS | frozenset(
    {"MaxPool", "Concat", "Resize", "Upsample", "GlobalAveragePool", "AveragePool"}
)

# Elementwise ops that compute each output value from the same position of their inputs (what
# TensorRT runs as a PointWise layer, fusing chains of them with each other and into a conv's
# epilogue: ``Conv + PWN(PWN(Sigmoid), Mul)``). ``pointwise.scalar_chain`` follows them from an
# activation back to the one tensor it is a function of, the other inputs scalar constants.
SCALAR_POINTWISE_OPS = frozenset(
    {
        *("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Clip", "Relu", "LeakyRelu"),
        *("Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Exp", "Neg", "Abs", "Elu"),
        *("Softplus", "Mish", "Gelu", "QuantizeLinear", "DequantizeLinear"),
    }
)

# Average pooling runs in INT8 when Q/DQ surround it: in TensorRT 8.4's ResNet-18 QAT engine
# with a quantized global pool (NVIDIA/TensorRT @ b8b46f21,
# examples/pytorch/resnet/A100/qat-residual-qgap; ../shared/trt-engines), layer
# ``GlobalAveragePool_300`` is a CudaPooling layer with Int8 input and Int8 output. So a Q/DQ pair
# in front of a pool is not a float island: removing it moves the pool (and what reads it) to
# float. It does not commute like MaxPool (the average is requantized), so it is no scale-group
# join.
INT8_POOLING_OPS = frozenset({"GlobalAveragePool", "AveragePool"})

# Residual Add: TensorRT fuses ``Add(conv_branch, skip)`` into the conv as an INT8 epilogue.
RESIDUAL_OPS = frozenset({"Add"})

# GEMMs: a MatMul/Gemm is weighted when one input is a constant (possibly behind DQ and layout
# ops: ``matmul_patterns.weighted_matmul``), an attention BMM when both inputs are activations.
GEMM_OPS = frozenset({"MatMul", "Gemm"})

# Normalizations TensorRT runs in FP16/FP32 (docs/transformers.md 1.3): their scale and bias are
# float parameters, never Q/DQ'd int32/int8 (ORT quantizes LayerNormalization's bias).
NORM_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization"})

# INT8 fused multi-head attention (docs/transformers.md 1.2; TensorRT 8.6 developer guide,
# "mha-fusion", quoted in NVIDIA/TensorRT issue 2981): the head size must be one of these and
# both sequence lengths at most INT8_MHA_MAX_SEQ, and Q/DQ must sit before BMM1, after the Softmax
# and after BMM2. The 10.x/11 text was not found, so lint reports these as warnings.
INT8_MHA_HEAD_SIZES = frozenset({16, 32, 64})
INT8_MHA_MAX_SEQ = 512
# A Softmax output lies in [0, 1]: its symmetric int8 Q/DQ needs no data (ORT fixes the same
# range; ModelOpt's FP8 exporter uses 1/448 for FP8).
SOFTMAX_INT8_SCALE = 1.0 / 127.0
