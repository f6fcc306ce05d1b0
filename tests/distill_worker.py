"""``distill()`` in a torchrun rank, for the multi-process tests: argv is
``TEACHER STUDENT DATA OUT JSON_CONFIG [KILL_AFTER_STEP]``. With KILL_AFTER_STEP, rank 0 kills
its own process with SIGKILL once that step is logged (a deterministic crash point). With
``SPY_VALIDATION=PATH`` every validation pass appends ``RANK:sharded`` (or ``RANK:whole``) to
PATH: whether the student it ran on was sharded."""

import json
import os
import signal
import sys

from minitron_deploy.distill import api
from minitron_deploy.distill.api import DistillConfig, distill
from minitron_deploy.distill.parallel import is_sharded


def _spy_validation(path: str) -> None:
    mean_losses = api.mean_losses

    def spied(objective, sequences, cfg):
        with open(path, "a") as fh:
            fh.write(f"{os.environ['RANK']}:"
                     f"{'sharded' if is_sharded(objective.student) else 'whole'}\n")
        return mean_losses(objective, sequences, cfg)
    api.mean_losses = spied


def main() -> None:
    teacher, student, data, out, config = sys.argv[1:6]
    kill_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
    settings = json.loads(config)
    resume = settings.pop("resume", False)
    if os.environ.get("SPY_VALIDATION"):
        _spy_validation(os.environ["SPY_VALIDATION"])

    def on_step(record: dict) -> None:
        if record["step"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    distill(teacher, student, data, out, DistillConfig(**settings), resume=resume,
            on_step=on_step)


if __name__ == "__main__":
    main()
