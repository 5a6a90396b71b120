"""The `empg` command line: help texts, env listing, argument errors."""

from __future__ import annotations

import pytest

from empg.cli import build_parser, main
from empg.train.config import iter_fields


def test_train_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, _type, _default, help_text in iter_fields():
        assert name in out
        assert help_text.split()[0] in out
    assert "--resume" in out and "--config" in out


def test_subcommands_exist():
    parser = build_parser()
    for cmd in (["train"], ["sft"], ["eval", "x"], ["plot", "x"], ["envs"]):
        assert parser.parse_args(cmd).command == cmd[0]


def test_envs_lists_registered(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "household-v0" in out and "shop-v0" in out


def test_resume_with_config_is_rejected(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert main(["train", "--resume", str(tmp_path), "--config", "configs/household-tiny.yaml"]) == 2
    assert "--config" in capsys.readouterr().err


def test_eval_of_missing_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_bad_subcommand_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["fly"])
    assert e.value.code == 2


@pytest.mark.parametrize("cmd", [[], ["sft"], ["eval"], ["plot"], ["envs"]])
def test_every_help_renders(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: empg" in capsys.readouterr().out


def test_envs_play_follows_the_expert_to_success(monkeypatch, capsys):
    """`empg envs play household-v0 --seed 3` driven by typed lines: the expert wins within the turn limit."""
    monkeypatch.setattr("builtins.input", lambda prompt="": "expert")
    assert main(["envs", "play", "household-v0", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "Your task is to:" in out and "[expert]" in out


def test_envs_play_quit_and_list(monkeypatch, capsys):
    lines = iter(["look", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["envs", "play", "shop-v0", "--seed", "8"]) == 0
    assert main(["envs", "list"]) == 0
    assert "household-v0" in capsys.readouterr().out
