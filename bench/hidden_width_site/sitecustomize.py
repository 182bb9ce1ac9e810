"""Loaded at start-up by every Python process that ``bench/hidden_width.py`` runs (it puts this folder on
PYTHONPATH), and by no other: lifts transformers' rule that a Llama config's hidden size be a multiple of its
attention head count, for that experiment only.

The rule is transformers' own (``LlamaConfig.validate_architecture``); the model code, llama.cpp and
onnxruntime-genai all take the head size from ``head_dim`` and run such a shape. edgesft itself refuses
it (``prune.width.hidden_size``), because a user could not load the result with stock transformers.
"""

try:
    from transformers import LlamaConfig
except ImportError:  # a child that has no transformers (a runtime process) needs no patch
    pass
else:
    LlamaConfig.__class_validators__ = [
        v for v in LlamaConfig.__class_validators__ if v.__name__ != "validate_architecture"
    ]
