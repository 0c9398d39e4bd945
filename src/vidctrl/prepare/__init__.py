"""`vidctrl data prepare`: from a folder of raw videos to a training-ready pose dataset.

- `dwpose`: whole-body pose with DWPose's two ONNX models (YOLOX person detector, RTMPose/DWPose
  whole-body model with SimCC outputs) on ONNX Runtime, decoded to OpenPose keypoints.
- `clips`: which source frames make which output clip (cutting long videos, resampling fps).
- `captions`: captions from Qwen2-VL / Qwen2.5-VL (transformers, local folder), a text file or a
  fixed text.
- `media`: one sequential decode per video, streaming H.264 writers that rename into place.
- `tiny`: random stand-ins for the models with their real input/output names and shapes.
- `pipeline`: the folder-to-dataset run: frames decoded once, batched inference, worker processes,
  atomic outputs, resumable.

Model files are never downloaded: every path is local, and a missing file is an error that names it
and says where to get it. ONNX Runtime and ONNX are the `prepare` extra (`pip install
'vidctrl[prepare]'`).
"""

from __future__ import annotations

import types

from vidctrl.data.records import DataError, Problem

EXTRA_HINT = "install the prepare extra: pip install 'vidctrl[prepare]'"


class PrepareError(DataError):
    """A problem with the inputs of `data prepare` (missing model files, settings that disagree)."""


def require_onnxruntime() -> types.ModuleType:
    """Import onnxruntime or say which extra provides it."""
    try:
        import onnxruntime
    except ImportError:
        raise PrepareError(
            Problem(
                message="pose estimation needs onnxruntime, which is not installed",
                code="missing_extra",
                fix=EXTRA_HINT + " (or pip install onnxruntime-gpu on a CUDA machine)",
            )
        ) from None
    return onnxruntime


__all__ = ["EXTRA_HINT", "PrepareError", "require_onnxruntime"]
