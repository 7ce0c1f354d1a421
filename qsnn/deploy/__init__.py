"""Integer-only deployment: the NumPy runtime and bundle format, and the conversion from a trained model."""
