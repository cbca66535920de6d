"""Slipway's inference runtime: one PyTorch model behind the Open Inference Protocol v2.

Standalone on purpose (no Django): it is what Slipway deploys, and it runs anywhere
with `python -m inference_runtime --model PATH --name NAME`.
"""

__version__ = "0.1.0"
