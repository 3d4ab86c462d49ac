"""The page frame and the HTML pieces every page shares: links (`Site`), the layout, sections.

A `Site` makes every link: file names relative to the page for the static report, routes for
the dashboard. Sections marked `data-refresh` are fetched again by `bnsweep.js` on the live
site (`?fragment=<id>` returns a section's inner HTML), so a running sweep's progress moves
without a reload.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from bnsweep.sweep_tables import safe_name

__all__ = [
    "REFRESH_SECONDS",
    "Site",
    "esc",
    "layout",
    "num",
    "plain_table",
    "scroll",
    "section",
    "time",
]

esc = html.escape

#: Seconds between two refreshes of a live page's running sections.
REFRESH_SECONDS = 3


@dataclass(frozen=True)
class Site:
    """Where links point. `live`: routes of the dashboard (`/sweeps/NAME/...`); otherwise the
    static report's files (`sweeps/NAME/....html`), relative to the page being written."""

    live: bool
    here: tuple[str, ...] = ("index",)
    #: The trials that have a page (the static report writes a bounded number); None: all.
    trial_pages: frozenset[int] | None = None

    def at(self, *parts: str) -> Site:
        return replace(self, here=parts)

    def trial_link(self, sweep: str, trial_id: int, text: str) -> str:
        """A link to a trial's page, or the text alone where the report has no such page."""
        if self.trial_pages is not None and trial_id not in self.trial_pages:
            return esc(text)
        href = self.page("sweeps", self.sweep(sweep), "trials", str(trial_id))
        return f'<a href="{esc(href)}">{esc(text)}</a>'

    def sweep(self, name: str) -> str:
        return name if self.live else safe_name(name, "sweep")

    def _prefix(self) -> str:
        return "../" * (len(self.here) - 1)

    def page(self, *parts: str, query: Mapping[str, str] | None = None) -> str:
        """A page: ("index",), ("sweeps", NAME), ("sweeps", NAME, "cells", ID), ..."""
        if not self.live:
            return self._prefix() + "/".join(parts) + ".html"
        path = "/" if parts == ("index",) else "/" + "/".join(quote(p, safe="") for p in parts)
        return path + ("?" + urlencode(query) if query else "")

    def file(self, *parts: str, query: Mapping[str, str] | None = None) -> str:
        """A download or an asset, under the same folders as the pages."""
        if not self.live:
            return self._prefix() + "/".join(parts)
        path = "/" + "/".join(quote(p, safe="") for p in parts)
        return path + ("?" + urlencode(query) if query else "")


# -- layout --------------------------------------------------------------------------------------


def layout(site: Site, title: str, body: str, crumbs: Sequence[tuple[str, str]] = ()) -> str:
    nav = " › ".join(
        [f'<a href="{esc(site.page("index"))}">sweeps</a>']
        + [f'<a href="{esc(href)}">{esc(text)}</a>' for text, href in crumbs]
    )
    live = f' data-refresh-seconds="{REFRESH_SECONDS}"' if site.live else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)} · bnsweep</title>\n"
        f'<link rel="stylesheet" href="{esc(site.file("static", "bnsweep.css"))}">\n'
        f'<script defer src="{esc(site.file("static", "bnsweep.js"))}"></script>\n'
        f"</head>\n<body{live}>\n<nav>{nav}</nav>\n<main>\n<h1>{esc(title)}</h1>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )


def section(ident: str, content: str, site: Site, live: bool = True) -> str:
    refresh = " data-refresh" if live and site.live else ""
    return f'<section id="{esc(ident)}"{refresh}>{content}</section>'


def time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "–"


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if math.isfinite(value)
            else ("–" if math.isnan(value) else str(value))
        )
    return str(value)


def plain_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", ident: str = ""
) -> str:
    """A plain table in its own sideways-scrolling box (`scroll`); cells are HTML already
    (escape before)."""
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{ident}"' if ident else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return scroll(f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def scroll(table: str) -> str:
    """A table in a box of its own that scrolls sideways when the table is wider than the
    screen, so the page itself never does (a phone's 390 px)."""
    return f'<div class="scroll">{table}</div>'
