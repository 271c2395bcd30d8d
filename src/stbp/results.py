"""`stbp results`: one row per run folder, read from its `summary.json` and `config.toml`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from stbp.config import tomllib

COLUMNS = (
    "run", "config", "data", "split", "network", "neunorm", "T", "seed", "epochs",
    "selection", "selected_epoch", "val_acc", "test_acc_at_selection", "final_test_acc",
    "seconds", "device", "precision",
)  # fmt: skip


class ResultsError(ValueError):
    """A folder is not a run folder or its files cannot be read."""


def run_row(folder: str | Path) -> dict:
    """The row of one run folder; `ResultsError` naming the folder if it has no summary."""
    folder = Path(folder).expanduser()
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except OSError:
        message = f"{folder}: no summary.json (not a run folder, or no epoch done yet)"
        raise ResultsError(message) from None
    except ValueError as err:
        raise ResultsError(f"{folder}/summary.json: not valid JSON ({err})") from None
    try:
        config = tomllib.loads((folder / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        config = {}
    split = summary.get("split") or {}
    selection = summary.get("selection", "test")  # runs before validation splits: test
    return {
        "run": str(folder),
        "config": summary.get("config", ""),
        "data": split.get("name") or config.get("data", {}).get("dataset", ""),
        "split": "/".join(str(split.get(k, "?")) for k in ("train", "val", "test"))
        + (f" seed {split['seed']}" if "seed" in split else ""),
        "network": summary.get("network") or _network(config),
        "neunorm": summary.get("neunorm", config.get("model", {}).get("neunorm", "")),
        "T": summary.get("T", config.get("data", {}).get("T", "")),
        "seed": summary.get("seed", ""),
        "epochs": summary.get("epochs", ""),
        "selection": selection,
        "selected_epoch": summary.get("selected_epoch", summary.get("best_epoch", "")),
        "val_acc": summary.get("val_acc"),
        "test_acc_at_selection": summary.get("test_acc_at_selection",
                                              summary.get("best_test_acc")),
        "final_test_acc": summary.get("final_test_acc"),
        "seconds": summary.get("total_seconds"),
        "device": summary.get("device", ""),
        "precision": summary.get("precision", ""),
    }


def _network(config: dict) -> str:
    model = config.get("model", {})
    return model.get("spec") or model.get("network", "")


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("_acc") or key.endswith("_acc_at_selection"):
        return f"{100 * value:.2f}"
    if key == "seconds":
        return f"{value:.0f}"
    return str(value)


def to_csv(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def to_markdown(rows: list[dict]) -> str:
    head = [c.replace("_", " ") + (" %" if "acc" in c else "") for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def to_text(rows: list[dict]) -> str:
    table = [list(COLUMNS)] + [[_cell(c, r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)  # fmt: skip


def _cmd_results(args: argparse.Namespace) -> int:
    rows, problems = [], []
    for folder in args.runs:
        try:
            rows.append(run_row(folder))
        except ResultsError as err:
            problems.append(str(err))
    for problem in problems:
        print(f"stbp results: skipped {problem}", file=sys.stderr)
    if not rows:
        print("stbp results: error: no run folder with a summary.json", file=sys.stderr)
        return 2
    if args.csv:
        Path(args.csv).expanduser().write_text(to_csv(rows))
    print(to_markdown(rows) if args.markdown else to_text(rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("results", help="one row per run folder: split, selection, accuracy")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders")
    p.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=_cmd_results)
