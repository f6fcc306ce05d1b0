import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# fp32 on every CPU: exact comparisons hold and no precision probe runs or writes ~/.cache
os.environ.setdefault("MINITRON_CPU_PRECISION", "fp32")
# sleeping rather than spinning OpenMP threads: much faster on a busy CPU (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
