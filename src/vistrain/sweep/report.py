"""What a sweep leaves in its folder: ``trials.csv``, ``best.yaml`` (a ``train --config`` file) and
``sweep.html`` (the trials table, parameter importances and a parallel-coordinates plot, self-contained)."""

from __future__ import annotations

import base64
import csv
import html
import io
import warnings
from pathlib import Path

import yaml

from vistrain.config_file import normalise, yaml_scalar
from vistrain.sweep.runner import SweepConfig
from vistrain.sweep.space import to_options

ATTRS = ("valid_accuracy", "valid_macro_f1", "test_accuracy", "stage", "seconds", "worker", "error")


def recorded_trials(study) -> list:
    """The study's trials, without surplus ones a late worker had to give back."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def trial_rows(study, cfg: SweepConfig) -> list[dict]:
    names = [n for n, p in cfg.space.items() if p.kind != "fixed"]
    rows = []
    for t in recorded_trials(study):
        row = {"trial": t.number, "state": "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower(),
               "value": t.value}
        row.update({n: t.params.get(n) for n in names})
        row.update({a: t.user_attrs.get(a) for a in ATTRS})
        rows.append(row)
    return rows


def tied_with_best(study) -> list[int]:
    """The other finished trials that scored exactly what the best did: its lead over them is none."""
    best = study.best_trial
    return [t.number for t in recorded_trials(study)
            if t.state.name == "COMPLETE" and t.number != best.number and t.value == best.value]


def best_line(study, metric: str) -> str:
    """``trial 3, validation accuracy 91.2%``, saying so when other trials tied with it."""
    best, tied = study.best_trial, tied_with_best(study)
    text = f"trial {best.number}, validation {metric.replace('_', ' ')} {best.value:.1%}"
    if tied:
        shown = ", ".join(str(n) for n in tied[:8]) + (", ..." if len(tied) > 8 else "")
        text += (f" (tied with {len(tied)} other trial(s): {shown}; the sweep cannot tell them apart, "
                 f"trial {best.number} is only the one kept)")
    return text


def best_config(study, cfg: SweepConfig) -> dict:
    """The best trial's settings on top of the sweep's base: everything ``train --config`` needs."""
    best = study.best_trial
    fixed = {n: p.value for n, p in cfg.space.items() if p.kind == "fixed"}
    options = to_options({**fixed, **best.params}, {k: v for k, v in cfg.base.items()}, "best trial")
    # Epochs, probe mode or an ensemble that the trial's time budget chose from the machine's speed
    # (several workers share its cores): pinned, so that best.yaml trains what the trial trained.
    options.update(best.user_attrs.get("pinned") or {})
    options["data"] = cfg.data.resolve()
    if cfg.label_from_name:
        options["label_from_name"] = cfg.label_from_name
    out = {}
    for k, v in normalise(options, "best trial").items():
        if k in ("out", "cache_dir"):
            continue
        if isinstance(v, Path):
            v = str(v)
        elif k == "augment":
            v = {a: list(x) if isinstance(x, tuple) else x for a, x in v.__dict__.items()}
        out[k] = v
    return out


def write_outputs(study, cfg: SweepConfig) -> dict[str, Path]:
    out = cfg.out
    rows = trial_rows(study, cfg)
    files = {"trials": out / "trials.csv", "html": out / "sweep.html"}
    with files["trials"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial", "state", "value"])
        w.writeheader()
        w.writerows(rows)
    complete = [t for t in recorded_trials(study) if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        files["best"] = out / "best.yaml"
        tied = tied_with_best(study)
        head = (f"# Best of {len(complete)} finished trial(s) in study {cfg.study!r}: trial {best.number}, "
                f"validation {cfg.metric.replace('_', ' ')} {best.value:.4f}"
                + (f" (tied with trial(s) {', '.join(map(str, tied))})" if tied else "") + "\n"
                # Absolute: the file is read from wherever the retraining runs, not from the sweep folder.
                f"# Reproduce: vistrain train --config {files['best'].resolve()} --out runs/best\n")
        if best.user_attrs.get("pinned"):
            head += (f"# Pinned as the trial's time budget decided: "
                     f"{', '.join(f'{k}: {yaml_scalar(v)}' for k, v in best.user_attrs['pinned'].items())}\n")
        files["best"].write_text(head + yaml.safe_dump(best_config(study, cfg), sort_keys=False))
    files["html"].write_text(_page(study, cfg, rows))
    return files


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(study) -> tuple[list[tuple[str, str]], list[str]]:
    """(title, base64 PNG) for each plot that could be drawn, and why the others could not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    done = [t for t in recorded_trials(study) if t.state.name == "COMPLETE"]
    plots, missing = [], []
    varied = {n for t in done for n in t.params if len({repr(u.params.get(n)) for u in done}) > 1}
    # fANOVA (a random forest over the trials) rather than Optuna's default PED-ANOVA: on a dozen
    # trials PED-ANOVA's quantile split can select every trial and rank settings arbitrarily.
    def importance(st):
        try:
            return ovm.plot_param_importances(st, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError):  # too few distinct trials for the forest: Optuna's default
            return ovm.plot_param_importances(st)

    for title, draw in (("Parameter importance", importance), ("Parallel coordinates", ovm.plot_parallel_coordinate)):
        if len(done) < 2 or not varied:
            missing.append(f"{title}: needs at least 2 finished trials with differing settings")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", message=".*importances will be equal.*")
                ax = draw(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 4.5)
            plots.append((title, _png(fig)))
            plt.close(fig)
        except (ValueError, RuntimeError) as exc:  # e.g. every finished trial scored the same
            missing.append(f"{title}: {exc}")
    return plots, missing


def _page(study, cfg: SweepConfig, rows: list[dict]) -> str:
    plots, missing = _plots(study)
    cols = list(rows[0]) if rows else []
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))
    best = study.best_trial.number if any(r["state"] == "complete" for r in rows) else None
    tied = tied_with_best(study) if best is not None else []
    table = "".join(
        f"<tr{' class=best' if r['trial'] == best else ''}>" + "".join(f"<td>{cell(r[c])}</td>" for c in cols) + "</tr>"
        for r in rows)
    figs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
                   for t, b in plots)
    notes = "".join(f"<p class=note>{html.escape(m)}</p>" for m in missing)
    return f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>Sweep {html.escape(cfg.study)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}}tr.best{{background:#e6f6e6;font-weight:bold}}img{{max-width:100%}}.note{{color:#666}}</style>
</head><body><h1>Sweep {html.escape(cfg.study)}</h1>
<p>{len(rows)} trial(s) on {html.escape(str(cfg.data))}; objective: validation {cfg.metric.replace('_', ' ')}
({cfg.sampler} sampler, {cfg.pruner} pruning){f'; best: trial {best}' if best is not None else ''}{f' (tied with {len(tied)} other trial(s))' if tied else ''}.
Validation sets are small: the best trial's lead may partly be luck; check it on held-out test images.</p>
<table id=trials><thead><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in cols)}</tr></thead><tbody>{table}</tbody></table>
{figs}{notes}</body></html>
"""
