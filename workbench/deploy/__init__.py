"""Exports in the forms people deploy: .keras, SavedModel, TF Hub, TFLite."""
