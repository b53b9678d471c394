"""Deployable artifacts beside .ashz: ONNX (int8 codes as int8 initializers, smaller layers)."""

from __future__ import annotations

from .onnx import ExportError, OnnxExport, export_onnx, to_onnx, write_onnx
from .ort_session import ort_session, run_session

__all__ = ["ExportError", "OnnxExport", "export_onnx", "ort_session", "run_session", "to_onnx", "write_onnx"]
