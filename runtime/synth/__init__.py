"""Synthetic head-CT phantoms with ground truth, written in the RSNA 2019 layout.

A torch-free generator (NumPy + Numba; pydicom for the files): :func:`generate_study` makes one
labelled study in memory, :func:`write_dataset` writes many as ``stage_2_train.csv``,
``stage_2_train/ID_*.dcm``, masks, boxes and an optional jpg ImageFolder. :class:`PhantomConfig`
holds the ranges studies are drawn from, with presets ``train`` and ``shifted``.
"""

from ichrt.runtime.synth.config import PRESETS, PhantomConfig
from ichrt.runtime.synth.study import PhantomStudy, generate_slice, generate_study

__all__ = ["PRESETS", "PhantomConfig", "PhantomStudy", "generate_slice", "generate_study",
           "write_dataset"]


def __getattr__(name: str):
    if name == "write_dataset":
        from ichrt.runtime.synth.writer import write_dataset

        return write_dataset
    raise AttributeError(name)
