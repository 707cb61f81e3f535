"""The data contract between preprocessing, training, evaluation and inference (docs/data-format.md)."""
