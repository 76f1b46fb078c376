"""LogQL, Loki's query language: lexer, syntax tree, parser and printer.

``parse_expr`` parses and validates a query as Loki's ``ParseExpr`` does and returns
a tree of frozen dataclasses (:mod:`.ast`) whose ``str()`` is Loki's ``String()``.
Errors are :class:`ParseError` with Loki's wording and positions.

The grammar, the error messages and the printing rules follow Grafana Loki 3.7
(``pkg/logql/syntax``, an AGPL project); this package reproduces that behaviour from
its observable facts and shares no code with it. Regexes are Go (RE2) regexes,
translated for Python's ``re`` by :mod:`.regex`.
"""

from loki_async.logql.ast import Matcher, ParseError
from loki_async.logql.syntax import (
    parse_expr,
    parse_labels,
    parse_log_selector,
    parse_matchers,
    parse_sample_expr,
)

__all__ = [
    "Matcher",
    "ParseError",
    "parse_expr",
    "parse_labels",
    "parse_log_selector",
    "parse_matchers",
    "parse_sample_expr",
]
