"""Helpers for tests and the offline demo: `hf_encoders.testing.local_hub.LocalHub`, a local stand-in for the
Hugging Face Hub (`python -m hf_encoders.testing.local_hub --port 8765` runs it in the foreground).

Nothing is imported here, so that `python -m hf_encoders.testing.local_hub` runs the module once, as `__main__`.
"""
