"""Deployment: exports (.keras, SavedModel, TF Hub, TFLite, ONNX) and `wb.predict` on new images."""
