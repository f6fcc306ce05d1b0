"""Export to Hugging Face, TensorRT-LLM checkpoints and ONNX.

Python API (the CLI's ``minitron export`` is a thin layer over it)::

    from minitron_deploy.export import export, CalibrationSettings
    result = export("pruned/", "pruned-trtllm/", format="trtllm", dtype="fp8", tp=2,
                    calib=CalibrationSettings(source="calib.txt"))
    result.manifest["files"]          # sha256 of every file written

``minitron_deploy.export_model`` is the same function at the package top level. A TensorRT-LLM
checkpoint runs in pure torch with ``TrtllmCheckpoint.load(dir).logits(ids)``.
"""

from .api import (
                  DEFAULT_DTYPES,
                  EXPORT_DTYPES,
                  FORMATS,
                  CalibrationSettings,
                  ExportResult,
                  check_request,
                  export,
)
from .output import MANIFEST, verify_manifest
from .runner import TrtllmCheckpoint

__all__ = ["CalibrationSettings", "DEFAULT_DTYPES", "EXPORT_DTYPES", "ExportResult", "FORMATS", "MANIFEST",
           "TrtllmCheckpoint", "check_request", "export", "verify_manifest"]
