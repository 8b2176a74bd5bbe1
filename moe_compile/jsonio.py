"""Reading the JSON files users hand us (config.json, plans, profiles) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from moe_compile.errors import InvalidInput, one_line


def read_json_object(path: str | Path, what: str) -> dict:
    """The JSON object in `path`; InvalidInput naming `what` and the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{what} '{path}' does not exist")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise InvalidInput(f"{what} '{path}' is not valid JSON ({one_line(exc)})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} '{path}' must hold a JSON object, not {type(doc).__name__}")
    return doc


def print_report(doc: dict) -> None:
    """A command's `--json` document on stdout, with the process' peak memory so far added
    (`peak_memory`: moe_compile/process_memory.py)."""
    from moe_compile.process_memory import peak_memory

    print(json.dumps({**doc, "peak_memory": peak_memory()}, indent=2))
