#!/bin/sh
# One cold training run on Fashion-MNIST, 20 a class (bench/accuracy.py's draw 0), in a fresh workspace.
#   bench/auto_wall.sh auto   the default: the Auto plan
#   bench/auto_wall.sh old    the previous default: feature extraction on last-layer features
# Compare the two pair by pair: farm-bench -n 3 --vs 'bench/auto_wall.sh old' -- bench/auto_wall.sh auto
DATA=${DATA:-/tmp/tl_accuracy_data/fashion-20-0/train}  # written by: python bench/accuracy.py --shots 20 --draws 1
H=$(mktemp -d /tmp/tl_wall_XXXX)
cd "$(dirname "$0")/.."
if [ "$1" = auto ]; then EXTRA=""; else EXTRA="--freeze head --features last"; fi
TL_STUDIO_HOME=$H .venv/bin/python -m tl_core train --data "$DATA" $EXTRA --run-dir "$H/runs/r" > /dev/null 2>&1
rc=$?
rm -rf "$H"
exit $rc
