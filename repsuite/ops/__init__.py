"""Kernels shared by the tasks: attention, StyleGAN2 modulated convolution, dropout, depthwise conv.

Pure torch + einops. Every op has a fast path and a plain reference path; the reference paths are forced
with ``REPSUITE_REFERENCE_OPS=1`` or :func:`reference_ops`.
"""

from repsuite.ops.attention import (
    MultiHeadCrossAttention,
    auto_query_chunk_size,
    dropout_attention,
    multi_head_attention,
    multi_head_attention_reference,
)
from repsuite.ops.config import reference_ops, set_reference_ops, use_reference_ops
from repsuite.ops.conv1d import depthwise_conv1d, depthwise_conv1d_reference
from repsuite.ops.drop import Dropout, dropout, dropout_reference, quantised_drop_probability
from repsuite.ops.modconv import (
    choose_formulation,
    fused_leaky_relu,
    fused_leaky_relu_reference,
    modulated_conv2d,
    modulated_conv2d_reference,
    modulated_weight,
)

__all__ = [
    "Dropout",
    "MultiHeadCrossAttention",
    "auto_query_chunk_size",
    "choose_formulation",
    "depthwise_conv1d",
    "depthwise_conv1d_reference",
    "dropout",
    "dropout_attention",
    "dropout_reference",
    "fused_leaky_relu",
    "fused_leaky_relu_reference",
    "modulated_conv2d",
    "modulated_conv2d_reference",
    "modulated_weight",
    "multi_head_attention",
    "multi_head_attention_reference",
    "quantised_drop_probability",
    "reference_ops",
    "set_reference_ops",
    "use_reference_ops",
]
