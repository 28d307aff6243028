"""Reading a JSON file whose damage is the user's to fix: one :class:`~tfafm.errors.UserError` naming it."""

from __future__ import annotations

import json
from typing import Any

from tfafm.errors import UserError


def read_json(path: str) -> Any:
    """The parsed content of the JSON file ``path``.

    Raises:
        UserError: ``path:line:column`` for invalid JSON, or the byte that is not UTF-8.
        OSError: the file cannot be opened (the caller knows what it expected there).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start})") from None
