"""``distill()`` in a torchrun rank, for the multi-process tests: argv is
``TEACHER STUDENT DATA OUT JSON_CONFIG [KILL_AFTER_STEP]``. With KILL_AFTER_STEP, rank 0 kills
its own process with SIGKILL once that step is logged (a deterministic crash point)."""

import json
import os
import signal
import sys

from minitron_deploy.distill.api import DistillConfig, distill


def main() -> None:
    teacher, student, data, out, config = sys.argv[1:6]
    kill_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
    settings = json.loads(config)
    resume = settings.pop("resume", False)

    def on_step(record: dict) -> None:
        if record["step"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    distill(teacher, student, data, out, DistillConfig(**settings), resume=resume,
            on_step=on_step)


if __name__ == "__main__":
    main()
