"""edgesft: fine-tune, compress, export and verify small language models for edge devices."""

__version__ = "0.1.0"
