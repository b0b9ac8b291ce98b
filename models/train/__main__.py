"""``python -m curmoe.models.train``."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are shared with other processes, spinning
# threads made training 1.2-2.5x slower (measured, docs/training.md). Must be set before torch loads libgomp, and only
# for the training command: importing curmoe.models.train leaves the environment alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from curmoe.models.train import main  # noqa: E402

sys.exit(main())
