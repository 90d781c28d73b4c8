"""What analyses write (sections of text, tables, PNG figures in RESULTS_DIR/analysis/) and the report built from them.

Each analysis saves `analysis/<name>.json`: a title, an introduction and sections (heading, text, table rows, figure
file). `write_report` puts the experiment's setup and accuracy table first, then every saved analysis in the order
it is given (the package's `write_report` gives the registry's), into one `report.md` and a self-contained
`report.html` (figures embedded). This module imports no analysis: the analyses import it to write.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import RiclError
from ..results_dir import ANALYSIS, REPORT_HTML, REPORT_MD, SUMMARY_MD, markdown_table

HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45;padding:0 1em}}
table{{border-collapse:collapse;font-size:0.85em;margin:0.8em 0}}td,th{{border:1px solid #bbb;padding:2px 6px}}
th{{background:#eee}}img{{max-width:100%}}code{{background:#f4f4f4}}</style></head>
<body>
{body}
</body></html>
"""


@dataclass
class Section:
    """One part of an analysis: a heading, a paragraph, optionally a table (rows of dicts) and a figure file name."""

    heading: str
    text: str = ""
    table: list[dict] = field(default_factory=list)
    figure: str | None = None


def save_analysis(directory: Path, name: str, title: str, intro: str, sections: list[Section]) -> Path:
    """Write analysis/<name>.json, which the report reads."""
    path = directory / f"{name}.json"
    data = {"name": name, "title": title, "intro": intro, "sections": [asdict(s) for s in sections]}
    path.write_text(json.dumps(data, indent=1, default=_plain))
    return path


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_json(path: Path, data: Any) -> None:
    """Data as indented JSON, numpy values as plain ones."""
    path.write_text(json.dumps(data, indent=1, default=_plain))


def new_figure(width: float = 8.0, height: float = 4.5):
    """A matplotlib Figure that does not touch pyplot's global backend (saved through Agg)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: Path) -> str:
    """Save as PNG without the software tag (no version, no date): the same figure is the same bytes. Returns the
    file name that sections refer to."""
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path.name


def section_markdown(section: dict, level: int = 3) -> str:
    """One saved section: heading, text, figure link, table."""
    parts = [f"{'#' * level} {section['heading']}\n"]
    if section.get("text"):
        parts.append(section["text"] + "\n")
    if section.get("figure"):
        parts.append(f"![{section['heading']}](analysis/{section['figure']})\n")
    if section.get("table"):
        parts.append(markdown_table(section["table"]))
    return "\n".join(parts)


def analysis_markdown(data: dict) -> str:
    """One saved analysis: its title, introduction and sections."""
    body = [f"## {data['title']}\n", data.get("intro", "") + "\n"]
    body += [section_markdown(s) for s in data["sections"]]
    return "\n".join(body)


def setup_markdown(directory: Path) -> str:
    """The experiment: the first lines of summary.md (task, model, pools, queries) and its accuracy table."""
    summary = directory / SUMMARY_MD
    text = summary.read_text() if summary.exists() else f"# Results in {directory}\n"
    text = re.sub(r"^# ", "## Experiment: ", text, count=1, flags=re.M)
    return re.sub(r"^## (?!Experiment)", "### ", text, flags=re.M)


def report_markdown(directory: Path, names: Sequence[str]) -> str:
    """The whole report as Markdown: setup, then each saved analysis of `names`, in that order."""
    analysis = directory / ANALYSIS
    saved = [analysis / f"{n}.json" for n in names if (analysis / f"{n}.json").exists()]
    if not saved:
        raise RiclError(f"no analyses saved under {analysis}; run `ricl analyze all {directory}` first")
    intro = (f"# In-context learning as kernel regression: report for `{directory.name}`\n\n"
             "Analyses after Han et al. (2023): attention over the demonstrations, the ICL prediction reconstructed "
             "from single attention heads, kernel-regression baselines, the kernel surrogate as a stand-in for the "
             "LM, the kernel's bandwidth, label formats, the demonstration distribution, and accuracy against prompt "
             "tokens. Accuracies carry 95% bootstrap intervals over queries.\n")
    contents = "\n".join(f"- {json.loads(p.read_text())['title']}" for p in saved)
    index = analysis / "index.json"
    skipped = {n: why for n, why in json.loads(index.read_text()).items() if why != "done"} if index.exists() else {}
    if skipped:
        contents += "\n\nNot run on these records: " + "; ".join(f"{n.replace('_', ' ')} ({why})"
                                                                 for n, why in skipped.items())
    parts = [intro, "Contents:\n\n" + contents + "\n", setup_markdown(directory)]
    parts += [analysis_markdown(json.loads(p.read_text())) for p in saved]
    return "\n\n".join(parts)


def markdown_to_html(text: str, directory: Path, title: str) -> str:
    """The Markdown as a standalone HTML page, PNG figures embedded as data URIs."""
    import markdown

    body = markdown.markdown(text, extensions=["tables"])

    def embed(match: re.Match) -> str:
        path = directory / match.group(1)
        if not path.exists():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    return HTML_PAGE.format(title=title, body=body)


def write_report(directory: str | Path, names: Sequence[str], html: bool = True) -> list[Path]:
    """Write RESULTS_DIR/report.md (and report.html) from the saved analyses of `names`; returns the paths written."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RiclError(f"{directory}: no such results directory")
    text = report_markdown(directory, names)
    written = [directory / REPORT_MD]
    written[0].write_text(text)
    if html:
        written.append(directory / REPORT_HTML)
        written[1].write_text(markdown_to_html(text, directory, f"retrieval-icl report: {directory.name}"))
    return written
