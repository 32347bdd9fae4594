"""Render the report, a list of blocks, as Markdown and as self-contained HTML.

A block is a tuple (kind, ...): ("title", text), ("banner", text), ("stamp", text),
("callout", text) (the headline: a framed box in HTML, a bold quote in Markdown),
("h2", text), ("p", text), ("list", items), ("kv", [(key, value)]),
("table", DataFrame of strings, caption),
("figure", title, caption, relative_png, png_bytes[, phone_png_bytes]).
The HTML embeds figures as base64 PNG and carries its CSS inline: it opens from disk with no
network and no scripts. The timestamp ("stamp") is kept on a line of its own in both outputs
so that regenerated reports differ from committed ones in that line only. The page reads on a
phone as on a desktop: a viewport tag, figures that shrink to the width, and tables that scroll
sideways inside their own box instead of pushing the page wider than the screen.
"""
from __future__ import annotations

import base64
import html
import re

import pandas as pd

PHONE_MEDIA = "(max-width: 640px)"  # the phone layout of figures and of the page below
CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 1.5em auto; padding: 0 1em; color: #222; overflow-wrap: break-word; }
h1 { font-size: 1.6em; margin: 0.3em 0; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.data td { white-space: nowrap; }  /* numbers stay whole; the box scrolls instead */
table.data th { min-width: 7em; }  /* a long header wraps into a few lines, not a tower */
table.kv td, table.kv th { text-align: left; }
table.kv td + td { overflow-wrap: anywhere; }  /* long values (paths, hashes) break */
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption, .caption { color: #555; font-size: 13px; }
.banner { background: #c00000; color: white; font-weight: bold; padding: 0.6em 1em; }
.callout { border-left: 6px solid #0072b2; background: #eef5fb; padding: 0.7em 1em;
           margin: 1em 0; font-size: 1.1em; font-weight: 600; }
.stamp { color: #888; font-size: 12px; margin: 0.2em 0; }
@media (max-width: 640px) { body { margin: 0.8em auto; font-size: 14px; }
  h1 { font-size: 1.3em; } .callout { font-size: 0.93em; line-height: 1.4; padding: 0.5em 0.7em; } }
""".strip()


# What makes Markdown text markup: a tag, comment or autolink (`<` then a letter, `/`, `!` or `?`) and the
# `](` / `][` that close a link or image's text. Run folder names, device names and commits come from
# results files, which are shared and copied: in report.md they must read as text, as in report.html.
_MD_MARKUP = re.compile(r"<(?=[A-Za-z/!?])|\](?=[(\[])")


def _md(text) -> str:
    """`text` as Markdown that renders as exactly this text, on one line (a line break could start a
    block: an HTML block or a link definition)."""
    return _MD_MARKUP.sub(lambda m: "&lt;" if m[0] == "<" else "\\]", str(text)).replace("\n", " ")


def _md_cell(text) -> str:
    return _md(text).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_md_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *args in blocks:
        if kind == "title":
            out.append(f"# {_md(args[0])}")
        elif kind in ("banner", "callout"):
            out.append(f"> **{_md(args[0])}**")
        elif kind in ("stamp", "p"):
            out.append(_md(args[0]))
        elif kind == "h2":
            out.append(f"## {_md(args[0])}")
        elif kind == "list":
            out.append("\n".join(f"- {_md(item)}" for item in args[0]))
        elif kind == "kv":
            out.append(markdown_table(pd.DataFrame(args[0], columns=["item", "value"])))
        elif kind == "table":
            frame, caption = args
            out.append((f"*{_md(caption)}*\n\n" if caption else "") + markdown_table(frame))
        elif kind == "figure":
            title, caption, relative = args[:3]
            out.append(f"![{_md(title)}]({relative})\n\n*{_md(title)}.* {_md(caption)}")
    return "\n\n".join(out) + "\n"


def html_table(frame: pd.DataFrame, cls: str = "data") -> str:
    """A table in a box of its own that scrolls sideways when the screen is narrower; cells of
    a "data" table never wrap (a number split over lines misreads), a "kv" table's text does."""
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
    rows = "\n".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
                     for row in frame.itertuples(index=False))
    return (f'<div class="table-wrap">\n<table class="{cls}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{rows}\n</tbody>\n</table>\n</div>")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_html(blocks: list[tuple], title: str) -> str:
    esc = html.escape
    body = []
    for kind, *args in blocks:
        if kind == "title":
            body.append(f"<h1>{esc(args[0])}</h1>")
        elif kind == "banner":
            body.append(f'<p class="banner">{esc(args[0])}</p>')
        elif kind == "callout":
            body.append(f'<p class="callout" role="note">{esc(args[0])}</p>')
        elif kind == "stamp":
            body.append(f'<p class="stamp">\n{esc(args[0])}\n</p>')
        elif kind == "h2":
            body.append(f"<h2>{esc(args[0])}</h2>")
        elif kind == "p":
            body.append(f"<p>{esc(args[0])}</p>")
        elif kind == "list":
            body.append("<ul>\n" + "\n".join(f"<li>{esc(str(i))}</li>" for i in args[0])
                        + "\n</ul>")
        elif kind == "kv":
            body.append(html_table(pd.DataFrame(args[0], columns=["item", "value"]), "kv"))
        elif kind == "table":
            frame, caption = args
            body.append((f'<p class="caption">{esc(caption)}</p>\n' if caption else "")
                        + html_table(frame))
        elif kind == "figure":
            fig_title, caption, _, png, *phone = args
            img = f'<img alt="{esc(fig_title)}" src="{_data_uri(png)}">'
            if phone and phone[0]:  # panels stacked, larger type: chosen on narrow screens
                img = (f'<picture>\n<source media="{PHONE_MEDIA}" srcset="{_data_uri(phone[0])}">'
                       f"\n{img}\n</picture>")
            body.append(f"<figure>\n{img}\n<figcaption><b>{esc(fig_title)}.</b> "
                        f"{esc(caption)}</figcaption>\n</figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
