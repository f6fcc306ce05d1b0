"""ModelOpt distillation route: wrap a (pruned) Hugging Face student and its teacher with
``modelopt.torch.distill`` and train it with our trainer.

    from minitron_plugins.modelopt_distill import modelopt_kd_objective
    objective = modelopt_kd_objective(student, teacher, temperature=1.0)
    train(objective, sequences, TrainConfig(steps=100), work_dir)
    student = mtd.export(objective.model)
"""

from __future__ import annotations

import modelopt.torch.distill as mtd
from torch import nn

from minitron_deploy.distill.objectives import ModelOptObjective


class HFLogitsKDLoss(mtd.LogitsDistillationLoss):
    """ModelOpt's logits KD (forward KL with temperature) on the ``.logits`` of Hugging Face
    model outputs, which ModelOpt's criterion would otherwise receive whole."""

    def forward(self, student_out, teacher_out):
        return super().forward(student_out.logits, teacher_out.logits)


def modelopt_kd_objective(student: nn.Module, teacher: nn.Module,
                          temperature: float = 1.0) -> ModelOptObjective:
    """``mtd.convert`` the student with a logits KD criterion; the teacher is frozen."""
    teacher.eval().requires_grad_(False)
    model = mtd.convert(student, mode=[("kd_loss", {
        "teacher_model": teacher, "criterion": HFLogitsKDLoss(temperature=temperature)})])
    return ModelOptObjective(model)
