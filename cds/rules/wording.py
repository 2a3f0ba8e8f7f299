"""Reason messages compiled from their templates once per catalogue.

A check must not pay for a template. Each (code, template) is compiled once into a
function of the code's placeholders, in the order ``cds.catalog.messages.PLACEHOLDERS``
lists them, whose body is one f-string: rendering costs what the hand-written
f-strings it replaces did. A rule keeps the values the catalogue fixes (its name, its
window, already as text) and passes them with the order's own (how many prior results,
the newest one's date) when a reason fires; a reason whose every value the catalogue
fixes is rendered once, prebuilt with its reason. A catalogue of ten thousand entries
compiles a dozen templates, not one per entry.

The function is built as a syntax tree: the template's text only ever becomes string
constants, never source code to parse, and its names were checked against the code's
placeholders (``parse_template``) before anything is compiled.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import lru_cache

from cds.catalog.messages import PLACEHOLDERS, parse_template

Render = Callable[..., str]


@lru_cache(maxsize=256)
def compile_template(code: str, template: str) -> Render:
    """``template`` as a function of every placeholder of ``code``, in their listed order."""
    values: list[ast.expr] = []
    for literal, name in parse_template(code, template):
        if literal:
            values.append(ast.Constant(literal))
        if name is not None:
            values.append(ast.FormattedValue(ast.Name(name, ast.Load()), -1, None))
    body: ast.expr = ast.JoinedStr(values) if values else ast.Constant("")
    params = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(name) for name in PLACEHOLDERS[code]],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    tree = ast.fix_missing_locations(ast.Expression(ast.Lambda(params, body)))
    render: Render = eval(compile(tree, f"<message {code}>", "eval"), {"__builtins__": {}})
    return render
