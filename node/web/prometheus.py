"""The Prometheus text exposition format: metric families and their label sets."""

from __future__ import annotations

from collections.abc import Iterable


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_set(**values: str) -> str:
    """``{name="value",…}`` with each value escaped (backslash, double quote, newline)."""
    return "{" + ",".join(f'{name}="{_escaped(value)}"' for name, value in values.items()) + "}"


def add_family(lines: list[str], name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, float | int | None]]) -> None:
    """Append a family's HELP and TYPE lines and one line per ``(label set, value)``.

    Integers are written as they are, floats with six significant digits, ``None`` as
    ``NaN`` (no value).
    """
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        if value is None:
            text = "NaN"
        elif isinstance(value, float):
            text = f"{value:.6g}"
        else:
            text = str(value)
        lines.append(f"{name}{labels} {text}")


__all__ = ["add_family", "label_set"]
