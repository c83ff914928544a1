#!/usr/bin/env bash
# Usage: bash scripts/mae/train_interpreter.sh <dataset> [extra train_interpreter.py options]
# Pixel classifiers on mae features (experiments/<dataset>/mae.json; checkpoint from checkpoints/mae/).
exec bash "$(dirname "$0")/../train_baseline.sh" mae "$@"
