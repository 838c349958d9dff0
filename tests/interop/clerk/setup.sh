#!/usr/bin/env bash
# Install the pinned @clerk/backend (package-lock.json) for tests/test_clerk_differential.py and
# tests/test_clerk_sdk_compat.py. Needs Node.js >= 20.9 and npm.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
