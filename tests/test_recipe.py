"""The tiny recipe's scheduling: L-CoIns beside the MT-Color chain, threads per process, times.json.

The stages are replaced by recorders (the real training scripts are tested in test_training*.py);
what is checked is which stage runs when, with how many threads, and what the recipe records.
"""

import json
import threading

import pytest
from mtcolor.training.recipes import tiny

CHAIN = ["base_vae", "base_decoder", "base_unet", "stage1", "stage2"]


@pytest.fixture
def recorded(monkeypatch, commands):
    """Replace data building and every stage by recorders; ``events[name]`` is set when ``name`` starts."""
    calls, events = [], {name: threading.Event() for name in [*CHAIN, "lcoins"]}
    hooks = {}

    def fake_stage(name, cmd, log_dir, threads):
        calls.append((name, threads))
        commands[name] = cmd
        events[name].set()
        if name in hooks:
            hooks[name]()
        return 1.0

    monkeypatch.setattr(tiny, "run_stage", fake_stage)
    monkeypatch.setattr(tiny, "build_data", lambda data, seed, scale: calls.append(("data", None)))
    return calls, events, hooks


@pytest.fixture
def commands():
    """The command each recorded stage was given, by stage name (filled by ``recorded``)."""
    return {}


def test_lcoins_trains_beside_the_mtcolor_chain_with_two_jobs(tmp_path, recorded):
    calls, events, hooks = recorded
    # the chain's first stage can only finish once L-CoIns has started: sequential scheduling would
    # leave it waiting (and the assertion below fails after the timeout instead of hanging)
    started_beside = []
    hooks["base_vae"] = lambda: started_beside.append(events["lcoins"].wait(timeout=60))
    assert tiny.main(["--out", str(tmp_path), "--jobs", "2"]) == 0
    assert started_beside == [True]
    assert sorted(name for name, _ in calls) == sorted(["data", *CHAIN, "lcoins"])
    assert all(threads == 1 for name, threads in calls if name != "data")  # 2 usable cores / 2 jobs
    times = json.loads((tmp_path / "times.json").read_text())
    assert set(times) == {"data", *CHAIN, "lcoins"}  # both threads' records survive


def test_one_job_runs_the_stages_one_after_the_other(tmp_path, recorded):
    calls, _, _ = recorded
    assert tiny.main(["--out", str(tmp_path), "--jobs", "1", "--threads", "2"]) == 0
    assert calls == [("data", None), *((name, 2) for name in CHAIN), ("lcoins", 2)]


def test_the_shipped_lcoins_trains_its_deviations_and_the_ablations_keep_the_papers_setting(
    tmp_path, recorded, commands
):
    from mtcolor.training.recipes.tiny_stages import STEPS, lcoins_command

    assert tiny.main(["--out", str(tmp_path), "--jobs", "1", "--stages", "lcoins"]) == 0
    out = tmp_path.resolve()
    paper = lcoins_command(out / "data", out / "lcoins", STEPS["lcoins"], 0)
    assert commands["lcoins"] == [*paper, "--no_luminance_augmentation", "--ab_loss", "classification"]
    # the Table 1 ablations and their reference (benchmarks/ablations.py) keep the paper's setting
    assert "--no_luminance_augmentation" not in paper and "--ab_loss" not in paper


def test_a_failed_lcoins_stage_fails_the_recipe_after_the_chain(tmp_path, recorded):
    calls, _, hooks = recorded

    def fail():
        raise SystemExit("[recipe] lcoins failed (exit 1)")

    hooks["lcoins"] = fail
    with pytest.raises(SystemExit, match="lcoins failed"):
        tiny.main(["--out", str(tmp_path), "--jobs", "2"])
    assert {name for name, _ in calls} == {"data", *CHAIN, "lcoins"}  # the chain still ran to its end
    assert "lcoins" not in json.loads((tmp_path / "times.json").read_text())


def test_finished_stages_are_skipped_on_a_rerun(tmp_path, recorded):
    calls, _, _ = recorded
    tiny.main(["--out", str(tmp_path), "--jobs", "2"])
    calls.clear()
    tiny.main(["--out", str(tmp_path), "--jobs", "2"])
    assert calls == []


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--threads", "0"]])
def test_bad_jobs_or_threads_are_refused(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tiny.main(["--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert "pass positive numbers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "v_prediction"),  # the default: the embedded model's target
        (["--prediction_type", "epsilon"], "epsilon"),
        (["--prediction_type", "v_prediction"], "v_prediction"),
    ],
)
def test_the_prediction_target_goes_to_the_base_unet_alone(tmp_path, recorded, commands, argv, expected):
    assert tiny.main(["--out", str(tmp_path), "--jobs", "1", *argv]) == 0
    unet = commands["base_unet"]
    assert unet[unet.index("--prediction_type") + 1] == expected
    # stages 1 and 2 read it from the base model's scheduler; the VAE phases have no prediction
    assert all(
        "--prediction_type" not in commands[name] for name in ["base_vae", "base_decoder", "stage1", "stage2"]
    )


def test_a_rerun_with_another_prediction_target_is_refused(tmp_path, recorded, capsys):
    calls, _, _ = recorded
    scheduler = tmp_path / "base" / "model" / "scheduler"
    scheduler.mkdir(parents=True)
    (scheduler / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    with pytest.raises(SystemExit) as exit_info:
        tiny.main(["--out", str(tmp_path), "--prediction_type", "v_prediction"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--prediction_type=v_prediction" in err
        and "predicts epsilon" in err
        and "--prediction_type epsilon" in err
    )
    assert calls == []  # nothing ran, nothing recorded
    assert not (tmp_path / "times.json").exists()


@pytest.mark.parametrize("stages", [["lcoins"], ["data", "lcoins"]])
def test_stages_without_the_diffusion_chain_ignore_the_prediction_target(tmp_path, recorded, stages):
    calls, _, _ = recorded
    scheduler = tmp_path / "base" / "model" / "scheduler"
    scheduler.mkdir(parents=True)
    (scheduler / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    # the folder's base model predicts epsilon, the default is v: L-CoIns does not read either
    assert tiny.main(["--out", str(tmp_path), "--jobs", "1", "--stages", *stages]) == 0
    assert [name for name, _ in calls] == stages
