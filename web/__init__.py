"""The static viewer's page and onnxruntime-web files, installed as onnx_rcam.webapp (see onnx_rcam/web.py)."""
