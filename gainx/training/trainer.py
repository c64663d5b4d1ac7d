"""Training loop for baseline, GAIN and GAINext (single process or torchrun + DDP).

Every epoch ends with its metrics row (``RUN/metrics.csv``) and then an atomic
checkpoint (``RUN/last.pt``) holding the model, optimizer, scheduler, AMP
scaler, all RNG states and the counterfactual bank (under DDP, every rank's);
``resume=True`` continues from it so that an interrupted run ends exactly
where an uninterrupted one would (data order is a function of seed and epoch;
a row written for an epoch whose checkpoint was not is rewritten when that
epoch is run again).
``RUN/best.pt`` holds the epoch with the best validation accuracy (mAP for
multi-label data), measured on the data set's validation split or on a
held-out fraction of the training split, never on a test split unless it is
named (:mod:`gainx.training.validation`). Each epoch prints one summary line
(:func:`gainx.training.metrics_log.epoch_summary`). A run that fine-tunes from ``weights`` (or
``bn_statistics="recompute"``) recomputes its batch-norm running statistics before each epoch's validation and
checkpoints (:mod:`gainx.training.batch_norm`), without touching the random streams training draws from.

Unless ``batch_size`` is 1, training never runs a batch of one image, which batch norm cannot train on: when
the images a process draws per epoch leave one over after full batches of ``batch_size``, that image is left
out of the epoch (the sampler shuffles anew each epoch, so another one each time), and a training split of
fewer than 2 images per process is refused.

A loss that is NaN or infinite stops the run with :class:`TrainingDiverged`,
naming the epoch and step, before that step changes the weights; weights that
are not finite at the end of an epoch are never saved, and a ``last.pt``
holding non-finite weights is not resumed. ``last.pt`` thus keeps the last
finite state, and the message names its epoch.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from gainx.data import load_dataset
from gainx.data.holdout import subset
from gainx.data.load import dataset_layout, unused_boxes_hint
from gainx.evaluation.evaluate import evaluate
from gainx.io import atomic_write_text, remove_stale_temporaries
from gainx.losses import GAIN
from gainx.models import build_model, default_target_layer
from gainx.models.checkpoint import check_finite_weights, load_checkpoint, non_finite_tensors
from gainx.models.registry import INPUT_NORMALIZATION
from gainx.training.batch_norm import recompute_batch_norm_statistics, recomputes_statistics
from gainx.training.checkpoint import save_checkpoint
from gainx.training.config import MAY_CHANGE_ON_RESUME, TrainConfig, differing_settings, resume_checked_fields
from gainx.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_from_main,
    gather_to_main,
    init_distributed,
    shutdown,
)
from gainx.training.metrics_log import MetricsLog, epoch_summary
from gainx.training.rng import rng_state, seed_everything, set_rng_state
from gainx.training.run_folder import BEST, CHECKPOINT, check_run_folder, clear_run_folder
from gainx.training.schedule import build_scheduler, sync_learning_rate
from gainx.training.summary import feature_map_size, objective_line, start_summary
from gainx.training.validation import check_resumed_validation, select_validation


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the message names the epoch (and step)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


OPTIMIZERS = ("adamw", "sgd")
BANK_CHECKPOINT_BYTES = 256 * 2**20  # a larger counterfactual bank is not written into last.pt


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


class Trainer:
    """Builds data, model, objective and optimizer from a :class:`TrainConfig` and runs it."""

    def __init__(self, cfg: TrainConfig, announce: bool = True) -> None:
        """``announce``: print the start summary (:mod:`gainx.training.summary`) on the main process."""
        self.cfg = cfg
        self.out = Path(cfg.out)
        device = pick_device(cfg.device)
        self.dist: DistInfo = init_distributed(device)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        check_run_folder(self.out, cfg.resume, cfg.overwrite)  # an old run is removed by fit, once all is built
        seed_everything(cfg.seed)
        outside = cfg.allow_outside_root
        self.dataset = load_dataset(
            cfg.data,
            cfg.train_split,
            image_size=cfg.image_size,
            augment=cfg.augment,
            guide=cfg.guide,
            allow_outside_root=outside,
        )
        self.dataset, self.validation, self.validation_note = select_validation(
            cfg,
            self.dataset,
            lambda split: load_dataset(
                cfg.data, split, image_size=self.dataset.image_size, guide=cfg.guide, allow_outside_root=outside
            ),
        )
        self.val = self.validation.dataset if self.validation else None
        self.val_split = self.validation.label if self.validation else None
        self.best: dict[str, Any] | None = None  # {"metric": "val_accuracy", "value": ..., "epoch": ...}
        self.recompute_bn = recomputes_statistics(cfg.bn_statistics, cfg.weights)
        if cfg.method == "gainext" and self.dataset.num_guided == 0:
            raise ValueError(
                f"method 'gainext' needs masks or boxes, but split {cfg.train_split!r} of {cfg.data} has none"
                + unused_boxes_hint(cfg.data, cfg.train_split, cfg.guide, outside)
            )
        self.model = build_model(cfg.arch, len(self.dataset.classes), cfg.weights, cfg.model_kwargs)
        if cfg.arch in INPUT_NORMALIZATION:  # the normalization the arch's weights expect, recorded in checkpoints
            for ds in (self.dataset, self.val):
                if ds is not None:
                    ds.set_normalization(*INPUT_NORMALIZATION[cfg.arch])
        self.target_layer = cfg.target_layer or default_target_layer(cfg.arch, self.model, self.dataset.image_size)
        self.model = self.model.to(device)
        self.objective = GAIN(
            self.model,
            self.target_layer,
            method=cfg.method,
            multilabel=self.dataset.multilabel,
            alpha=cfg.alpha,
            omega_e=cfg.omega_e,
            sigma=cfg.sigma,
            omega=cfg.omega,
            second_order=cfg.second_order,
            freeze_bn_am=cfg.freeze_bn_am,
            am_score=cfg.am_score,
            am_gradient=cfg.am_gradient,
            am_fill=cfg.am_fill,
            backend=cfg.backend,
            guidance=cfg.guidance,
            counterfactuals=cfg.counterfactuals,
            counterfactual_weight=cfg.counterfactual_weight,
            counterfactual_eta=cfg.counterfactual_eta,
            counterfactual_weight_max=cfg.counterfactual_weight_max,
            counterfactual_jitter=cfg.counterfactual_jitter,
            counterfactual_backgrounds=cfg.counterfactual_backgrounds,
        )
        if announce and self.dist.main:
            self._announce()
        self.step_module: nn.Module = self.objective
        if self.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.objective, device_ids=ids)
        self.optimizer = _optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg.scheduler, cfg.epochs, self.optimizer)
        self.amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed
        )
        per_process = len(self.sampler)  # every rank draws as many (the sampler repeats images to even them up)
        if per_process < 2:
            ranks = f", {per_process} for each of {self.dist.world_size} processes" if self.dist.enabled else ""
            raise ValueError(
                f"split {cfg.train_split!r} of {cfg.data} leaves {len(self.dataset)} training image(s){ranks}: "
                "training needs batches of at least 2 images (batch norm cannot train on one), whatever "
                "--batch-size; add images" + (" or run fewer processes" if self.dist.enabled else "")
            )
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.workers > 0,
            drop_last=per_process % cfg.batch_size == 1,  # a last batch of one image: batch norm cannot train on it
        )
        self.bn_loader = DataLoader(  # the training images as at test time (no flips), in a fixed order
            subset(self.dataset, range(len(self.dataset)), augment=False),
            batch_size=cfg.batch_size,
            num_workers=cfg.workers,
            drop_last=len(self.dataset) >= cfg.batch_size,  # no small last batch: every mean weighs alike
        )
        self.restored_bn: str | None = None  # what the resumed checkpoint's batch-norm statistics are
        self.start_epoch = 0
        self.saved_epoch: int | None = None  # the epoch whose (finite) weights last.pt holds
        self.bank_note_shown = False  # rank_state says once that the bank is too large for last.pt

    def _announce(self) -> None:
        cfg, ds = self.cfg, self.dataset
        splits = {cfg.train_split: len(ds)} | ({self.val_split: len(self.val)} if self.val is not None else {})
        lines = start_summary(
            layout=dataset_layout(cfg.data),
            data=cfg.data,
            splits=splits,
            num_guided=ds.num_guided,
            image_size=ds.image_size,
            size_source="--image-size" if cfg.image_size else "the data set's default; choose with --image-size",
            target_layer=self.target_layer,
            layer_source="--target-layer"
            if cfg.target_layer
            else f"the default for {cfg.arch}; choose with --target-layer",
            grid=feature_map_size(self.model, self.target_layer, ds.image_size),
        )
        if self.validation_note:
            lines.append(self.validation_note)
        lines.append(objective_line(self.objective, cfg.am_warmup, cfg.batch_size))
        if self.recompute_bn:
            lines.append(
                "batch norm: running statistics recomputed over the training images after each epoch "
                f"(--bn-statistics {cfg.bn_statistics})"
            )
        print("\n".join(lines), file=sys.stderr, flush=True)

    # -- checkpoints -------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        ds = self.dataset
        return {
            "model": self.model.state_dict(),
            "arch": self.cfg.arch,
            "model_kwargs": dict(self.cfg.model_kwargs),
            "num_classes": len(ds.classes),
            "classes": list(ds.classes),
            "target_layer": self.target_layer,
            "image_size": list(ds.image_size),
            "mean": list(ds.mean),
            "std": list(ds.std),
            "multilabel": bool(ds.multilabel),
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "validation": self.validation.record if self.validation else None,
            "bn_statistics": "recomputed" if self.recompute_bn else "running",
        }

    def rank_state(self) -> dict[str, Any]:
        """What this process draws from next, for resuming: its random state and its counterfactual bank (the
        annotated training images of its last steps), unless the bank holds more than
        :data:`BANK_CHECKPOINT_BYTES` (large images, many classes): then a resumed run refills it and draws
        other images than an uninterrupted one. The bound is per process: a DDP run's last.pt holds up to
        one such bank per rank."""
        state: dict[str, Any] = {"rng": rng_state()}
        bank = self.objective.bank
        if bank is None:
            return state
        size = bank.nbytes  # measured before the copy a bank too large for last.pt would not need
        if size <= BANK_CHECKPOINT_BYTES:
            return {**state, "counterfactual_bank": bank.state_dict()}
        if not self.bank_note_shown and self.dist.main:
            self.bank_note_shown = True
            print(
                f"note: the counterfactual bank ({size / 2**20:.0f} MiB) is larger than "
                f"{BANK_CHECKPOINT_BYTES // 2**20} MiB and is not written into last.pt: --resume refills it, so a "
                "resumed run draws other counterfactual images than an uninterrupted one",
                file=sys.stderr,
                flush=True,
            )
        return state

    def resume_state(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """What only ``last.pt`` carries, for resuming: the counterfactual images' weight and, from ``ranks``
        (every process's :meth:`rank_state`, in rank order), the bank of a single process or, under DDP, every
        rank's random state and bank (``"ranks"``). ``best.pt``, the file a model is shipped from, holds no
        training images."""
        state: dict[str, Any] = {}
        if self.objective.bank is not None:
            state["counterfactual_log_weight"] = self.objective.counterfactual_log_weight.detach().cpu()
        if self.dist.enabled:
            return {**state, "ranks": ranks}
        return {**state, **{key: value for key, value in ranks[0].items() if key != "rng"}}  # rng: in the state

    def own_rank_state(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        """This process's random state and bank in a ``last.pt`` (:meth:`resume_state`). A checkpoint of
        another number of processes gives every process the first one's, and says so."""
        ranks = state.get("ranks") or [{key: state[key] for key in ("rng", "counterfactual_bank") if key in state}]
        if len(ranks) == self.dist.world_size:
            return ranks[self.dist.rank]
        if self.dist.main:
            written = f"by {len(ranks)} processes" if "ranks" in state else "with one process's state"
            print(
                f"note: {path} was written {written}, this run has world size {self.dist.world_size}: "
                "every process resumes with the random state and counterfactual bank of the first, so the run "
                "draws other images than an uninterrupted one",
                file=sys.stderr,
                flush=True,
            )
        return ranks[0]

    def restore(self, path: Path) -> None:
        """Continue from the checkpoint ``path`` (``last.pt``): weights, optimizer, scaler, random states,
        counterfactual bank, best epoch and the schedule's position.

        Raises ``ValueError`` naming every setting that differs from the checkpoint's, with both values, when
        this run's config differs in a field other than :data:`gainx.training.config.MAY_CHANGE_ON_RESUME`
        (``epochs``, ``resume``, ``overwrite``, ``data``, ``out``, ``allow_outside_root``, ``device``,
        ``backend``, ``amp``, ``workers``, ``progress``, ``bn_statistics``, ``val_split``, ``val_fraction``) or in
        its classes, and when it would select ``best.pt`` on other images
        (:func:`gainx.training.validation.check_resumed_validation`).
        """
        state = load_checkpoint(path, map_location="cpu")  # random states must be host tensors; the model,
        # optimizer and bank move to their device as they load
        check_finite_weights(
            path, state["model"], "cannot resume from it: start over with --overwrite, or put back a finite copy"
        )
        differ = differing_settings(TrainConfig.from_dict(state["config"]), self.cfg, resume_checked_fields())
        if state["classes"] != list(self.dataset.classes):
            differ.append(f"classes {state['classes']} there, {list(self.dataset.classes)} asked")
        if differ:
            raise ValueError(
                f"{path} was trained with other settings than this run's ({'; '.join(differ)}); resume with the "
                f"settings it was trained with (only {', '.join(MAY_CHANGE_ON_RESUME)} may change), or start over "
                "with --overwrite"
            )
        check_resumed_validation(path, state, self.validation)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        own = self.own_rank_state(path, state)
        set_rng_state({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in own["rng"].items()})
        if self.objective.bank is not None and "counterfactual_bank" in own:
            self.objective.bank.load_state_dict(own["counterfactual_bank"], self.device)
        if "counterfactual_log_weight" in state:
            self.objective.counterfactual_log_weight.copy_(state["counterfactual_log_weight"])
        self.start_epoch = self.saved_epoch = int(state["epoch"])
        self.restored_bn = state.get("bn_statistics", "running")
        self.best = state.get("best")
        self._continue_schedule(path, int(state["config"]["epochs"]))

    def _continue_schedule(self, path: Path, saved_epochs: int) -> None:
        """Put the learning rate on this run's schedule; a larger ``epochs`` than the checkpoint's extends
        the cosine to the new length (:mod:`gainx.training.schedule`)."""
        if self.cfg.epochs < self.start_epoch:
            raise ValueError(
                f"{path} has already trained {self.start_epoch} epochs; --epochs {self.cfg.epochs} would end "
                f"before it (give --epochs {self.start_epoch} or more, or --overwrite to start over)"
            )
        self.scheduler.last_epoch = self.start_epoch  # the rate is a function of the epoch alone
        sync_learning_rate(self.scheduler)
        if self.cfg.epochs != saved_epochs and self.dist.main:
            print(
                f"resuming {path} at epoch {self.start_epoch}: the {self.cfg.scheduler} schedule now spans "
                f"{self.cfg.epochs} epochs instead of {saved_epochs} (lr {self.optimizer.param_groups[0]['lr']:.3g})",
                flush=True,
            )

    def kept_checkpoint(self) -> str:
        """What the run folder keeps when the run stops now: the epoch of the finite weights in last.pt."""
        if self.saved_epoch is None:
            return f"no checkpoint was written to {self.out}"
        return f"{self.out / CHECKPOINT} keeps the finite weights of epoch {self.saved_epoch}"

    # -- loop ----------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.sampler.set_epoch(epoch)
        self.model.train()
        mining = epoch >= self.cfg.am_warmup
        totals = torch.zeros(6, dtype=torch.float64)
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            leave=False,
            disable=not (self.cfg.progress and self.dist.main),
        )
        for step, batch in enumerate(bar, 1):
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch["labels"].to(self.device, non_blocking=True)
            guide = batch["guide"].to(self.device, non_blocking=True)
            has_guide = batch["has_guide"].to(self.device, non_blocking=True)
            with torch.autocast(device_type=self.device.type, enabled=self.amp):
                out = self.step_module(images, labels, guide, has_guide, mining=mining)
            if not torch.isfinite(out.loss.detach()):  # before the step: the weights stay as they were
                parts = ", ".join(
                    f"{name} {value.item():.4g}"
                    for name, value in (("L_cl", out.loss_cl), ("L_am", out.loss_am), ("L_e", out.loss_e))
                )
                raise TrainingDiverged(
                    f"epoch {epoch + 1} step {step}: the loss is {out.loss.item()} ({parts}); stopping: "
                    f"{self.kept_checkpoint()}; lower --lr or the loss weights, or check the data for NaN or "
                    f"infinite values"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = images.shape[0]
            correct = _correct(out.scores.detach(), labels, self.dataset.multilabel)
            totals += torch.tensor(
                [
                    out.loss.item() * n,
                    out.loss_cl.item() * n,
                    out.loss_am.item() * n,
                    out.loss_e.item() * n,
                    correct,
                    n,
                ],
                dtype=torch.float64,
            )
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
        totals = all_reduce_mean(totals, self.dist)
        count = max(totals[5].item(), 1.0)
        metrics = {
            "loss": totals[0].item() / count,
            "loss_cl": totals[1].item() / count,
            "loss_am": totals[2].item() / count,
            "loss_e": totals[3].item() / count,
            "train_acc": totals[4].item() / count,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if self.objective.bank is not None:  # where the group DRO has moved it (fixed without one)
            metrics["counterfactual_weight"] = self.objective.counterfactual_log_weight.exp().item()
        return metrics

    def fit(self) -> Path:
        """Train from epoch ``start_epoch`` (after :meth:`restore` with ``resume``) to ``epochs``; returns the path
        of ``last.pt``. With ``overwrite``, the old run's files are removed first (not before: a run that fails
        to build its data or model leaves them in place)."""
        path = self.out / CHECKPOINT
        if self.cfg.overwrite and self.dist.main:
            clear_run_folder(self.out)
        if self.dist.main:  # files a killed run was writing; only this process writes them
            for name in (CHECKPOINT, "config.json", "metrics.csv"):
                remove_stale_temporaries(self.out / name)
        if self.cfg.resume and path.exists():
            self.restore(path)
        log = MetricsLog(self.out, tensorboard=True) if self.dist.main else None
        if self.dist.main:
            atomic_write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=2))
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                start = time.perf_counter()
                metrics = self.train_epoch(epoch)
                self.scheduler.step()
                bad: list[str] = []
                if self.dist.main:
                    if self.recompute_bn:  # before validation and the checkpoints, which then hold them
                        self.recompute_statistics()
                    improved = self.validate(metrics, epoch + 1)
                    metrics["seconds"] = time.perf_counter() - start
                    bad = non_finite_tensors(self.model.state_dict())
                bad = broadcast_from_main(bad, self.dist)  # every rank stops, none waits for the others
                if bad:
                    raise TrainingDiverged(
                        f"epoch {epoch + 1}: {len(bad)} weight tensor(s) hold NaN or "
                        f"infinite values (first: {bad[0]}); not saved, {self.kept_checkpoint()}"
                    )
                if self.dist.main:
                    log.log(epoch + 1, metrics)  # before the checkpoint: a resumed run rewrites a row it repeats
                ranks = gather_to_main(self.rank_state(), self.dist)  # after validation: what each draws next
                if self.dist.main:
                    state = self.checkpoint_state(epoch + 1)
                    save_checkpoint(path, {**state, **self.resume_state(ranks)})  # first: what a resumed run needs
                    if improved:
                        save_checkpoint(self.out / BEST, state)
                    line = epoch_summary(epoch + 1, self.cfg.epochs, metrics, best=improved, validation=self.val_split)
                    print(line, flush=True)
                barrier(self.dist)
                self.saved_epoch = epoch + 1
            if self.finished_with_running_statistics():
                if self.dist.main:
                    self.recompute_statistics()
                ranks = gather_to_main(self.rank_state(), self.dist)
                if self.dist.main:
                    save_checkpoint(path, {**self.checkpoint_state(self.start_epoch), **self.resume_state(ranks)})
        finally:
            if log is not None:
                log.close()
            shutdown(self.dist)
        return path

    def recompute_statistics(self) -> None:
        """Recompute the batch-norm statistics over the training images, unflipped
        (:mod:`gainx.training.batch_norm`), leaving every random stream as it was: the next epochs draw the data
        order and augmentation of a run that does not."""
        state = rng_state()
        try:
            recompute_batch_norm_statistics(self.model, (batch["image"] for batch in self.bn_loader))
        finally:
            set_rng_state(state)

    def finished_with_running_statistics(self) -> bool:
        """A finished run resumed to recompute its statistics: its last.pt holds the final weights with the
        running averages (trained with ``bn_statistics="running"``, or before the statistics were recomputed).
        Its weights are those of a run that recomputed them all along, so only the statistics are brought up to
        date."""
        return (
            self.recompute_bn and self.restored_bn not in (None, "recomputed") and self.start_epoch == self.cfg.epochs
        )

    def validate(self, metrics: dict[str, float], epoch: int) -> bool:
        """Add ``val_<metric>`` (accuracy, or mAP for multi-label data) to ``metrics``; True when it beats the
        best epoch so far (which ``self.best`` then records)."""
        if self.val is None:
            return False
        report = evaluate(self.model, self.val, self.target_layer, batch_size=self.cfg.batch_size, localization=False)
        self.model.train()
        key, value = "val_" + report["metric"], float(report[report["metric"]])
        metrics[key] = value
        if self.best is not None and value <= self.best["value"]:
            return False
        self.best = {"metric": key, "split": self.val_split, "value": value, "epoch": epoch}
        return True


def _correct(scores: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> float:
    """Top-1 hits (single-label) or top-1-in-ground-truth hits (multi-label)."""
    top = scores.argmax(dim=1)
    return float(labels.gather(1, top.unsqueeze(1)).gt(0.5).sum())


def train(cfg: TrainConfig, announce: bool = True) -> Path:
    """Train according to ``cfg``; returns the path of the final checkpoint. ``announce``: print what the run
    will do first (data, input size, target layer and its feature-map size; :mod:`gainx.training.summary`)."""
    return Trainer(cfg, announce).fit()
