"""``empg inspect``: the episode log the trainer writes (``trajectories.jsonl``) and the HTML page built from it.

Unit tests render hand-built records; the end-to-end tests train 2 iterations of a micro model on CPU, build the page
with the CLI and, when Chromium is installed, load it headless and check the rendered DOM and the console.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from empg.cli import main
from empg.eval import inspect as page
from empg.eval.runlog import TRAJECTORIES, read_metrics
from empg.train import trajlog


# ----------------------------------------------------------------------------- hand-built records
def _step(i, action="go to desk 1", valid=True, tokens=(("<think>", 0.1), (" go", 1.0)), **kw):
    return {
        "step": i,
        "observation": "You are in a room.",
        "response": "".join(p for p, _ in tokens),
        "action": action,
        "valid": valid,
        "H": 0.5,
        "g": 1.2,
        "f": 0.3,
        "adv_before": 0.7,
        "adv_after": 0.8,
        "tokens": [list(t) for t in tokens],
        **kw,
    }


def _episode(traj_id, success, task_type="pick", steps=None, iteration=1):
    steps = steps if steps is not None else [_step(0), _step(1, valid=False, action=None)]
    return {
        "iteration": iteration,
        "split": "train",
        "group_id": traj_id // 2,
        "traj_id": traj_id,
        "seed": 7,
        "task_type": task_type,
        "task": "put a pen in the desk.",
        "success": success,
        "outcome": float(success),
        "length": len(steps),
        "n_invalid": sum(not s["valid"] for s in steps),
        "truncated": not success,
        "steps": steps,
    }


def test_page_counts_episodes_and_has_the_filter_classes():
    eps = [_episode(0, True, "pick"), _episode(1, False, "pick"), _episode(2, False, "clean")]
    html = page.render_page(eps, 3, title="r", scale=2.0)
    assert html.count("<section class='ep ") == 3
    assert html.count("data-outcome='success'") == 2  # one episode + its column
    assert html.count("data-outcome='failure'") == 3
    assert "data-task='pick'" in html and "data-task='clean'" in html
    assert "<option value='clean'>clean</option>" in html and "<option value='pick'>pick</option>" in html
    assert "id='f-outcome'" in html and "document.body.dataset.ready = '1'" in html
    assert "<div class='step invalid'>" in html and "(no parsable action)" in html
    assert "showing <span id='shown'>3</span> of 3 episodes" in html
    assert "http://" not in html and "https://" not in html and "src=" not in html  # nothing fetched from anywhere


def test_token_is_coloured_by_its_entropy():
    eps = [_episode(0, True, steps=[_step(0, tokens=(("a", 0.0), ("b", 1.0), ("c", 5.0)))])]
    html = page.render_page(eps, 1, scale=2.0)
    r, g, b = page.HUE
    assert f"<span class='tok' style='background:rgba({r},{g},{b},0.50)' title='H=1.000'>b</span>" in html
    assert f"style='background:rgba({r},{g},{b},0.00)' title='H=0.000'>a</span>" in html
    assert f"style='background:rgba({r},{g},{b},1.00)' title='H=5.000'>c</span>" in html  # capped at the scale
    assert page.entropy_scale(eps) == 5.0  # 95th percentile of [0, 1, 5], rounded up to 0.5
    assert page.entropy_scale([_episode(0, True, steps=[_step(0, tokens=(("a", 0.01),))])]) == 0.5


def test_model_text_is_escaped():
    evil = "<script>alert(1)</script>"
    steps = [_step(0, action=evil, tokens=((evil, 0.3),), observation=evil)]
    ep = _episode(0, False, task_type="<b>x</b>", steps=steps)
    ep["task"] = evil
    html = page.render_page([ep], 1, title=evil, scale=1.0)
    assert evil not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the page's own


def test_summary_header_and_navigation():
    eps = [_episode(0, True), _episode(1, False)]
    batch = {"train/success": 0.25, "train/invalid_rate": 0.1, "entropy/step_success": 0.4, "train/n_steps": 12}
    html = page.render_page(eps, 2, batch=batch, prev_href="inspect_iter_0001.html", next_href=None, scale=1.0)
    assert "<td>25.0 %</td><td>10.0 %</td><td>0.400</td><td>–</td><td>12 steps trained on</td>" in html
    assert "<td>50.0 %</td><td>50.0 %</td><td>0.500</td><td>0.500</td><td>2 (1 success, 1 failure)</td>" in html
    assert "href='inspect_iter_0001.html'>← previous iteration</a>" in html and "next iteration" not in html
    assert page.page_name(3) == "inspect_iter_0003.html"


def test_select_names_the_recorded_iterations():
    recs = [_episode(0, True, iteration=i) for i in (1, 2, 3, 5)]
    assert page.select(recs, None)[0] == 5 and len(page.select(recs, 2)[1]) == 1
    with pytest.raises(LookupError, match=r"iteration 4; iterations with records: 1-3, 5"):
        page.select(recs, 4)
    with pytest.raises(LookupError, match="split 'eval_in'; recorded splits: train"):
        page.select(recs, None, "eval_in")


def test_bad_run_folders_exit_2_with_what_to_do(tmp_path, capsys):
    def err() -> str:
        return " ".join(capsys.readouterr().err.split())  # rich wraps long lines

    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a run folder (no metrics.jsonl or config.yaml); pass the run_dir of `empg train`" in err()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no trajectories.jsonl" in (text := err()) and "Train with log.trajectories>0" in text
    (tmp_path / "trajectories.jsonl").write_text(json.dumps(_episode(0, True, iteration=2)) + "\n")
    assert main(["inspect", str(tmp_path), "--iteration", "7"]) == 2
    assert "iterations with records: 2" in err()
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "p.html")]) == 0
    assert (tmp_path / "p.html").read_text().count("<section class='ep ") == 1


# ----------------------------------------------------------------------------- the trainer's episode sample
def _summary(traj_id, success, failed=False):
    return SimpleNamespace(traj_id=traj_id, success=success, failed=failed)


def test_sample_is_balanced_deterministic_and_fills_in():
    trajs = [_summary(i, i % 3 == 0) for i in range(12)]  # 4 successes, 8 failures
    a = trajlog.sample_episodes(trajs, 4, seed=0, iteration=1)
    assert [t.success for t in a].count(True) == 2 and len(a) == 4
    assert [t.traj_id for t in a] == sorted(t.traj_id for t in a)
    assert a == trajlog.sample_episodes(trajs, 4, seed=0, iteration=1)
    assert {t.traj_id for t in trajlog.sample_episodes(trajs, 8, seed=0, iteration=1) if t.success} == {0, 3, 6, 9}
    few = [_summary(0, True), *[_summary(i, False) for i in range(1, 9)]]
    assert [t.success for t in trajlog.sample_episodes(few, 6, 0, 1)].count(False) == 5  # failures fill in
    assert len(trajlog.sample_episodes([_summary(0, True), _summary(1, False, failed=True)], 8, 0, 1)) == 1
    assert trajlog.sample_episodes(trajs, 0, 0, 1) == []


def test_zero_trajectories_writes_nothing(tmp_path):
    run = SimpleNamespace(cfg=SimpleNamespace(log=SimpleNamespace(trajectories=0), seed=0), run_dir=tmp_path)
    assert trajlog.log_trajectories(run, None, [], [_summary(0, True)], {}, 1) == 0
    assert not (tmp_path / TRAJECTORIES).exists()


# ----------------------------------------------------------------------------- end to end: train, then inspect
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, fast):
    """(run_dir, policy): 2 RL iterations of the session's micro Qwen2 on household-v0, 4 episodes each."""
    from empg.policy import Policy

    run_dir = tmp_path_factory.mktemp("inspect") / "run"
    assert main(["train", *fast(run_dir, tiny_model_dir, "eval.every=0", "algo.empg=true")]) == 0
    return run_dir, Policy.load(tiny_model_dir)


def test_trainer_logs_every_step_of_the_sampled_episodes(trained):
    run_dir, policy = trained
    records = page.load_records(run_dir)
    assert [r["iteration"] for r in records] == [1] * 4 + [2] * 4  # log.trajectories=8 > the 4 episodes
    for r in records:
        assert r["split"] == "train" and len(r["steps"]) == r["length"] >= 1
        for st in r["steps"]:
            assert st["observation"] and isinstance(st["response"], str)
            assert {"H", "g", "f", "adv_before", "adv_after", "valid", "action"} <= set(st)
            spelled = "".join(p for p, _ in st["tokens"])
            for special in policy.tokenizer.all_special_tokens:  # kept in the pieces, skipped in the response text
                spelled = spelled.replace(special, "")
            assert spelled == st["response"]
            assert sum(e for _, e in st["tokens"]) / len(st["tokens"]) == pytest.approx(st["H"], abs=1e-3)
        assert r["steps"][-1]["f"] == 0.0  # no next step, no future-clarity bonus
    metrics = read_metrics(run_dir)
    steps = [st for r in records if r["iteration"] == 1 for st in r["steps"]]
    assert len(steps) == metrics[0]["train/n_steps"]  # every episode of iteration 1 was logged
    assert sum(st["adv_after"] for st in steps) / len(steps) == pytest.approx(0.0, abs=1e-4)  # final_norm="mean"
    assert max(st["g"] for st in steps) == pytest.approx(metrics[0]["empg/g_max"], abs=1e-4)


def test_token_pieces_spell_the_text(trained):
    tok = trained[1].tokenizer
    ids = tok("go to desk 1 é 中文 <action>", add_special_tokens=False)["input_ids"]
    assert "".join(trajlog.token_pieces(tok, ids)) == tok.decode(ids)
    assert trajlog.token_pieces(tok, []) == []


def test_resume_truncates_the_episode_log(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    with (run_dir / "trajectories.jsonl").open("a") as fh:  # iteration 3 logged, then a crash before its checkpoint
        fh.write(json.dumps(_episode(0, True, iteration=3)) + "\n")
    assert main(["train", "--resume", str(run_dir), "iterations=3"]) == 0
    its = [r["iteration"] for r in page.load_records(run_dir)]
    assert its == [1] * 4 + [2] * 4 + [3] * 4


def test_cli_writes_the_page(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "pages"
    assert main(["inspect", str(run_dir), "--out", str(out), "--all"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["inspect_iter_0001.html", "inspect_iter_0002.html"]
    second = (out / "inspect_iter_0002.html").read_text()
    assert second.count("<section class='ep ") == 4
    assert "href='inspect_iter_0001.html'" in second and "next iteration" not in second
    assert main(["inspect", str(run_dir)]) == 0  # default: the last iteration into RUN_DIR/inspect/
    assert (run_dir / "inspect" / "inspect_iter_0002.html").is_file()


# ----------------------------------------------------------------------------- in a real browser
def _chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_page_renders_and_runs_in_headless_chromium(trained, tmp_path):
    path = tmp_path / "page.html"
    assert main(["inspect", str(trained[0]), "--out", str(path)]) == 0
    done = _chromium("--dump-dom", path.as_uri())
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert dom.count('<section class="ep ') == 4
    assert re.search(r'<span class="tok" style="background:rgba\([\d,]+,(0\.\d\d|1\.00)\)" title="H=[\d.]+">', dom)
    assert 'data-ready="1"' in dom  # the inline script ran to its end
    assert "Uncaught" not in done.stderr


def test_filter_from_the_address_hides_the_other_outcome(tmp_path):
    path = tmp_path / "page.html"
    eps = [_episode(0, True, "pick"), _episode(1, False, "pick"), _episode(2, False, "clean")]
    path.write_text(page.render_page(eps, 1, scale=1.0))
    done = _chromium("--dump-dom", path.as_uri() + "#outcome=failure&task=clean")
    assert "Uncaught" not in done.stderr
    dom = done.stdout
    assert 'data-ready="1"' in dom
    assert len(re.findall(r'<section class="ep [a-z]+ hidden"', dom)) == 2
    assert '<span id="shown">1</span>' in dom
