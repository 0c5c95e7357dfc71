"""`bilens info` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse

from bilens.errors import BilensError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="(not built yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise BilensError("bilens info is not built yet")
