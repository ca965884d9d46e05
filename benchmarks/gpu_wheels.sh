#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored through .git/info/exclude), the wheels that tuner and its GPU
# checks need beyond what the lent GPU machines' image holds (torch, Triton, numpy, click,
# PyYAML, matplotlib, scikit-learn and pytest are there; nothing can be installed there from
# the network). Run here, where pip reaches PyPI; then benchmarks/gpu_check.sh runs there with
# `.whl` carried. The versions are those of the test environment; Python 3.12, x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  optuna==5.0.0 SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 MarkupSafe==3.0.4 \
  colorlog==6.12.0 pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 \
  annotated-types==0.8.0 psycopg==3.3.9 psycopg-binary==3.3.9 pytorch_optimizer==4.1.0
du -sh .whl
