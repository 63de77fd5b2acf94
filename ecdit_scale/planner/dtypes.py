"""Bytes per element of the dtypes the planner counts."""

BF16_BYTES = 2  # bf16 and fp16
FP32_BYTES = 4
INDEX_BYTES = 8  # int64 routing indices
