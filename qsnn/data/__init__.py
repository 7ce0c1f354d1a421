"""Data: the dataset registry and the loaders behind it (IDX images, scikit-learn digits, DVS128 Gesture)."""
