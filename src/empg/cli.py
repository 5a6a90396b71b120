"""The ``empg`` command line: ``train``, ``sft``, ``eval``, ``plot``, ``envs``.

Examples::

    empg train --config configs/household-tiny.yaml algo.zeta=0.05 seed=2
    empg train --resume runs/household-tiny
    empg sft --config configs/household-tiny.yaml
    empg eval runs/household-tiny --split eval_out --episodes 64
    empg plot runs/grpo runs/grpo-empg --out docs/figures
    empg envs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

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
    _train_parser(sub, "sft", "Behaviour cloning on expert demonstrations only (saves run_dir/base_model).")

    p = sub.add_parser("eval", help="Success per task type with 95%% confidence intervals.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default="eval_in", choices=["train", "eval_in", "eval_out"])
    p.add_argument("--episodes", type=int, default=None, help="Episodes (default: the run's eval.episodes).")
    p.add_argument("--checkpoint", type=Path, default=None, help="A checkpoint or model dir (default: the latest).")
    p.add_argument("--greedy", action="store_true", help="Greedy decoding instead of eval.temperature.")

    p = sub.add_parser("plot", help="Learning curves, step-entropy histograms and EMPG g/f plots as PNG.")
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="Output folder (default: FIRST_RUN/plots).")

    p = sub.add_parser("envs", help="List the registered environments, or play one in the terminal.")
    envs_sub = p.add_subparsers(dest="envs_command")
    envs_sub.add_parser("list", help="List the registered environments (the default).")
    q = envs_sub.add_parser("play", help="Play an env by typing actions ('expert', 'help', 'quit' also work).")
    q.add_argument("env_id", help="A registered id, e.g. household-v0 (see `empg envs list`).")
    q.add_argument("--seed", type=int, default=None, help="Episode seed (its split follows from it).")
    q.add_argument("--split", default=None, choices=["train", "eval_in", "eval_out"], help="Split when no --seed.")
    q.add_argument("--max-turns", type=int, default=None, help="Turn limit (default: the env's).")
    return parser


def _cmd_train(args: argparse.Namespace, console: Console) -> int:
    from empg.train.distributed import train_auto as train  # rl.train, or data-parallel under torchrun/accelerate

    if args.resume is not None:
        if args.config is not None:
            raise ConfigError(
                "--config", "cannot be combined with --resume", "resume uses RUN_DIR/config.yaml; pass only overrides"
            )
        saved = load_run_config(args.resume)
        cfg = apply_overrides(saved, [f"run_dir={args.resume}", *args.overrides])
        train(cfg, resume=True, console=console)
    else:
        train(load_config(args.config, args.overrides), console=console)
    return 0


def _cmd_sft(args: argparse.Namespace, console: Console) -> int:
    from empg.train.sft import run_sft_command

    run_sft_command(load_config(args.config, ["sft.enabled=true", *args.overrides]), console=console)
    return 0


def _cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from empg.eval.evaluate import evaluate_run, render_report

    report, path = evaluate_run(
        args.run_dir, split=args.split, episodes=args.episodes, checkpoint=args.checkpoint, greedy=args.greedy
    )
    console.print(render_report(report))
    console.print(f"saved {path}")
    return 0


def _cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from empg.eval.plots import plot_runs

    for path in plot_runs(args.run_dirs, args.out):
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


COMMANDS = {"train": _cmd_train, "sft": _cmd_sft, "eval": _cmd_eval, "plot": _cmd_plot, "envs": _cmd_envs}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``empg`` script. Returns the exit code (2 for configuration errors)."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
