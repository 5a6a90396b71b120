"""The ``empg`` command line: ``train``, ``sft``, ``eval``, ``plot``, ``inspect``, ``envs``, ``sweep``, ``report``,
``prop1``.

Examples::

    empg train --config configs/household-tiny.yaml algo.zeta=0.05 seed=2
    empg train --resume runs/household-tiny
    empg train --config configs/alfworld-qwen1.5b.yaml --dry-run
    empg sft --config configs/household-tiny.yaml
    empg eval runs/household-tiny --split eval_out --episodes 64
    empg plot runs/grpo runs/grpo-empg --out docs/figures
    empg inspect runs/household-tiny --iteration 3
    empg envs
    empg sweep experiments/example.yaml --out runs/sweeps/example --parallel 2
    empg report runs/sweeps/example
    empg prop1 runs/household-tiny --episodes 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from empg.train.config import ConfigError, apply_overrides, format_help, load_config, load_run_config

EXIT_CONFIG = 2


def _train_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=format_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="YAML preset (configs/*.yaml).")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Dotted overrides, e.g. algo.zeta=0.05 seed=2.")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="empg", description="EMPG for LLM agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _train_parser(sub, "train", "SFT warm start (if sft.enabled) then the GRPO/DAPO ± EMPG RL loop.")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="Continue the run in RUN_DIR from its latest checkpoint (its config.yaml; overrides apply).",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate the config (as a real run does), build what needs no weights (one env reset and its prompt, "
        "the model's architecture from config.json or a built-in table; nothing is downloaded), print the resolved "
        "plan (model and parameter count, back ends, batch shapes, tokens per iteration, estimated GPU memory) and "
        "exit 0 without training or writing anything.",
    )
    p = _train_parser(sub, "sft", "Behaviour cloning on expert demonstrations only (saves run_dir/base_model).")
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="Also write the SFT model to DIR as a warm start (model files + manifest.json with their sha256 and "
        "this command), usable as model.init=DIR; src/empg/warmstarts/NAME ships it as model.init=NAME.",
    )

    p = sub.add_parser("eval", help="Success per task type with 95%% confidence intervals.")
    p.add_argument("run_dir", type=Path, help="A run folder of `empg train` or `empg sft` (uses its config.yaml).")
    p.add_argument("--split", default="eval_in", choices=["train", "eval_in", "eval_out"])
    p.add_argument("--episodes", type=int, default=None, help="Episodes (default: the run's eval.episodes).")
    p.add_argument("--checkpoint", type=Path, default=None, help="A checkpoint or model dir (default: the latest).")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true", help="Greedy decoding instead of eval.temperature.")
    how.add_argument(
        "--temperature",
        type=_temperature,
        default=None,
        metavar="T",
        help="Sample at T instead of the run's eval.temperature (e.g. the rollouts' rollout.temperature, to see the "
        "policy RL trained rather than its sharpened copy).",
    )
    p.add_argument(
        "--sampling-seed",
        type=int,
        default=None,
        help="Sampling seed (default: the run's, seed x 1,000,003, as in its training evaluations, so the result "
        "pairs with them; pass another run's to pair a model with that run's evaluations).",
    )

    p = sub.add_parser(
        "plot",
        help="Learning curves (95 %% Wilson bands; paired gain over iteration 0 and paired differences between runs "
        "of the same seed, with bootstrap CIs), step-entropy histograms and EMPG g/f plots as PNG.",
    )
    p.add_argument("run_dirs", type=Path, nargs="+", help="Run folders of `empg train`; several are overlaid.")
    p.add_argument("--out", type=Path, default=None, help="Output folder (default: FIRST_RUN/plots).")

    _inspect_parser(sub)

    p = sub.add_parser("envs", help="List the registered environments, or play one in the terminal.")
    envs_sub = p.add_subparsers(dest="envs_command")
    envs_sub.add_parser("list", help="List the registered environments (the default).")
    q = envs_sub.add_parser("play", help="Play an env by typing actions ('expert', 'help', 'quit' also work).")
    q.add_argument("env_id", help="A registered id, e.g. household-v0 (see `empg envs list`).")
    q.add_argument("--seed", type=int, default=None, help="Episode seed (its split follows from it).")
    q.add_argument("--split", default=None, choices=["train", "eval_in", "eval_out"], help="Split when no --seed.")
    q.add_argument("--max-turns", type=int, default=None, help="Turn limit (default: the env's).")
    _experiment_parsers(sub)
    return parser


INSPECT_EPILOG = """\
Pages: with a folder as --out (the default RUN_DIR/inspect/) each page is named inspect_iter_NNNN.html, NNNN the
iteration as in metrics.jsonl (4 digits); its previous/next links point to the neighbouring recorded iterations under
those names in the same folder. The summary header gives the iteration's batch success rate, invalid rate and mean
step entropy by outcome (metrics.jsonl) and the same for the episodes shown (a balanced sample, not the batch rate).
Token colour: alpha = min(1, H / scale), the scale shown in the page's legend.

Exit code 2 when RUN_DIR is not a run folder, has no trajectories.jsonl (train with log.trajectories>0, the default
8), or has no records for --iteration (the message lists the iterations that have).

Examples:
  empg inspect runs/household-tiny                         # the last iteration -> runs/household-tiny/inspect/
  empg inspect runs/household-tiny --iteration 3 --out page.html
  empg inspect runs/household-tiny --all --out pages/      # every iteration, linked
"""


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    """``inspect`` (code in :mod:`empg.eval.inspect`, not imported here: it pulls in scipy)."""
    text = (
        "One static HTML page (no server, no network; opens from disk) with the episodes the trainer logged to "
        "RUN_DIR/trajectories.jsonl (log.trajectories per iteration), successes and failures side by side: per step "
        "the observation, the response with each token coloured by its entropy, the action and its validity, the "
        "step entropy H, EMPG's g and f, and the advantage before and after EMPG; filters by outcome and task type."
    )
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("inspect", help=text, description=text, epilog=INSPECT_EPILOG, formatter_class=raw)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="A run folder of `empg train` (trajectories.jsonl).")
    p.add_argument(
        "--iteration",
        type=int,
        default=None,
        metavar="N",
        help="The iteration to show, numbered as in metrics.jsonl (1 = after the first rollout; default: the last "
        "one recorded). An iteration without records lists those that have.",
    )
    p.add_argument(
        "--split", default="train", choices=["train"], help="Which episodes: training rollouts (the only ones logged)."
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PAGE.html|DIR",
        help="A .html file for the page, or a folder that gets inspect_iter_NNNN.html (default: RUN_DIR/inspect/). "
        "The previous/next links use those names in the page's folder.",
    )
    p.add_argument(
        "--all",
        dest="every",
        action="store_true",
        help="Write the page of every recorded iteration into the --out folder (so the previous/next links work).",
    )
    p.add_argument(
        "--entropy-scale",
        type=float,
        default=None,
        metavar="NATS",
        help="Token entropy drawn at full colour (default: the 95th percentile of the page's tokens, rounded up to "
        "0.5 nats).",
    )


def _experiment_parsers(sub: argparse._SubParsersAction) -> None:
    """``sweep``, ``report`` and ``prop1`` (code in :mod:`empg.study`)."""
    raw = argparse.RawDescriptionHelpFormatter
    text = "Run a grid of trainings (methods x axes x seeds) as separate processes; resumable."
    p = sub.add_parser("sweep", help=text, description=text, epilog=_doc("sweep"), formatter_class=raw)
    p.add_argument("grid", type=Path, metavar="GRID.yaml", help="The grid file (schema below, experiments/README.md).")
    p.add_argument("--out", type=Path, default=None, help="Sweep folder (default: runs/sweeps/<grid name>).")
    p.add_argument(
        "--parallel", type=_positive, default=1, metavar="N", help="Runs at a time; each gets cpu_count//N threads."
    )
    p.add_argument("--dry-run", action="store_true", help="Validate the grid and list the runs and their state only.")

    text = "Markdown report of a sweep: final success per method, CIs over seeds, differences to baselines, plots."
    p = sub.add_parser("report", help=text, description=text, epilog=_doc("report"), formatter_class=raw)
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="A folder written by `empg sweep` (sweep.json).")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.md",
        help="Markdown file (default: SWEEP_DIR/report.md); PNGs and results.jsonl go next to it.",
    )

    text = "Proposition 1 diagnostic: score-function norm per token/step vs Renyi-2 entropy of the run's policy."
    p = sub.add_parser("prop1", help=text, description=text, epilog=_doc("prop1"), formatter_class=raw)
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="A run folder (config.yaml + checkpoint or base_model)."
    )
    p.add_argument(
        "--episodes", type=_positive, default=8, metavar="N", help="Episodes rolled out by the policy (default 8)."
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="Output folder (default: RUN_DIR/prop1).")
    p.add_argument("--split", default="train", choices=["train", "eval_in", "eval_out"], help="Split of the episodes.")
    p.add_argument("--checkpoint", type=Path, default=None, help="A checkpoint or model dir (default: the latest).")
    p.add_argument("--seed", type=int, default=None, help="Sampling seed (default: the run's seed).")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _temperature(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 10.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 10], got {value}; use --greedy for greedy decoding")
    return value


def _doc(module: str) -> str:
    """The module docstring of ``empg.study.<module>`` (the --help epilog)."""
    import importlib

    return importlib.import_module(f"empg.study.{module}").__doc__ or ""


def _cmd_train(args: argparse.Namespace, console: Console) -> int:
    from empg.train.rl import train_auto as train  # one process, or data-parallel under torchrun/accelerate

    if args.resume is not None:
        if args.config is not None:
            raise ConfigError(
                "--config", "cannot be combined with --resume", "resume uses RUN_DIR/config.yaml; pass only overrides"
            )
        saved = load_run_config(args.resume)
        cfg = apply_overrides(saved, [f"run_dir={args.resume}", *args.overrides])
    else:
        cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from empg.train.dryrun import dry_run

        return dry_run(cfg, console)
    train(cfg, resume=args.resume is not None, console=console)
    return 0


def _cmd_sft(args: argparse.Namespace, console: Console) -> int:
    from empg.train.sft import run_sft_command

    cfg = load_config(args.config, [*args.overrides, "sft.enabled=true", "model.init=null"])  # SFT from model.spec
    command = " ".join(["empg sft", *(["--config", str(args.config)] if args.config else []), *args.overrides])
    if args.export is not None:
        command += f" --export {args.export}"
    run_sft_command(cfg, console=console, export=args.export, command=command)
    return 0


def _cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from empg.eval.evaluate import render_report
    from empg.train.evalrun import evaluate_run

    report, path = evaluate_run(
        args.run_dir,
        split=args.split,
        episodes=args.episodes,
        checkpoint=args.checkpoint,
        greedy=args.greedy,
        temperature=args.temperature,
        sampling_seed=args.sampling_seed,
    )
    console.print(render_report(report))
    console.print(f"saved {path}")
    return 0


def _cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from empg.eval.plots import plot_runs

    for path in plot_runs(args.run_dirs, args.out):
        console.print(f"wrote {path}")
    return 0


def _cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from empg.eval.inspect import write_pages

    try:
        paths = write_pages(
            args.run_dir,
            iteration=args.iteration,
            split=args.split,
            out=args.out,
            every=args.every,
            scale=args.entropy_scale,
        )
    except LookupError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_CONFIG
    for path in paths:
        console.print(f"wrote {path}")
    return 0


def _cmd_envs(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    if getattr(args, "envs_command", None) == "play":
        from empg.envs.play import play

        result = play(
            args.env_id,
            seed=args.seed,
            split=args.split,
            max_turns=args.max_turns,
            input_fn=lambda prompt: input(prompt),  # looked up at call time (tests and wrappers may replace it)
        )
        return 0 if result.won or result.quit else 1

    from empg.envs import list_envs, spec

    table = Table(title="registered environments")
    for col in ("id", "max turns", "description"):
        table.add_column(col)
    for env_id in list_envs():
        s = spec(env_id)
        table.add_row(env_id, str(s.max_turns), s.description)
    console.print(table)
    return 0


def _cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from empg.study.sweep import run_sweep

    return run_sweep(args.grid, out=args.out, parallel=args.parallel, dry_run=args.dry_run, console=console)


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from empg.study.report import make_report

    for path in make_report(args.sweep_dir, args.out):
        console.print(f"wrote {path}")
    return 0


def _cmd_prop1(args: argparse.Namespace, console: Console) -> int:
    from empg.study.prop1 import render_summary, run_prop1

    result, paths = run_prop1(
        args.run_dir, episodes=args.episodes, out=args.out, split=args.split, checkpoint=args.checkpoint, seed=args.seed
    )
    console.print(render_summary(result))
    for path in paths:
        console.print(f"wrote {path}")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "sft": _cmd_sft,
    "eval": _cmd_eval,
    "plot": _cmd_plot,
    "inspect": _cmd_inspect,
    "envs": _cmd_envs,
    "sweep": _cmd_sweep,
    "report": _cmd_report,
    "prop1": _cmd_prop1,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``empg`` script. Returns the exit code (2 for configuration errors)."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return EXIT_CONFIG
    except (ValueError, OSError) as e:  # a checkpoint that cannot be resumed, or a full / read-only disk
        from empg.train.checkpoint import CheckpointError, write_error

        err = write_error(e) if isinstance(e, OSError) else e
        if not isinstance(err, CheckpointError):
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
