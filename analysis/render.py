"""Render the report, a list of blocks, as Markdown and as self-contained HTML.

A block is a tuple (kind, ...): ("title", text), ("banner", text), ("stamp", text),
("h2", text), ("p", text), ("list", items), ("kv", [(key, value)]),
("table", DataFrame of strings, caption), ("figure", title, caption, relative_png, png_bytes).
The HTML embeds figures as base64 PNG and carries its CSS inline: it opens from disk with no
network and no scripts. The timestamp ("stamp") is kept on a line of its own in both outputs
so that regenerated reports differ from committed ones in that line only.
"""
from __future__ import annotations

import base64
import html

import pandas as pd

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption, .caption { color: #555; font-size: 13px; }
.callout { border-left: 5px solid #0173b2; background: #eef5fb; padding: 0.6em 1em; font-weight: 600; }
.banner { background: #c00000; color: white; font-weight: bold; padding: 0.6em 1em; }
.stamp { color: #888; font-size: 12px; }
""".strip()


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


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
            out.append(f"# {args[0]}")
        elif kind in ("banner", "callout"):
            out.append(f"> **{args[0]}**")
        elif kind in ("stamp", "p"):
            out.append(args[0])
        elif kind == "h2":
            out.append(f"## {args[0]}")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "kv":
            out.append(markdown_table(pd.DataFrame(args[0], columns=["item", "value"])))
        elif kind == "table":
            frame, caption = args
            out.append((f"*{caption}*\n\n" if caption else "") + markdown_table(frame))
        elif kind == "figure":
            title, caption, relative, _ = args
            out.append(f"![{title}]({relative})\n\n*{title}.* {caption}")
    return "\n\n".join(out) + "\n"


def html_table(frame: pd.DataFrame) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
    rows = "\n".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
                     for row in frame.itertuples(index=False))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def to_html(blocks: list[tuple], title: str) -> str:
    esc = html.escape
    body = []
    for kind, *args in blocks:
        if kind == "title":
            body.append(f"<h1>{esc(args[0])}</h1>")
        elif kind == "banner":
            body.append(f'<p class="banner">{esc(args[0])}</p>')
        elif kind == "callout":
            body.append(f'<p class="callout">{esc(args[0])}</p>')
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
            body.append(html_table(pd.DataFrame(args[0], columns=["item", "value"])))
        elif kind == "table":
            frame, caption = args
            body.append((f'<p class="caption">{esc(caption)}</p>\n' if caption else "")
                        + html_table(frame))
        elif kind == "figure":
            fig_title, caption, _, png = args
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<figure>\n<img alt="{esc(fig_title)}" src="data:image/png;base64,'
                        f'{data}">\n<figcaption><b>{esc(fig_title)}.</b> {esc(caption)}'
                        f"</figcaption>\n</figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
