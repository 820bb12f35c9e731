"""Throughput / latency / memory of mixerzoo models against timm's resnet50 (same code as `mixerzoo bench`).

    python benchmarks/throughput.py "biformer_*" --batch 8 --img-size 224 --threads 2
    python benchmarks/throughput.py poolformer_s12 --train --out-dir bench_results

Every option of `mixerzoo bench` is accepted (see --help); results go to --out-dir as CSV, JSON and PNG.
"""

from __future__ import annotations

import sys

from mixerzoo.bench._cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
