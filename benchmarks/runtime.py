"""Runtime benchmark (decode tok/s, prefill latency, roofline): see curmoe/curmoe_core/app/bench.py; same as `curmoe bench`.

    python benchmarks/runtime.py --model models/wt2-moe-8x --threads 2 --steps 32 --repeats 3
"""

import sys

from curmoe.app.bench import main

if __name__ == "__main__":
    sys.exit(main())
