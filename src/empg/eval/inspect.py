"""``empg inspect RUN_DIR``: one static HTML page per iteration with the episodes of ``trajectories.jsonl``.

The page is self-contained (inline CSS and a few lines of vanilla JS, no network; it opens from disk): a summary
header (the iteration's batch success rate, invalid rate and step entropy by outcome from ``metrics.jsonl``, and the
same for the episodes shown), filters by outcome and task type, and the episodes side by side, successes in one
column and failures in the other. Each step shows the observation, the response with every token coloured by its
behaviour entropy (hover: the value), the parsed action and its validity, the step entropy H, EMPG's g and f and the
advantage before and after EMPG. Every text is HTML-escaped.

Filters can be preset in the address: ``page.html#outcome=failure&task=pick_and_place_simple``.

File names: ``inspect_iter_NNNN.html`` (``NNNN`` = the iteration as in ``metrics.jsonl``, 4 digits) when the output
is a folder; the previous/next links point to those names in the page's own folder, so they work when every page is
written into one folder (``--all``).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from empg.eval.runlog import METRICS, TRAJECTORIES, read_metrics

HUE = (235, 105, 35)  # RGB of the most uncertain token's background; alpha = min(1, H / scale)


def page_name(iteration: int) -> str:
    """The file name of iteration ``iteration``'s page, e.g. ``inspect_iter_0003.html``."""
    return f"inspect_iter_{iteration:04d}.html"


# ----------------------------------------------------------------------------- loading
def load_records(run_dir: str | Path) -> list[dict]:
    """All episode records of ``run_dir/trajectories.jsonl``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder, or it has no ``trajectories.jsonl`` (both say what to do).
    """
    run_dir = Path(run_dir)
    if not ((run_dir / METRICS).is_file() or (run_dir / "config.yaml").is_file()):
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no metrics.jsonl or config.yaml); pass the run_dir of `empg train`, "
            "e.g. `empg inspect runs/household-tiny`"
        )
    path = run_dir / TRAJECTORIES
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {TRAJECTORIES}: its episodes were not logged. "
            "Train with log.trajectories>0 (the default, 8), "
            "e.g. `empg train --config configs/household-tiny.yaml log.trajectories=8`"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def select(records: list[dict], iteration: int | None, split: str = "train") -> tuple[int, list[dict]]:
    """The records of one iteration and split (``iteration`` None: the last recorded one).

    Returns:
        (iteration, its records).

    Raises:
        LookupError: nothing was recorded for that split or iteration (the message lists what was).
    """
    in_split = [r for r in records if r.get("split", "train") == split]
    if not in_split:
        have = sorted({r.get("split", "train") for r in records})
        raise LookupError(f"no episodes recorded for split {split!r}; recorded splits: {', '.join(have) or 'none'}")
    its = iterations(in_split)
    if iteration is None:
        iteration = its[-1]
    chosen = [r for r in in_split if r["iteration"] == iteration]
    if not chosen:
        raise LookupError(
            f"no episodes recorded for iteration {iteration}; iterations with records: {_ranges(its)} "
            f"(pass one with --iteration N)"
        )
    return iteration, chosen


def iterations(records: list[dict]) -> list[int]:
    """The sorted distinct iterations of ``records``."""
    return sorted({int(r["iteration"]) for r in records})


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 5]`` → ``"1-3, 5"``."""
    parts: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


# ----------------------------------------------------------------------------- colours and numbers
def entropy_scale(episodes: list[dict]) -> float:
    """The entropy (nats) drawn at full colour: the 95th percentile of the shown tokens' entropies, rounded up to
    0.5, at least 0.5 (so a page of confident tokens still shows which ones are not)."""
    values = sorted(e for ep in episodes for st in ep["steps"] for _, e in st.get("tokens", []))
    if not values:
        return 1.0
    q = values[min(len(values) - 1, int(0.95 * len(values)))]
    return max(0.5, math.ceil(q * 2) / 2)


def token_style(entropy: float, scale: float) -> str:
    """The inline style of a token of ``entropy`` nats: its background alpha is ``min(1, entropy / scale)``."""
    alpha = min(1.0, max(0.0, entropy / scale)) if scale > 0 else 0.0
    return f"background:rgba({HUE[0]},{HUE[1]},{HUE[2]},{alpha:.2f})"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


# ----------------------------------------------------------------------------- rendering
def render_page(
    episodes: list[dict],
    iteration: int,
    *,
    title: str = "run",
    batch: dict | None = None,
    prev_href: str | None = None,
    next_href: str | None = None,
    scale: float | None = None,
) -> str:
    """The whole HTML page of one iteration's ``episodes`` (records of ``trajectories.jsonl``).

    Args:
        episodes: the records to show.
        iteration: their iteration (for the title).
        title: the run's name.
        batch: the iteration's ``metrics.jsonl`` row (batch-level summary), or None.
        prev_href, next_href: links to the neighbouring iterations' pages (None: no link).
        scale: entropy (nats) at full colour (None: :func:`entropy_scale`).

    Returns:
        The page as a string.
    """
    scale = entropy_scale(episodes) if scale is None else scale
    head = f"{html.escape(title)} · iteration {iteration}"
    cols = "".join(_column(episodes, outcome, scale) for outcome in ("success", "failure"))
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{head}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{head}</h1>{_nav(prev_href, next_href)}{_summary(episodes, batch)}"
        f"{_filters(episodes)}{_legend(scale)}</header>"
        f"<main class='cols'>{cols}</main><script>{JS}</script></body></html>\n"
    )


def _nav(prev_href: str | None, next_href: str | None) -> str:
    links = [
        f"<a class='nav' href='{html.escape(h)}'>{label}</a>"
        for h, label in ((prev_href, "← previous iteration"), (next_href, "next iteration →"))
        if h
    ]
    return f"<nav>{' '.join(links)}</nav>" if links else ""


def _summary(episodes: list[dict], batch: dict | None) -> str:
    """Two lines: the whole batch (``metrics.jsonl``) and the episodes shown."""
    rows = []
    if batch:
        rows.append(
            f"<tr><th>batch (all episodes)</th><td>{_pct(batch.get('train/success'))}</td>"
            f"<td>{_pct(batch.get('train/invalid_rate'))}</td><td>{_num(batch.get('entropy/step_success'))}</td>"
            f"<td>{_num(batch.get('entropy/step_failure'))}</td><td>{_batch_size(batch)}</td></tr>"
        )
    steps = [st for ep in episodes for st in ep["steps"]]
    h_of = {o: [st["H"] for ep in episodes if ep["success"] == o for st in ep["steps"]] for o in (True, False)}
    n_win = sum(ep["success"] for ep in episodes)
    rows.append(
        f"<tr><th>shown</th><td>{_pct(n_win / len(episodes) if episodes else None)}</td>"
        f"<td>{_pct(sum(not st['valid'] for st in steps) / len(steps) if steps else None)}</td>"
        f"<td>{_num(_mean(h_of[True]))}</td><td>{_num(_mean(h_of[False]))}</td>"
        f"<td>{len(episodes)} ({n_win} success, {len(episodes) - n_win} failure)</td></tr>"
    )
    return (
        "<table class='summary'><tr><th></th><th>success rate</th><th>invalid rate</th>"
        "<th>mean step H, success</th><th>mean step H, failure</th><th>episodes</th></tr>" + "".join(rows) + "</table>"
    )


def _batch_size(batch: dict) -> str:
    n = batch.get("train/n_steps")
    return "–" if n is None else f"{int(n)} steps trained on"


def _filters(episodes: list[dict]) -> str:
    tasks = sorted({ep.get("task_type", "") for ep in episodes})
    opts = "".join(f"<option value='{html.escape(t)}'>{html.escape(t)}</option>" for t in tasks)
    return (
        "<div class='filters'><label>outcome <select id='f-outcome'><option value='all'>all</option>"
        "<option value='success'>success</option><option value='failure'>failure</option></select></label> "
        f"<label>task type <select id='f-task'><option value='all'>all</option>{opts}</select></label> "
        f"showing <span id='shown'>{len(episodes)}</span> of {len(episodes)} episodes</div>"
    )


def _legend(scale: float) -> str:
    swatches = "".join(
        f"<span class='tok' style='{token_style(scale * q, scale)}'>{scale * q:.2g}</span>"
        for q in (0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        f"<p class='legend'>token entropy (nats; hover a token for its value): {swatches} and above. "
        "H = step entropy, g = EMPG scale, f = future-clarity factor (ζ·f is added), A = advantage before → after "
        "EMPG.</p>"
    )


def _column(episodes: list[dict], outcome: str, scale: float) -> str:
    mine = [ep for ep in episodes if (ep["success"] if outcome == "success" else not ep["success"])]
    body = "".join(render_episode(ep, scale) for ep in mine) or "<p class='none'>none shown</p>"
    return f"<div class='col' data-outcome='{outcome}'><h2>{outcome} ({len(mine)})</h2>{body}</div>"


def render_episode(ep: dict, scale: float) -> str:
    """One episode's ``<section class='ep'>`` (filterable by ``data-outcome`` and ``data-task``).

    Returns:
        The HTML fragment.
    """
    outcome = "success" if ep["success"] else "failure"
    task_type = html.escape(str(ep.get("task_type", "")))
    facts = (
        f"seed {ep.get('seed')} · group {ep.get('group_id')} · trajectory {ep.get('traj_id')} · "
        f"{ep.get('length', len(ep['steps']))} steps · {ep.get('n_invalid', 0)} invalid"
        f"{' · truncated' if ep.get('truncated') else ''} · outcome {_num(ep.get('outcome'), 2)}"
    )
    steps = "".join(render_step(st, scale) for st in ep["steps"])
    return (
        f"<section class='ep {outcome}' data-outcome='{outcome}' data-task='{task_type}'>"
        f"<h3><span class='badge {outcome}'>{outcome}</span> {task_type}</h3>"
        f"<p class='task'>{html.escape(str(ep.get('task', '')))}</p><p class='facts'>{facts}</p>{steps}</section>"
    )


def render_step(st: dict, scale: float) -> str:
    """One step: observation, entropy-coloured response tokens, action and validity, H, g, f, advantages.

    Returns:
        The HTML fragment.
    """
    valid = "valid" if st.get("valid") else "invalid"
    action = st.get("action")
    action_html = html.escape(action) if action is not None else "<em>(no parsable action)</em>"
    tokens = st.get("tokens") or [[st.get("response", ""), 0.0]]
    toks = "".join(
        f"<span class='tok' style='{token_style(e, scale)}' title='H={e:.3f}'>{html.escape(p)}</span>"
        for p, e in tokens
    )
    nums = (
        f"H {_num(st.get('H'))} · g {_num(st.get('g'))} · f {_num(st.get('f'))} · "
        f"A {_num(st.get('adv_before'))} → {_num(st.get('adv_after'))}"
    )
    return (
        f"<div class='step {valid}'><div class='stephead'>step {st.get('step', 0) + 1} "
        f"<span class='nums'>{nums}</span></div>"
        f"<pre class='obs'>{html.escape(str(st.get('observation', '')))}</pre>"
        f"<div class='resp'>{toks}</div>"
        f"<div class='act'><span class='badge {valid}'>{valid}</span> action: <code>{action_html}</code></div></div>"
    )


# ----------------------------------------------------------------------------- writing
def write_pages(
    run_dir: str | Path,
    *,
    iteration: int | None = None,
    split: str = "train",
    out: str | Path | None = None,
    every: bool = False,
    scale: float | None = None,
) -> list[Path]:
    """Write the page of ``iteration`` (default: the last recorded), or of every recorded iteration (``every``).

    ``out``: a ``.html`` file (one page), or a folder for :func:`page_name` files (default ``RUN_DIR/inspect``).

    Returns:
        The pages written.

    Raises:
        FileNotFoundError, LookupError: as :func:`load_records` and :func:`select`.
    """

    run_dir = Path(run_dir)
    records = load_records(run_dir)
    last, _ = select(records, iteration, split)
    its = iterations([r for r in records if r.get("split", "train") == split])
    folder_out = out is None or Path(out).suffix.lower() not in (".html", ".htm")
    if every and not folder_out:
        raise LookupError("--all writes one page per iteration: pass a folder as --out, not a .html file")
    metrics = {int(r["iteration"]): r for r in read_metrics(run_dir) if "iteration" in r}
    written = []
    folder = Path(out) if out is not None else run_dir / "inspect"
    for it in its if every else [last]:
        path = folder / page_name(it) if folder_out else Path(out)
        _, episodes = select(records, it, split)
        k = its.index(it)
        page = render_page(
            episodes,
            it,
            title=run_dir.resolve().name,
            batch=metrics.get(it),
            prev_href=page_name(its[k - 1]) if k > 0 else None,
            next_href=page_name(its[k + 1]) if k + 1 < len(its) else None,
            scale=scale,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
        written.append(path)
    return written


CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#f4f5f7}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:2}
h1{font-size:18px;margin:0 0 6px}h2{font-size:15px;margin:8px 0}h3{font-size:14px;margin:0 0 4px}
nav{margin-bottom:6px}nav a{margin-right:14px}
table.summary{border-collapse:collapse;margin:4px 0}
table.summary th,table.summary td{border:1px solid #ddd;padding:2px 8px;text-align:left;font-weight:normal}
table.summary tr:first-child th{font-weight:600}
.filters{margin:6px 0}.legend{margin:4px 0;color:#555}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px;padding:12px 20px}
.cols.one{grid-template-columns:1fr}.col.hidden,.ep.hidden{display:none}
.ep{background:#fff;border:1px solid #ddd;border-left:5px solid #999;border-radius:6px;padding:10px;margin-bottom:14px}
.ep.success{border-left-color:#2e8540}.ep.failure{border-left-color:#c0392b}
.task{margin:0 0 2px;font-style:italic}.facts{margin:0 0 6px;color:#666;font-size:12px}
.step{border-top:1px solid #eee;padding:6px 0}.step.invalid{background:#fff6f5}
.stephead{font-weight:600;font-size:12px}.nums{font-weight:normal;color:#444;margin-left:8px;font-family:monospace}
.obs{white-space:pre-wrap;background:#f7f7f9;margin:4px 0;padding:4px 6px;max-height:9em;overflow:auto;font-size:12px}
.resp{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;white-space:pre-wrap;word-break:break-word;
margin:4px 0}
.tok{border-radius:2px;padding:0 1px}
.act{font-size:12px}.act code{background:#eef;padding:0 3px}
.badge{display:inline-block;font-size:11px;padding:0 5px;border-radius:8px;color:#fff;background:#777}
.badge.success,.badge.valid{background:#2e8540}.badge.failure,.badge.invalid{background:#c0392b}
.none{color:#888}
"""

JS = """
(function () {
  var outcome = document.getElementById('f-outcome'), task = document.getElementById('f-task');
  function apply() {
    var n = 0;
    document.querySelectorAll('.ep').forEach(function (ep) {
      var show = (outcome.value === 'all' || ep.dataset.outcome === outcome.value) &&
                 (task.value === 'all' || ep.dataset.task === task.value);
      ep.classList.toggle('hidden', !show);
      if (show) { n += 1; }
    });
    document.querySelectorAll('.col').forEach(function (col) {
      col.classList.toggle('hidden', outcome.value !== 'all' && col.dataset.outcome !== outcome.value);
    });
    document.querySelector('.cols').classList.toggle('one', outcome.value !== 'all');
    document.getElementById('shown').textContent = String(n);
  }
  location.hash.replace(/^#/, '').split('&').forEach(function (kv) {  // e.g. page.html#outcome=failure
    var pair = kv.split('='), el = {outcome: outcome, task: task}[pair[0]], v;
    if (!el || pair.length !== 2) { return; }
    try { v = decodeURIComponent(pair[1]); } catch (e) { return; }
    if (Array.prototype.some.call(el.options, function (o) { return o.value === v; })) { el.value = v; }
  });
  outcome.addEventListener('change', apply);
  task.addEventListener('change', apply);
  apply();
  document.body.dataset.ready = '1';
})();
"""
