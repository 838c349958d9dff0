#!/usr/bin/env python
"""``python examples/django_app/manage.py check | runserver``: Django's command line for the
example project (``examples/`` goes on the path, so ``django_app`` is importable)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
