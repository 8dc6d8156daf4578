"""RegNet fine-tuning workbench for TensorFlow 2 / Keras 3."""
