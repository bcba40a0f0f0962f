"""Help that shows each flag's default, when it has a meaningful one."""

from __future__ import annotations

import argparse


class ShowDefaults(argparse.HelpFormatter):
    """Like argparse's ArgumentDefaultsHelpFormatter, minus empty defaults (None, "", [], False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, "", [], False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"
