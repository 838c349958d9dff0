#!/usr/bin/env bash
# Installs the Tinybird clients that tests/test_tinybird_clients.py runs against FakeTinybird:
#   * @tinybirdco/sdk (Node >= 20) from package-lock.json, with `npm ci`, into node_modules/;
#   * the tinybird CLI (class TinyB) and tinybird-sdk into their own venv, .venv/ (their pins
#     clash with the project's environment), from requirements.txt.
# Idempotent: each part is redone only when its lock file (or the Python) changed. Both folders
# are gitignored. Run from anywhere: `bash tests/interop/tinybird/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")"

TINYBIRD_SDK_PY="tinybird-sdk==0.4.0"

fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }

# -- Node: @tinybirdco/sdk -------------------------------------------------------------------
command -v node >/dev/null || { echo "setup.sh: node (>= 20) is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup.sh: npm is required" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
	echo "setup.sh: @tinybirdco/sdk needs Node >= 20, found $(node --version)" >&2
	exit 1
fi
want=$(fingerprint package.json package-lock.json; node --version)
if [ "$(cat node_modules/.interop-stamp 2>/dev/null)" != "$want" ]; then
	# --ignore-scripts: the SDK's client needs no install script (esbuild's only checks its
	# binary, used by the SDK's build CLI, not by queries).
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	echo "$want" >node_modules/.interop-stamp
	echo "setup.sh: installed @tinybirdco/sdk $(node -p 'require("./node_modules/@tinybirdco/sdk/package.json").version')"
else
	echo "setup.sh: @tinybirdco/sdk is up to date"
fi

# -- Python: tinybird (TinyB) and tinybird-sdk, in .venv -----------------------------------------
python=""
for candidate in python3.11 python3.12 python3.13 python3; do
	if command -v "$candidate" >/dev/null &&
		"$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))'; then
		python=$(command -v "$candidate")
		break
	fi
done
if [ -z "$python" ]; then
	echo "setup.sh: the tinybird CLI needs Python >= 3.11 and < 3.14; none found" >&2
	exit 1
fi
want=$(fingerprint requirements.txt; echo "$TINYBIRD_SDK_PY"; "$python" --version)
if [ "$(cat .venv/.interop-stamp 2>/dev/null)" != "$want" ]; then
	rm -rf .venv
	"$python" -m venv .venv
	.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "$TINYBIRD_SDK_PY"
	.venv/bin/python -c 'import tinybird.tb.client, tinybird_sdk.client.base, tinybird_sdk.api.api'
	echo "$want" >.venv/.interop-stamp
	echo "setup.sh: built .venv ($("$python" --version)) with tinybird and $TINYBIRD_SDK_PY"
else
	echo "setup.sh: .venv is up to date"
fi
