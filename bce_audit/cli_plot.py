"""`bce-audit plot`: pictures of a sweep, in the terminal or as PNG/SVG/PDF files.

Registered on the `cli` group when bce_audit.cli is imported (its last line imports this module).
Parsing only: the sweep is `sweep.run_sweep`, the pictures are `bce_audit.plot`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields, replace

import click
import numpy as np

from bce_audit import plot, report, sweep
from bce_audit.cli import _fail, _grid, _run, _selection, _settings, cli


@cli.command("plot")
@_selection
@_grid
@click.option("--kind", "plot_kind", type=click.Choice(plot.KINDS), default="roundtrip", show_default=True,
              help="roundtrip: relative error of logit(sigmoid(x)); bce: each formula's BCE beside the "
                   "exact one; error: bits of error; grad: |dBCE/dx| beside the exact |sigmoid(x) - y|.")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write a .png, .svg or .pdf picture (matplotlib) instead of drawing in the terminal.")
@click.option("--size", default="{}x{}".format(*plot.DEFAULT_SIZE), show_default=True, metavar="WxH",
              help=f"Picture size in pixels for --output (at {plot.DPI} dpi; SVG and PDF get the same "
                   "size in inches).")
def plot_cmd(plot_kind: str, output: str | None, size: str, **kw) -> int:
    """Plot a sweep: in the terminal (plotext), or to a picture file with --output (matplotlib).

    \b
    With --label both (the default), --kind bce and error show the seed article's pair
    {(-a, 0), (a, 1)} and grad shows label 1; --label 1 or 0 shows one label. Needs the plot extra:
      pip install 'bce-audit[plot]'
    \b
    Examples:
      bce-audit plot --dtype float32 --range 0:40
      bce-audit plot --config configs/seed-article.toml --kind bce -o docs/seed-bce.png
    """
    try:
        if output is not None:
            plot.check_path(output)
            width_px, height_px = plot.parse_size(size)
            plot.require("matplotlib.figure", "--output")
        else:
            plot.require("plotext", "the terminal chart")
    except plot.PlotError as e:
        _fail(str(e))
    s, _ = _settings(kw)
    s = replace(s, keep=None)  # a curve needs every grid point
    if plot_kind == "grad" and "grad" in {f.name for f in fields(sweep.Settings)}:
        s = replace(s, grad=True)  # gradients are computed only when asked for
    if plot_kind == "grad":  # a one-point probe: fail fast while the sweep has no gradient rows
        probe = _run(lambda: sweep.rows_for_dtype(s, s.dtypes[0], np.zeros(1)))
        try:
            plot.check_available(plot_kind, probe)
        except plot.PlotError as e:
            _fail(str(e))
    result = _run(lambda: sweep.run_sweep(s))
    try:
        data = plot.plot_data(result, plot_kind)
        if output is not None:
            plot.render_file(data, output, width_px, height_px)
        else:
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
            text = plot.render_terminal(data, report.width_for(None), plot.TERMINAL_HEIGHT, color)
            click.echo(text, nl=False)
    except plot.PlotError as e:
        _fail(str(e))
    return 0
