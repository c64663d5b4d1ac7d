"""The experiment commands end to end on tiny profiles: results, resumability, cues CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gainx.cli import main as _cli
from gainx.data import load_dataset, load_split_for_model
from gainx.experiments import run_bias, run_localization
from gainx.experiments.erasure import FIELDS as ERASURE_FIELDS
from gainx.experiments.erasure import moved_off_objects, with_margin
from gainx.experiments.localization import _cached
from gainx.experiments.specs import RECIPES, Profile
from gainx.models import load_model
from gainx.ops import context_fill

TINY = Profile(image_size=16, train_size=40, test_size=12, epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def localization(tmp_path_factory):
    out = tmp_path_factory.mktemp("loc")
    return out, run_localization(out, seeds=[0], budgets=[0.25], profile=TINY)


def test_localization_results_and_resume(localization):
    out, report = localization
    assert [r["key"] for r in report["table"]] == ["baseline", "gain", "gainext-masks-0.25"]
    for run in report["runs"]:
        assert 0.0 <= run["test"]["miou"] <= 1.0 and 0.0 <= run["cues"]["miou"] <= 1.0
        assert run["test"]["num_maps"] >= 12  # every test image, every ground-truth class
    assert json.loads((out / "results.json").read_text())["table"][0]["mAP"]["n"] == 1
    assert "cue label-map mIoU" in (out / "results.md").read_text()
    assert all(0.0 <= r["blank_maps"]["mean"] <= 1.0 for r in report["table"])
    assert all((out / "runs" / "shapes" / f"{r['key']}-seed0" / "blank.json").exists() for r in report["table"])
    assert (out / "shapes_attention.png").stat().st_size > 0
    done = sorted((out / "runs" / "shapes").glob("*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    again = run_localization(out, seeds=[0], budgets=[0.25], profile=TINY)  # resumes: nothing retrained
    assert [p.stat().st_mtime_ns for p in done] == stamps
    assert again["table"] == report["table"]


def test_a_run_trained_with_other_settings_is_neither_reused_nor_resumed(localization):
    out, _ = localization
    done = sorted((out / "runs" / "shapes").glob("*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    for changed, said in (
        ({"alpha": 0.5}, "alpha 1.0 there, 0.5 asked"),
        ({"am_gradient": "attention"}, "'network' there"),
        ({"am_fill": "context"}, "'zero' there"),
    ):
        with pytest.raises(ValueError, match=f"baseline-seed0 holds a run trained with other settings.*{said}"):
            run_localization(out, seeds=[0], budgets=[0.25], profile=TINY.with_overrides(**changed))
    unfinished = out / "runs" / "shapes" / "baseline-seed0" / "result.json"
    kept = unfinished.read_bytes()
    unfinished.unlink()  # a run stopped before its result: resumed only with the settings it was trained with
    try:
        with pytest.raises(ValueError, match="baseline-seed0 holds a run trained with other settings.*lr 0.003"):
            run_localization(out, seeds=[0], budgets=[0.25], profile=TINY.with_overrides(lr=0.1))
        assert not unfinished.exists()  # nothing trained
    finally:
        unfinished.write_bytes(kept)
    assert [p.stat().st_mtime_ns for p in done[1:]] == stamps[1:]


def test_cues_cli_writes_a_readable_label_map_dataset(localization, tmp_path, capsys):
    out, _ = localization
    ckpt = out / "runs" / "shapes" / "gain-seed0" / "last.pt"
    data = out / "data" / "shapes-seed0"
    assert (
        _cli(
            [
                "cues",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(tmp_path / "c"),
                "--score",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert scores["num_images"] == 12 and 0.0 <= scores["miou"] <= 1.0
    cues = load_dataset(tmp_path / "c", "test", allow_outside_root=True)  # the cues list the data set's images
    assert len(cues) == 12 and cues.num_guided == 12 and cues.classes == load_dataset(data, "test").classes
    assert _cli(["eval", "--cues", str(tmp_path / "c"), "--data", str(data), "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == round(scores["miou"], 4)  # gainx eval rounds
    assert (
        _cli(
            [
                "cues",
                "--checkpoint",
                str(tmp_path / "nope.pt"),
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err


def test_bias_experiment_decoy(tmp_path):
    report = run_bias("decoy", tmp_path, seeds=[0], budgets=[0.1], guidances=["paper"], recipes=(), profile=TINY)
    keys = ["baseline", "gain", "gainext-masks-0.1", "gainext-boxes-0.1", "baseline-unbiased-data"]
    assert [r["key"] for r in report["table"]] == keys  # the oracle: the swatch drawn independently of the label
    assert report["splits"] == {"conflicting": "test_random", "consistent": "test_consistent"}
    oracle_data = tmp_path / "data" / "decoy-seed0-unbiased" / "dataset.json"
    assert json.loads(oracle_data.read_text())["generator"]["bias"] == 0.1
    for name in ("decoy_accuracy.png", "decoy_miou.png", "decoy_attention.png"):
        assert (tmp_path / name).stat().st_size > 0
    with pytest.raises(ValueError, match="bias benchmark"):
        run_bias("shapes", tmp_path, profile=TINY)


def test_bias_experiment_cooccur_with_guidance_variant_and_oracle(tmp_path):
    report = run_bias(
        "cooccur", tmp_path, seeds=[0], budgets=[0.1], guidances=["paper", "rrr"], recipes=RECIPES, profile=TINY
    )
    keys = [r["key"] for r in report["table"]]
    assert keys == [
        "baseline",
        "gain",
        "gainext-masks-0.1",
        "gainext-boxes-0.1",
        "gainext-masks-0.05-rrr",
        "recipe-default-masks-0.05",  # the default recipe (gainx.training.presets)
        "baseline-unbiased-data",
    ]
    assert set(report["table"][0]) >= {"acc_conflicting", "acc_consistent", "miou", "pointing_game"}
    assert report["splits"] == {"conflicting": "test_conflicting", "consistent": "test_consistent"}
    oracle = json.loads((tmp_path / "data" / "cooccur-seed0-unbiased" / "dataset.json").read_text())
    assert oracle["generator"]["bias"] == pytest.approx(1 / 6)
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| gainext") == 6 and "trained on unbiased data" in md and "± 0.000" not in md
    assert "Signed evidence" in md and len(report["evidence_table"]) == len(keys)
    for run in report["runs"]:  # object + background evidence of each run, cached next to its checkpoint
        assert set(run["evidence"]) >= {"gt_object", "gt_background", "other_object", "other_background"}
        # the counterfactual images' final weight in L_cl, for the runs that paste them
        assert ("counterfactual_weight" in run) == (run["key"] == "recipe-default-masks-0.05"), run["key"]
    recipe = next(run for run in report["runs"] if run["key"] == "recipe-default-masks-0.05")
    assert 0 < recipe["counterfactual_weight"] <= 4.0


def test_a_run_or_generated_data_of_other_settings_is_not_reused(tmp_path):
    kwargs = dict(seeds=[0], budgets=[], guidances=[], references=("baseline",), recipes=())
    first = TINY.with_overrides(epochs=1, alpha=0.5)
    report = run_bias("decoy", tmp_path / "a", profile=first, **kwargs)
    done = tmp_path / "a" / "runs" / "decoy" / "baseline-seed0" / "result.json"
    stamp = done.stat().st_mtime_ns
    for profile, said in (
        (first.with_overrides(epochs=3), "epochs 1 there, 3 asked"),  # a finished run of another length
        (first.with_overrides(arch="resnet18"), "arch 'small_cnn' there, 'resnet18' asked"),
        (TINY.with_overrides(epochs=1), "alpha 0.5 there, 1.0 asked"),  # --alpha left at its default
    ):
        with pytest.raises(ValueError, match=f"baseline-seed0 holds a run trained with other settings.*{said}"):
            run_bias("decoy", tmp_path / "a", profile=profile, **kwargs)
    with pytest.raises(ValueError, match="decoy-seed0 holds data generated with other settings") as err:
        run_bias("decoy", tmp_path / "a", profile=first.with_overrides(train_size=20, test_size=8), **kwargs)
    assert "train_size 40 there, 20 asked; test_size 12 there, 8 asked" in str(err.value)
    assert done.stat().st_mtime_ns == stamp
    # a run folder copied into another --out is reused there (its data generated again, the same)
    shutil.copytree(tmp_path / "a" / "runs", tmp_path / "b" / "runs")
    again = run_bias("decoy", tmp_path / "b", profile=first, **kwargs)
    copied = tmp_path / "b" / "runs" / "decoy" / "baseline-seed0" / "result.json"
    assert copied.read_bytes() == done.read_bytes() and again["table"] == report["table"]


def test_parallel_jobs_give_the_results_of_one_process(tmp_path):
    kwargs = dict(
        seeds=[0, 1], budgets=[], guidances=["paper"], references=("baseline", "gain"), recipes=(), profile=TINY
    )
    serial = run_bias("decoy", tmp_path / "serial", **kwargs)
    parallel = run_bias("decoy", tmp_path / "parallel", jobs=2, **kwargs)
    assert [(r["key"], r["seed"]) for r in parallel["runs"]] == [(r["key"], r["seed"]) for r in serial["runs"]]
    for a, b in zip(serial["runs"], parallel["runs"]):
        assert a["test_random"] == b["test_random"] and a["test_consistent"] == b["test_consistent"]
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_bias("decoy", tmp_path / "none", jobs=0, **kwargs)


def test_localization_reports_whether_each_model_reads_the_object_or_the_erasure(localization):
    out, report = localization
    assert "objects erased (their masks)" in (out / "results.md").read_text()
    assert [r["key"] for r in report["erasure_table"]] == [r["key"] for r in report["table"]]
    run = out / "runs" / "shapes" / "gain-seed0"
    cached = json.loads((run / "erasure.json").read_text())
    assert cached["num_pairs"] >= 12 and all(0.0 <= cached[k] <= 1.0 for k in ERASURE_FIELDS)
    # the image and object columns by hand: the probability of each ground-truth class (sigmoid: multi-label)
    model, meta = load_model(run / "last.pt")
    data = load_split_for_model(out / "data" / "shapes-seed0", "test", meta)
    image_p, object_p, margin_p, context_p = [], [], [], []
    for i in range(len(data)):
        item = data[i]
        if not item["has_guide"]:
            continue
        for c in torch.nonzero(item["labels"] > 0.5).flatten().tolist():
            of_class = (item["guide"][c] == 1).float()
            grown = torch.nn.functional.max_pool2d(of_class[None, None], 3, stride=1, padding=1)[0, 0]  # 16 px: 1
            surroundings = context_fill(item["image"][None], (1 - of_class)[None, None])[0]
            filled = item["image"] * (1 - of_class) + surroundings * of_class
            x = torch.stack([item["image"], item["image"] * (1 - of_class), item["image"] * (1 - grown), filled])
            with torch.no_grad():
                p = torch.sigmoid(model(x))[:, c]
            image_p.append(p[0].item())
            object_p.append(p[1].item())
            margin_p.append(p[2].item())
            context_p.append(p[3].item())
    assert len(image_p) == cached["num_pairs"]
    assert cached["image"] == pytest.approx(sum(image_p) / len(image_p), abs=1e-5)
    assert cached["object"] == pytest.approx(sum(object_p) / len(object_p), abs=1e-5)
    assert cached["object_margin"] == pytest.approx(sum(margin_p) / len(margin_p), abs=1e-5)
    assert cached["object_context"] == pytest.approx(sum(context_p) / len(context_p), abs=1e-5)


def test_a_cached_score_that_lacks_a_field_is_computed_again(tmp_path):
    path = tmp_path / "erasure.json"
    path.write_text(json.dumps({"image": 0.9}))  # as an earlier version wrote it
    assert _cached(path, lambda: {"image": 0.9, "object_context": 0.5}, fields=ERASURE_FIELDS[:1]) == {"image": 0.9}
    assert _cached(path, lambda: {"image": 0.9, "object_context": 0.5}, fields=ERASURE_FIELDS)["object_context"] == 0.5
    assert json.loads(path.read_text())["object_context"] == 0.5


def test_the_moved_mask_keeps_every_object_whole():
    mask = torch.zeros(1, 8, 8)
    mask[0, 1:3, 1:3] = 1.0  # on the object
    objects = torch.zeros(1, 8, 8)
    objects[0, 1:3, 1:3] = 1.0
    objects[0, 5, 5] = 1.0  # another object where the rolled mask lands
    moved = moved_off_objects(mask, objects)
    assert moved[0, 5, 5] == 0 and moved.sum() == 3  # rolled by (4, 4), less the object pixel
    assert torch.equal(moved[0, 5:7, 5:7], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    pixel = torch.zeros(1, 32, 32)
    pixel[0, 10, 10] = 1.0
    grown = with_margin(pixel)
    assert grown.sum() == 25 and grown[0, 8:13, 8:13].eq(1).all()  # 32 // 16 = 2 pixels on every side


KILLED_PARENT = """
import os, time
from gainx.experiments.runner import worker_pool

if __name__ == "__main__":
    pool = worker_pool(1)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)  # a long run still queued when the command is killed
    os.kill(os.getpid(), 9)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_workers_end_when_the_experiment_command_is_killed(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_PARENT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, "the worker outlived the killed experiment command"
