"""`python -m suite`: runs every scenario against the stack `suite.stack up` started."""

import sys

from . import scenarios, tokens, relay  # noqa: F401 - registering the scenarios is the import
from .harness import run_all

sys.exit(run_all())
