"""Export to Hugging Face, TensorRT-LLM checkpoints and ONNX."""
