"""How the query service composes its ClickHouse SQL: one templating step, :func:`fill`.

A query is a :class:`string.Template` text with two kinds of holes that never mix: ``$name`` is SQL text
chosen by our code (a fragment, a grouping expression, a sub-statement), filled in here; ``{name:Type}`` is
a value, bound by clickhouse-connect, written as ClickHouse reads it. Because ``$name`` and ``{...}`` do not
collide, a template needs no brace escaping (no ``{{after}}``, no ``{{{{project_id:String}}}}``) and no second
formatting pass: what the template shows is what ClickHouse receives, with the fragments put in. Filled-in
text is not scanned again, so a fragment's own ``$`` or braces stay as they are. User input never goes
through here: it is always a bound ``{name:Type}`` value.
"""

from __future__ import annotations

from string import Template


def fill(template: str, **parts: str) -> str:
    """``template`` with every ``$name`` (or ``${name}``) replaced by ``parts[name]``, SQL text chosen by our
    code; ``{name:Type}`` parameters are left for clickhouse-connect to bind. A placeholder without a part is a
    ``KeyError`` (``$$`` is a literal ``$``)."""
    return Template(template).substitute(parts)
