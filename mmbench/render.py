"""Rendering of a `mmbench report` (mmbench/report.py builds it): Markdown, LaTeX, one self-contained HTML
page and the terminal tables. Nothing here computes a number; it lays out what report.build_report gathered."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import List, Optional

import pandas as pd
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tabulate import tabulate

from .references import Claim


def verdict(claim: Claim) -> str:
    """'✓ holds' / '✗ fails' / 'missing'; a hedged claim says so, and that not holding is no failure; a claim
    decided by runs at another budget than the paper's says it is not scored."""
    if claim.status == "off-budget":
        return "not scored: runs at another budget than the paper's"
    if claim.strength == "hedged":
        return {"holds": "✓ holds (hedged)", "fails": "✗ does not hold (hedged: evidence, not a failure)",
                "missing": "missing (hedged)"}[claim.status]
    return {"holds": "✓ holds", "fails": "✗ fails", "missing": "missing"}[claim.status]


def claims_table(claims: List[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c.id, "figure": c.figure, "verdict": verdict(c),
                          "evidence": "; ".join(c.details), "paper says": f"“{c.quote}” ({c.source})"}
                         for c in claims], columns=["claim", "figure", "verdict", "evidence", "paper says"])


CELL_KEY = ("Each cell: produced (mean ± sample std over seeds) | paper value (± printed std) | difference and "
            "tolerance verdict | Welch's test against the printed mean ± std, one run's prediction-interval t-test "
            "(Holm-corrected per paper). Runs at another budget than the paper's (quick or smoke tier: "
            "reference_results/budgets.yaml) are shown and not scored: no verdict.")


def md_table(df: pd.DataFrame) -> str:
    """A GitHub table of the cells as report.py wrote them: tabulate would read "0.800" back as a number and print
    "0.8", so one column would mix 3 decimals and fewer."""
    df = df.rename(columns=lambda c: md_cell(str(c))).map(lambda v: md_cell(str(v)))
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def md_cell(text: str) -> str:
    """A `|` inside a cell (the reference cells' 'produced | paper | Δ' separator, a table name) escaped, or a GitHub
    table splits the cell and drops the columns past the header's."""
    return text.replace("|", "\\|")


def render_markdown(summaries, refs, claims: Optional[List[Claim]] = None, paper_lines: Optional[List[str]] = None,
                    images: Optional[List[Path]] = None, title: str = "mmbench report") -> str:
    parts = [f"# {title}", ""]
    if paper_lines:
        parts += [f"- {line}" for line in paper_lines] + [""]
    for title, df in summaries:
        parts += [f"## {title}", "", md_table(df), ""]
    if refs:
        parts += ["## Comparison with the papers", "", CELL_KEY, ""]
    for title, df, summary in refs:
        parts += [f"### {title}", "", md_table(df), "", f"*{summary}*", ""]
    if claims:
        parts += ["## Claims about the papers' figures", "", md_table(claims_table(claims)), ""]
    for img in images or []:
        parts += [f"![{img.stem}]({img.name})", ""]
    return "\n".join(parts)


LATEX = {"\\": r"\textbackslash{}", "|": r"\textbar{}", ">=": r"$\geq$", "<=": r"$\leq$", ">": r"$>$", "<": r"$<$",
         "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
         "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$", "✓": r"\checkmark", "✗": r"$\times$", "×": r"$\times$",
         "—": "--", "β": r"$\beta$", "→": r"$\to$", "“": "``", "”": "''"}
LATEX_SPECIAL = re.compile("|".join(re.escape(k) for k in sorted(LATEX, key=len, reverse=True)))


def render_latex(summaries, refs, claims: Optional[List[Claim]] = None, paper_lines: Optional[List[str]] = None,
                 title: str = "mmbench report") -> str:
    """A LaTeX fragment (booktabs tables) to \\input into a document."""
    def esc(text: str) -> str:  # one pass, so that no replacement's own `\`, `{}` or `$` is escaped again
        return LATEX_SPECIAL.sub(lambda m: LATEX[m.group(0)], text)

    def table(title: str, df: pd.DataFrame, caption: str = "") -> List[str]:
        head = " & ".join(rf"\textbf{{{esc(str(c))}}}" for c in df.columns) + r" \\"
        rows = [" & ".join(esc(str(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
        return [r"\begin{table}[ht]", r"\centering\footnotesize", rf"\begin{{tabular}}{{{'l' * len(df.columns)}}}",
                r"\toprule", head, r"\midrule", *rows, r"\bottomrule", r"\end{tabular}",
                rf"\caption{{{esc(title)}{('. ' + esc(caption)) if caption else ''}}}", r"\end{table}", ""]

    parts = [f"% {title} (generated by mmbench)", ""]
    for line in paper_lines or []:
        parts += [esc(line) + r"\\"]
    for title, df in summaries:
        parts += table(title, df)
    for title, df, summary in refs:
        parts += table(title, df, summary)
    if claims:
        parts += table("Claims about the papers' figures", claims_table(claims)[["claim", "figure", "verdict", "evidence"]])
    return "\n".join(parts)


def render_html(summaries, refs, claims: Optional[List[Claim]] = None, paper_lines: Optional[List[str]] = None,
                images: Optional[List[Path]] = None, title: str = "mmbench report") -> str:
    """One self-contained page: every table, and every PNG figure embedded as a data URI."""
    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, escape=True, border=0, classes="t")

    css = ("body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1400px}table.t{border-collapse:collapse;"
           "margin:.5em 0 1.5em}table.t td,table.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;"
           "vertical-align:top}table.t th{background:#f4f4f4}caption,.cap{color:#555;font-style:italic}"
           "img{max-width:100%;margin:1em 0;border:1px solid #eee}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    if paper_lines:
        parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in paper_lines) + "</ul>")
    for t, df in summaries:
        parts += [f"<h2>{html.escape(t)}</h2>", table(df)]
    if refs:
        parts += ["<h2>Comparison with the papers</h2>", f"<p class='cap'>{html.escape(CELL_KEY)}</p>"]
    for t, df, summary in refs:
        parts += [f"<h3>{html.escape(t)}</h3>", table(df), f"<p class='cap'>{html.escape(summary)}</p>"]
    if claims:
        parts += ["<h2>Claims about the papers' figures</h2>", table(claims_table(claims))]
    if images:
        parts.append("<h2>Figures</h2>")
        for img in images:
            data = base64.b64encode(Path(img).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(img.stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='cap'>{html.escape(img.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def column_groups(df: pd.DataFrame, width: int) -> List[List[int]]:
    """df's columns after the first (the row labels) in consecutive groups, each as wide as fits beside the labels in
    `width` terminal cells with rich's default borders (3 cells per column and 1), so that no cell is folded over
    lines; a column too wide by itself is a group of one. One group when the whole table fits."""
    def natural(texts) -> int:
        return max((cell_len(line) for t in texts for line in str(t).splitlines() or [""]), default=0)

    widths = [natural([c, *df[c].tolist()]) for c in df.columns]
    groups: List[List[int]] = []
    used = width  # nothing fits yet: the first column starts a group
    for i in range(1, len(widths)):
        if used + widths[i] + 3 > width:
            groups.append([])
            used = widths[0] + 3 + 1
        groups[-1].append(i)
        used += widths[i] + 3
    return groups


def render_terminal(console: Console, summaries, refs, claims: Optional[List[Claim]] = None,
                    paper_lines: Optional[List[str]] = None) -> None:
    def show(title: str, df: pd.DataFrame, caption: str = "", parts: bool = True) -> None:
        # A table of numbers wider than the terminal is printed as consecutive tables of the columns that fit, each
        # with the row labels, rather than with every cell folded over several lines (prose, parts=False, wraps).
        every = [list(range(1, len(df.columns)))]
        groups = column_groups(df, console.width) if parts and len(df.columns) > 1 else every
        for k, group in enumerate(groups):
            part = f" (part {k + 1} of {len(groups)})" if len(groups) > 1 else ""
            cap = caption if k == len(groups) - 1 else ""
            # rich reads `[...]` as markup: a label such as 'mopoe [e3b0c442]' or a table named '[/b]' is escaped
            t = Table(title=escape(title + part), caption=escape(cap) if cap else None, show_lines=False)
            for c in [0, *group]:
                t.add_column(escape(str(df.columns[c])), overflow="fold")
            for _, row in df.iterrows():
                t.add_row(*[escape(str(row.values[c])) for c in [0, *group]])
            console.print(t)

    if not summaries and not refs and not claims:
        console.print("no finished runs found")
    for title, df in summaries:
        show(title, df)
    for title, df, summary in refs:
        show(title, df, summary)
    if claims:
        show("Claims about the papers' figures", claims_table(claims)[["claim", "figure", "verdict", "evidence"]],
             parts=False)
    for line in paper_lines or []:
        console.print(line, markup=False, highlight=False)
