"""The trivial teacher-student baseline that any source-free adaptation must beat.

Teacher: the source model whose predictions on the target's adaptation rows have the lower
mean entropy ``mean_n H(p_m(n))`` (chosen without labels). Student: the other source model,
fine-tuned with cross-entropy on the teacher's argmax labels of every adaptation row,
``L = CE(f_student(x_n), argmax_c p_teacher(n, c))``. Prediction: the mean of the unadapted
teacher's and the student's class probabilities.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from mmfl.adaptation.adapt import fit_on_labels
from mmfl.adaptation.pseudo_labels import entropy
from mmfl.models.multimodal import MultiEncoder


@torch.no_grad()
def probabilities(model: MultiEncoder, modality: str, x: torch.Tensor) -> np.ndarray:
    return torch.softmax(model.heads[modality](model.encode(modality, x)), 1).numpy()


def pick_teacher(models: dict[str, MultiEncoder], x: dict[str, torch.Tensor]) -> str:
    """The modality whose source model is least uncertain on the adaptation rows."""
    return min(sorted(models), key=lambda m: float(entropy(probabilities(models[m], m, x[m])).mean()))


def teacher_student(
    models: dict[str, MultiEncoder],
    x: dict[str, torch.Tensor],
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[str, dict[str, MultiEncoder]]:
    """(the teacher's modality, {teacher: unchanged copy, student: trained copy})."""
    teacher = pick_teacher(models, x)
    (student,) = [m for m in models if m != teacher]
    target = torch.as_tensor(probabilities(models[teacher], teacher, x[teacher]).argmax(1))
    model = fit_on_labels(
        copy.deepcopy(models[student]), student, x[student], target, epochs, lr, batch_size, seed
    )
    return teacher, {teacher: copy.deepcopy(models[teacher]).eval(), student: model.eval()}


def fused(models: dict[str, MultiEncoder], x: dict[str, torch.Tensor]) -> np.ndarray:
    """Mean of the models' class probabilities."""
    return np.mean([probabilities(models[m], m, x[m]) for m in sorted(models)], axis=0)
