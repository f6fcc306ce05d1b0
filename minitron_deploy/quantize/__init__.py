"""Quantized checkpoints that serving engines load: the pruned (and distilled) student in FP8,
INT8, INT4, NVFP4 or GGUF.

Python API (the CLI's ``minitron quantize`` is a thin layer over it)::

    from minitron_deploy.quantize import quantize
    report = quantize("out/student", "out/student-fp8", scheme="fp8")
    report = quantize("out/student", "out/student-nvfp4", scheme="nvfp4", calib="calib.jsonl",
                      device="cuda")
    report.bytes_before, report.bytes_after   # weight files on disk

``SCHEMES`` lists each scheme, the formats it is written in (compressed-tensors, modelopt,
gguf; the first is its default) and whether that format calibrates on text.
"""

from .api import QUANTIZE_RECORD, QuantizeReport, quantize
from .schemes import FORMATS, SCHEMES, Scheme, get_scheme, resolve_format
from .settings import QuantizeSettings

__all__ = ["FORMATS", "QUANTIZE_RECORD", "QuantizeReport", "QuantizeSettings", "SCHEMES", "Scheme",
           "get_scheme", "quantize", "resolve_format"]
