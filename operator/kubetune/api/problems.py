"""Problems found in a manifest, each located by its field path, and the error that lists them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

Loc = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a manifest: where (a field path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def field_path(loc: Iterable[str | int]) -> str:
    """("spec", "resources", "tolerations", 0, "key") -> "spec.resources.tolerations[0].key"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# Pydantic names the member of a union it tried in the location ("int", "constrained-int",
# "literal['auto']"); a person wants the field. API field names never look like these.
_UNION_MEMBER_NAMES = {"int", "str", "float", "bool"}


def problems_from_validation_error(error: ValidationError, prefix: Loc = ()) -> list[Problem]:
    """Turn pydantic's errors into located problems: the cross-field rules' own list (carried
    in the error's context) becomes one problem per field, and the failed members of a
    union become one problem that names every alternative."""
    found: set[Problem] = set()
    alternatives: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        loc = prefix + tuple(p for p in item["loc"] if not _is_union_member(p))
        nested: Sequence[Problem] | None = (item.get("ctx") or {}).get("problems")
        if nested:
            found |= {Problem(field_path((*loc, p.path)) if p.path else field_path(loc), p.message) for p in nested}
        else:
            alternatives.setdefault(field_path(loc), []).append(_message(item))
    found |= {Problem(path, "; or ".join(dict.fromkeys(messages))) for path, messages in alternatives.items()}
    return sorted(found)


def _is_union_member(part: Any) -> bool:
    return isinstance(part, str) and (
        part in _UNION_MEMBER_NAMES or "[" in part or part.startswith(("constrained-", "function-"))
    )


def _message(item: Any) -> str:
    message = str(item["msg"])
    if item["type"] == "extra_forbidden":
        return "unknown field (check its spelling and its level of indentation)"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if item["type"] in {"missing"}:
        return "required field is missing"
    return message


class InvalidSpec(ValueError):
    """A manifest that cannot run. Lists every problem found, by field path."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        count = len(self.problems)
        lines = [f"{where}{count} problem{'s' if count != 1 else ''} in the FineTuneJob:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)
