"""Benchmark generators, budget variants, cue label maps and their scoring."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from gainx.data import load_dataset
from gainx.data.synthetic import SHAPES, write_cooccur, write_shapes
from gainx.data.synthetic.cooccur import CONTEXTS
from gainx.data.synthetic.generator import shape_mask
from gainx.experiments.cues import cue_label_map, evaluate_cues, label_map_of
from gainx.experiments.specs import RunSpec, bias_matrix, localization_matrix
from gainx.experiments.tables import aggregate, fmt, mean_std
from gainx.experiments.variants import boxes_from_label_map, write_variant


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()


def test_shapes_benchmark(tmp_path):
    a = write_shapes(tmp_path / "a", image_size=16, seed=3, mask_fraction=0.25, train_size=8, test_size=5)
    b = write_shapes(tmp_path / "b", image_size=16, seed=3, mask_fraction=0.25, train_size=8, test_size=5)
    assert _digest(a) == _digest(b)
    train, test = load_dataset(a, "train"), load_dataset(a, "test")
    assert train.num_guided == 2 and test.num_guided == 5 and train.multilabel and train.classes == list(SHAPES)
    for i in range(len(test)):
        item = test[i]
        present = item["guide"].flatten(1).amax(1) == 1
        assert torch.equal(present, item["labels"] > 0.5)  # every labelled object is visible in the mask
    with pytest.raises(ValueError, match="mask_fraction"):
        write_shapes(tmp_path / "c", mask_fraction=1.5)


def test_cooccur_splits_differ_only_in_the_context(tmp_path):
    root = write_cooccur(tmp_path / "co", image_size=16, seed=1, mask_fraction=0.5, train_size=6, test_size=6)
    cons, conf = load_dataset(root, "test_consistent"), load_dataset(root, "test_conflicting")
    assert load_dataset(root, "train").num_guided == 3
    for i in range(len(cons)):
        a, b = cons[i], conf[i]
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["guide"], b["guide"])
        obj = a["guide"].amax(0) == 1
        assert torch.equal(a["image"][:, obj], b["image"][:, obj])  # same object pixels
        assert not torch.equal(a["image"], b["image"])  # another class's band
    with pytest.raises(ValueError, match="bias"):
        write_cooccur(tmp_path / "x", bias=2.0)
    assert len(CONTEXTS) == len(SHAPES)


def test_shape_masks_are_distinct_and_nonempty():
    rng = np.random.default_rng(0)
    masks = [shape_mask(k, 20, rng) for k in SHAPES]
    assert all(m.sum() > 40 for m in masks)
    assert len({m.tobytes() for m in masks}) == len(SHAPES)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("star", 10, rng)


def test_boxes_from_label_map_hand_case():
    lm = np.zeros((6, 8), dtype=np.uint8)
    lm[1:3, 2:5] = 1
    lm[4, 7] = 3
    lm[0, 0] = 255
    assert boxes_from_label_map(lm, ["a", "b", "c"]) == "a:2 1 5 3;c:7 4 8 5"


def test_budget_variants_are_nested_and_counted(tmp_path):
    base = write_shapes(tmp_path / "s", image_size=16, seed=0, mask_fraction=1.0, train_size=20, test_size=3)
    counts, guided = {}, {}
    for kind in ("masks", "boxes"):
        for budget in (0.1, 0.25):
            ds = load_dataset(write_variant(base, kind, budget, seed=7), "train", allow_outside_root=True)
            guided[kind, budget] = {s.image.name for s in ds.samples if s.has_guide}
            counts[kind, budget] = ds.num_guided
            assert all(bool(s.boxes) == (kind == "boxes") for s in ds.samples if s.has_guide)
    assert counts == {("masks", 0.1): 2, ("masks", 0.25): 5, ("boxes", 0.1): 2, ("boxes", 0.25): 5}
    assert guided["masks", 0.1] < guided["masks", 0.25] and guided["masks", 0.25] == guided["boxes", 0.25]
    plain = load_dataset(write_variant(base, "none", 0.0, seed=7), "train", allow_outside_root=True)
    assert plain.num_guided == 0 and len(plain) == 20
    # a box covers its mask: the rasterized box guide contains every mask pixel
    full = load_dataset(base, "train")
    boxed = load_dataset(base / "variants" / "boxes-0.25", "train", allow_outside_root=True)
    for i, s in enumerate(boxed.samples):
        if s.has_guide:
            assert bool(((full[i]["guide"] == 1) <= (boxed[i]["guide"] == 1)).all())
    with pytest.raises(ValueError, match="kind"):
        write_variant(base, "scribbles", 0.1, seed=0)


def test_cue_label_map_rule_and_conflicts():
    maps = torch.tensor([[[1.0, 0.5, 0.1, 0.0]], [[0.0, 0.5, 0.1, 1.0]]])  # (K=2, 1, 4)
    # 20%-of-max rule: class 2 passes at x=0,1 ; class 4 at x=1,3 ; x=1 conflicts; x=2 passes neither
    lm = cue_label_map(maps, torch.tensor([2, 4]))
    assert lm.tolist() == [[3, 255, 0, 5]]
    assert cue_label_map(torch.zeros(1, 2, 2), torch.tensor([0])).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="maps must be"):
        cue_label_map(maps, torch.tensor([1]))


def _write_cue_folder(root, data, split, make):
    ds = load_dataset(data, split)
    (root / split).mkdir(parents=True)
    for i, s in enumerate(ds.samples):
        Image.fromarray(make(label_map_of(ds[i]["guide"]).numpy())).save(root / split / f"{s.image.stem}.png")
    return ds


def test_evaluate_cues_perfect_empty_and_conflict(tmp_path):
    data = write_shapes(tmp_path / "s", image_size=16, seed=2, mask_fraction=0.0, train_size=2, test_size=4)
    _write_cue_folder(tmp_path / "perfect", data, "test", lambda lm: lm)
    perfect = evaluate_cues(tmp_path / "perfect", data, "test")
    assert perfect["miou"] == 1.0 and perfect["miou_fg"] == 1.0 and perfect["num_images"] == 4
    ds = _write_cue_folder(tmp_path / "empty", data, "test", lambda lm: np.zeros_like(lm))
    empty = evaluate_cues(tmp_path / "empty", data, "test")
    fg = sum(int((label_map_of(ds[i]["guide"]) > 0).sum()) for i in range(len(ds)))
    total = len(ds) * 16 * 16
    assert empty["iou"]["background"] == pytest.approx((total - fg) / total)
    assert empty["miou_fg"] == 0.0
    _write_cue_folder(tmp_path / "conflict", data, "test", lambda lm: np.full_like(lm, 255))
    conflict = evaluate_cues(tmp_path / "conflict", data, "test")
    assert conflict["conflict_fraction"] == 1.0 and conflict["miou"] == 0.0
    (tmp_path / "empty" / "test" / f"{ds.samples[0].image.stem}.png").unlink()
    with pytest.raises(FileNotFoundError, match="cue not found"):
        evaluate_cues(tmp_path / "empty", data, "test")


def test_run_matrix_and_aggregate():
    specs = bias_matrix([0, 1], [0.01, 0.05], 0.05, ["paper", "signed", "rrr"])
    keys = [s.key for s in specs if s.seed == 0]
    assert keys == [
        "baseline",
        "gain",
        "gainext-masks-0.01",
        "gainext-masks-0.05",
        "gainext-boxes-0.01",
        "gainext-boxes-0.05",
        "gainext-masks-0.05-signed",
        "gainext-masks-0.05-rrr",
    ]
    assert len(specs) == 16 and RunSpec("gain", 3).name == "gain-seed3"
    with pytest.raises(ValueError, match="budgets"):
        bias_matrix([0], [0.0], 0.05, ["paper"])
    with pytest.raises(ValueError, match="guidance"):
        bias_matrix([0], [0.05], 0.05, ["ross"])
    runs = [
        {**RunSpec("gain", s).to_dict(), "train_seconds": 1.0, "test": {"accuracy": a}} for s, a in ((0, 0.5), (1, 0.7))
    ]
    row = aggregate(runs, {"acc": ("test", "accuracy")})[0]
    assert row["acc"]["mean"] == pytest.approx(0.6) and row["acc"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert row["seeds"] == [0, 1] and mean_std([1.0])["std"] == 0.0
    assert fmt(mean_std([0.5])) == "0.500 (1 seed)" and fmt(mean_std([0.5, 0.7])) == "0.600 ± 0.141"


def test_references_and_localization_guidances_select_runs():
    keys = [s.key for s in bias_matrix([0], [], 0.05, ["counterfactual"], oracle=True, references=("oracle",))]
    assert keys == ["gainext-masks-0.05-counterfactual", "baseline-unbiased-data"]
    with pytest.raises(ValueError, match="unknown references"):
        bias_matrix([0], [], 0.05, ["paper"], references=("baselines",))
    keys = [s.key for s in localization_matrix([0], [0.05], ["paper", "scaled"])]
    assert keys == ["baseline", "gain", "gainext-masks-0.05", "gainext-masks-0.05-scaled"]
    with pytest.raises(ValueError, match="unknown guidance"):
        localization_matrix([0], [0.05], ["ross"])
    keys = [s.key for s in localization_matrix([0], [0.05], ["scaled"], references=())]
    assert keys == ["gainext-masks-0.05-scaled"]
    with pytest.raises(ValueError, match="unknown references"):
        localization_matrix([0], [0.05], ["paper"], references=("oracle",))


def test_table_cells_show_spread_only_over_several_seeds():
    assert fmt(mean_std([0.5, 0.7])) == "0.600 ± 0.141"
    assert fmt(mean_std([0.25])) == "0.250 (1 seed)"
    assert fmt(mean_std([float("nan")])) == "n/a"


def test_variant_manifest_paths_point_into_the_base(tmp_path):
    base = write_shapes(tmp_path / "s", image_size=16, seed=0, mask_fraction=1.0, train_size=4, test_size=2)
    variant = write_variant(base, "masks", 0.5, seed=0)
    with (variant / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train", "test"}
    assert all(not r["mask"] for r in rows if r["split"] == "test")
    assert all((variant / r["path"]).resolve().parent.parent == base.resolve() for r in rows)


def test_evidence_split_decomposes_the_ground_truth_logit(tmp_path):
    from gainx.experiments.evidence import evidence_split
    from gainx.models import build_model
    from gainx.training import save_checkpoint

    data = write_cooccur(tmp_path / "co", image_size=16, seed=0, mask_fraction=0.0, train_size=2, test_size=8)
    ds = load_dataset(data, "test_conflicting")
    torch.manual_seed(0)
    model = build_model("small_cnn", len(ds.classes)).eval()
    with torch.no_grad():  # a few BN statistics so that the evidence is not degenerate
        model.features[0][1].running_mean.uniform_(-0.5, 0.5)
    state = {
        "model": model.state_dict(),
        "arch": "small_cnn",
        "num_classes": len(ds.classes),
        "classes": ds.classes,
        "target_layer": "features",
        "image_size": [16, 16],
        "mean": list(ds.mean),
        "std": list(ds.std),
        "multilabel": False,
    }
    save_checkpoint(tmp_path / "m.pt", state)
    report = evidence_split(tmp_path / "m.pt", data, "test_conflicting")
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    gt = torch.stack([ds[i]["labels"] for i in range(len(ds))]).argmax(1)
    with torch.no_grad():
        expected = (model(images).gather(1, gt[:, None]).squeeze(1) - model.fc.bias[gt]).mean().item()
    # sum_xy E_c = s_c - b_c for a GAP + linear head: object + background = the logit without bias
    assert report["gt_object"] + report["gt_background"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert report["num_images"] == 8 and 0.0 <= report["background_favours_other"] <= 1.0


def test_figure_column_titles():
    from gainx.experiments.figures import column_title

    assert column_title("gainext-masks-0.05-signed") == "GAINext masks 5%\nsigned"
    assert column_title("gainext-boxes-0.1") == "GAINext boxes 10%"
    assert column_title("baseline") == "baseline"


def test_experiment_overrides_reach_every_run(tmp_path):
    from gainx.cli import build_parser
    from gainx.experiments.cli import _profile
    from gainx.experiments.runner import train_config
    from gainx.experiments.specs import FULL

    args = build_parser().parse_args(
        ["experiment", "bias", "--benchmark", "cooccur", "--out", str(tmp_path), "--epochs", "20"]
        + ["--counterfactual-jitter", "colour", "--counterfactual-backgrounds", "8", "--counterfactuals", "16"]
        + ["--am-gradient", "attention", "--am-fill", "context", "--sigma", "0.25"]
    )
    profile = _profile(args)
    assert (profile.epochs, profile.counterfactual_jitter) == (20, "colour")
    assert (profile.counterfactual_backgrounds, profile.counterfactuals) == (8, 16)
    assert profile.train_size == FULL.train_size  # not overridden: the profile's
    spec = RunSpec("gainext", 0, annotation="masks", budget=0.05, guidance="counterfactual")
    cfg = train_config(spec, tmp_path / "data", tmp_path / "run", profile)
    assert (cfg.epochs, cfg.counterfactual_backgrounds, cfg.counterfactual_jitter) == (20, 8, "colour")
    assert (cfg.am_gradient, cfg.am_fill, cfg.sigma) == ("attention", "context", 0.25)
    assert (cfg.arch, cfg.weights, cfg.target_layer) == ("small_cnn", None, None)
    assert profile.model == "small_cnn from scratch"


def test_experiment_fine_tunes_the_named_network(tmp_path):
    from gainx.cli import build_parser
    from gainx.experiments.cli import _profile
    from gainx.experiments.runner import train_config

    args = build_parser().parse_args(
        ["experiment", "localization", "--out", str(tmp_path), "--model", "efficientnet_lite0"]
        + ["--weights", "pretrained", "--target-layer", "_blocks.10"]
    )
    profile = _profile(args)
    assert profile.model == "efficientnet_lite0 fine-tuned from pretrained, attention at _blocks.10"
    for spec in (RunSpec("baseline", 1), RunSpec("baseline", 0, unbiased=True)):
        cfg = train_config(spec, tmp_path / "data", tmp_path / "run", profile)
        assert (cfg.arch, cfg.weights, cfg.target_layer) == ("efficientnet_lite0", "pretrained", "_blocks.10")


def test_recipe_and_data_matrix_keys():
    from gainx.experiments.specs import data_matrix

    keys = [s.key for s in bias_matrix([0], [], 0.05, [], recipes=("counterfactual",))]
    assert keys == ["baseline", "gain", "recipe-counterfactual-masks-0.05"]
    keys = [s.key for s in data_matrix([0], 0.1, ["paper", "signed"], oracle=True)]
    assert keys == ["baseline", "gain", "gainext", "gainext-signed", "recipe-default", "baseline-unbiased-data"]
    specs = data_matrix([0, 1], 0.1, [], oracle=False, references=("oracle",), recipes=("paper",))
    assert [s.name for s in specs] == ["recipe-paper-seed0", "recipe-paper-seed1"]  # no oracle without its split
    assert (specs[0].method, specs[0].guidance, specs[0].budget) == ("gainext", "paper", 0.1)


def test_localization_matrix_runs_the_recipes_at_each_budget():
    from gainx.experiments.specs import localization_matrix

    specs = localization_matrix([0], [0.05, 0.1], [], ("baseline",), ("default",))
    assert [s.key for s in specs] == ["baseline", "recipe-default-masks-0.05", "recipe-default-masks-0.1"]
    assert (specs[1].method, specs[1].guidance, specs[1].preset) == ("gainext", "counterfactual", "default")
