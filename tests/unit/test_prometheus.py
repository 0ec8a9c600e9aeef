"""The Prometheus text format the node's /metrics writes."""

from __future__ import annotations

from node.web.prometheus import add_family, label_set


def test_label_values_are_escaped() -> None:
    assert label_set(worker='gpu "1"', host="a\\b", device="line\nbreak") == (
        '{worker="gpu \\"1\\"",host="a\\\\b",device="line\\nbreak"}')


def test_a_family_writes_help_type_and_each_sample() -> None:
    lines: list[str] = []
    add_family(lines, "radnode_x", "gauge", "An example.",
               [("", 3), ('{k="a"}', 0.1234567), ('{k="b"}', None)])
    assert lines == ["# HELP radnode_x An example.", "# TYPE radnode_x gauge", "radnode_x 3",
                     'radnode_x{k="a"} 0.123457', 'radnode_x{k="b"} NaN']
