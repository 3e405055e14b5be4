"""The training loop: staged, resumable, deterministic on the CPU for a seed.

A run trains one model through a list of :class:`Stage` (data, epochs, learning rate), e.g. the
recipe "pretrain on phantoms, then train on real and phantom data together" is two stages. Each
stage gets a fresh AdamW optimizer and a one-cycle (or warm-up + cosine) schedule over its steps.

Run folder (``RUN_DIR``):
- ``run.json``: configuration, stages, data counts per source, command, git revision, versions;
- ``checkpoint.pt``: the latest state (model, optimizer, scheduler, scaler, RNG, position in the
  run, metrics history), written after every epoch, every ``checkpoint_every`` steps and when
  ``max_steps`` stops the run; ``--resume`` continues from it exactly;
- ``best.pt``: the weights with the best validation AUC(any) so far;
- ``metrics.jsonl``: one JSON line per validation (loss, AUC per label, sensitivity and
  specificity at the threshold, per-source AUC(any), throughput).

Validation data: each data spec is split by group (:mod:`ichrt.export.splits`), unless the stage
names explicit ``val_data``; a source split in one stage gets the same split in the next, so keep
the validation settings of a source the same across stages. Loss: binary cross-entropy with logits over the known labels only
(NaN = unknown is masked out), with an optional positive-class weight; optionally a localization
term that rewards CAM energy inside lesion masks/boxes (``loc_weight``).

Determinism: on the CPU the same seed, data and worker count give bit-identical weights
(``torch.use_deterministic_algorithms``; every data-order and augmentation draw is seeded from the
seed, the stage and the epoch). On CUDA, cuDNN autotuning is on for speed and results vary in the
last bits.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ichrt.export.appearance import AppearanceConfig
from ichrt.export.augment import PRESETS, AugmentConfig
from ichrt.export.datasets import DataSpec, class_mapping, iter_spec
from ichrt.export.insertion import InsertionConfig
from ichrt.export.models import load_weights, torch_cam_maps
from ichrt.export.provenance import git_revision, versions
from ichrt.export.samples import count_by_source
from ichrt.export.splits import grouped_split, leaked_groups
from ichrt.export.torchdata import (
    BOXES,
    MASK,
    EpochSampler,
    SliceDataset,
    SliceStore,
    balance_weights,
    donor_bank,
    make_loader,
)
from ichrt.nets import IchNet, LesionNet, build_model
from ichrt.runtime.contract import DEFAULT_WINDOWS, LABELS, ModelContract
from ichrt.runtime.metrics import roc_auc, sensitivity_specificity

RUN_JSON, CHECKPOINT, BEST, METRICS = "run.json", "checkpoint.pt", "best.pt", "metrics.jsonl"
CHECKPOINT_FORMAT = "ichrt-train-checkpoint-1"
HEADS = {"multi": LABELS, "any": LABELS[:1]}
SCHEDULES = ("onecycle", "cosine")


@dataclass
class TrainConfig:
    """Hyperparameters and preprocessing of a run (recorded in ``run.json`` and checkpoints)."""

    arch: str = "resnet18"
    #: ``"multi"``: any + 5 subtypes; ``"any"``: the seed's binary head.
    head: str = "multi"
    image_size: int = 224
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    framing: str = "head"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    schedule: str = "onecycle"
    #: An :data:`~ichrt.export.augment.PRESETS` name, ``"none"``, or ``"module:attribute"`` of an
    #: :class:`~ichrt.export.augment.AugmentConfig` (e.g. one with source-specific HU hooks).
    augment: str = "default"
    #: Sampling balance (:func:`~ichrt.export.torchdata.balance_weights`): none, class, source.
    balance: str = "class"
    pos_weight: float = 1.0
    #: Weight of the CAM localization term (0 = off).
    loc_weight: float = 0.0
    #: Weight of the lesion-map terms of dense models (:func:`lesion_loss`).
    seg_weight: float = 1.0
    #: Probability of pasting a real bleed into a negative slice (:mod:`ichrt.export.insertion`).
    insert_p: float = 0.0
    #: Probability of adding a hard negative (scalp blood, skull defect, streaks, objects...).
    hard_p: float = 0.0
    #: Appearance augmentation (gamma, kernels, JPEG, low resolution, burned-in text).
    appearance: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    #: Stop after this many optimizer steps in all (smoke runs); the schedules keep their full
    #: length, so a resumed run continues exactly where an uninterrupted one would be.
    max_steps: int | None = None
    checkpoint_every: int = 200
    threshold: float = 0.5
    init_weights: str | None = None
    name: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        return HEADS[self.head]

    def contract(self) -> ModelContract:
        """The preprocessing contract the model is trained under (completed at export)."""
        return ModelContract(
            labels=self.labels, windows=tuple(tuple(w) for w in self.windows),
            input_size=self.image_size, mean=tuple(self.mean), std=tuple(self.std),
            framing=self.framing, thresholds={"any": self.threshold}, arch=self.arch,
            name=self.name or f"ichrt-{self.arch}-{self.image_size}",
        )


@dataclass
class Stage:
    """One training stage: data, epochs and (optionally) its own learning rate."""

    data: list[DataSpec]
    epochs: int
    lr: float | None = None
    val_data: list[DataSpec] = field(default_factory=list)
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "lr": self.lr,
                "data": [d.to_dict() for d in self.data],
                "val_data": [d.to_dict() for d in self.val_data]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stage:
        def specs(items: list) -> list[DataSpec]:
            return [DataSpec(path=x["path"], format=x.get("format", "rsna"),
                             source=x.get("source", ""), options=x.get("options", {}),
                             weight=float(x.get("weight", 1.0)))
                    for x in items]
        return cls(data=specs(d["data"]), epochs=int(d["epochs"]), lr=d.get("lr"),
                   val_data=specs(d.get("val_data", [])), name=d.get("name", ""))


def load_recipe(path: str | Path) -> list[Stage]:
    """Stages from a JSON recipe: ``{"stages": [{"epochs": 2, "data": [{"path": ..., "format":
    ..., "source": ..., "options": {...}}], "lr": ..., "val_data": [...]}, ...]}``."""
    doc = json.loads(Path(path).read_text())
    stages = [Stage.from_dict(s) for s in doc.get("stages", [])]
    if not stages:
        raise ValueError(f"{path}: a recipe needs a non-empty 'stages' list")
    return stages


# -- loss and metrics --------------------------------------------------------------------------

def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the known targets; NaN targets are ignored.

    Returns 0 (with a gradient path) when a batch has no known target.
    """
    known = ~torch.isnan(targets)
    safe = torch.where(known, targets, torch.zeros_like(targets))
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, safe, reduction="none", pos_weight=weight)
    return (loss * known).sum() / known.sum().clamp_min(1)


def cam_share_loss(
    model: IchNet, features: torch.Tensor, regions: torch.Tensor, use: torch.Tensor
) -> torch.Tensor:
    """1 - share of the ``any`` CAM's positive energy inside the lesion region, mean over ``use``.

    Zero when no row is used or the head has no CAM form.
    """
    cams = torch_cam_maps(model, features)
    if cams is None or not bool(use.any()):
        return features.sum() * 0.0
    cam = F.relu(cams[use, 0].float())
    region = F.adaptive_avg_pool2d(regions[use][:, None].float(), cam.shape[-2:])[:, 0]
    share = (cam * region).sum(dim=(1, 2)) / (cam.sum(dim=(1, 2)) + 1e-6)
    return (1.0 - share).mean()


def lesion_loss(
    lesion: torch.Tensor, pooled: torch.Tensor, regions: torch.Tensor, kinds: torch.Tensor,
    y_any: torch.Tensor,
) -> torch.Tensor:
    """Dense supervision of a lesion map (N, 1, h, w) from whatever a slice has.

    - negatives (``any`` = 0) of every source: an empty map (pixel BCE against 0);
    - positives with a pixel mask: pixel BCE against the mask (area-pooled to the map) + soft Dice;
    - positives with boxes only (weak): pixel BCE against 0 outside the boxes, nothing inside;
    - every slice with a known ``any``: BCE of the top-k pooled map logit (multiple-instance:
      a bleeding slice has a bleeding region, a normal one has none).
    Positives without a mask or box (e.g. RSNA200) supervise only the pooled logit.
    """
    lesion = lesion.float()
    target = F.adaptive_avg_pool2d(regions[:, None].float(), lesion.shape[-2:])
    known = ~torch.isnan(y_any)
    y = torch.where(known, y_any, torch.zeros_like(y_any))
    neg = known & (y < 0.5)
    pos = known & (y >= 0.5)
    pos_mask = pos & (kinds == MASK)
    pos_box = pos & (kinds == BOXES)
    full = (neg | pos_mask).float()[:, None, None, None]
    outside = pos_box.float()[:, None, None, None] * (target <= 0).float()
    weight = full + outside
    pix_target = target * pos_mask.float()[:, None, None, None]
    bce = F.binary_cross_entropy_with_logits(lesion, pix_target, weight=weight, reduction="sum")
    # Per-pixel terms are averaged per slice, so a large map does not outweigh the slice terms.
    loss = bce / (weight.sum() / weight[0].numel()).clamp_min(1.0) / weight[0].numel()
    if bool(pos_mask.any()):
        p = torch.sigmoid(lesion[pos_mask])
        t = target[pos_mask]
        inter = (p * t).sum(dim=(1, 2, 3))
        dice = 1.0 - (2.0 * inter + 1.0) / (p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3)) + 1.0)
        loss = loss + dice.mean()
    if bool(known.any()):
        loss = loss + F.binary_cross_entropy_with_logits(pooled[known].float(), y[known])
    return loss


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def evaluation_metrics(
    labels: np.ndarray, probs: np.ndarray, sources: Sequence[str], names: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """AUC per label, sensitivity/specificity at ``threshold`` per label, per-source AUC(any).

    NaN (a class absent) becomes None so the result is valid JSON.
    """
    auc, sens, spec = {}, {}, {}
    for k, name in enumerate(names):
        auc[name] = _finite(roc_auc(labels[:, k], probs[:, k]))
        se, sp = sensitivity_specificity(labels[:, k], probs[:, k], threshold)
        sens[name], spec[name] = _finite(se), _finite(sp)
    per_source = {}
    src = np.asarray(sources)
    for s in sorted(set(sources)):
        rows = src == s
        y = labels[rows, 0]
        per_source[s] = {"n": int(rows.sum()), "positives": int(np.nansum(y >= 0.5)),
                         "auc_any": _finite(roc_auc(y, probs[rows, 0]))}
    return {"auc": auc, "threshold": threshold, "sensitivity": sens, "specificity": spec,
            "per_source": per_source}


# -- the run -----------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to torch")
    return torch.device(name)


def resolve_augment(name: str) -> AugmentConfig | None:
    """An augmentation config from a preset name, ``"none"`` or ``"module:attribute"``."""
    if name == "none":
        return None
    if name in PRESETS:
        return PRESETS[name]
    if ":" in name:
        import importlib

        module, attr = name.split(":", 1)
        cfg = getattr(importlib.import_module(module), attr)
        if not isinstance(cfg, AugmentConfig):
            raise ValueError(f"augment {name!r} is not an AugmentConfig")
        return cfg
    raise ValueError(f"unknown augment {name!r}; presets: none, {', '.join(PRESETS)}")


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write(text: str, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Position:
    """Where a run stands: the next batch to train is batch ``step`` of ``epoch`` of ``stage``."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0


class Trainer:
    """One run: model, data per stage, checkpoints. Use :func:`train` for the whole thing."""

    def __init__(
        self, config: TrainConfig, stages: list[Stage], run_dir: str | Path,
        command: str | None = None, progress: bool = True,
        augment: AugmentConfig | None = None,
    ) -> None:
        if config.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {config.head!r}")
        if config.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}")
        if not stages or any(s.epochs < 1 or not s.data for s in stages):
            raise ValueError("every stage needs data and at least one epoch")
        self.config, self.stages = config, stages
        self.run_dir = Path(run_dir)
        self.command, self.progress = command, progress
        self.augment = augment if augment is not None else resolve_augment(config.augment)
        self.contract = config.contract()
        self.device = resolve_device(config.device)
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.model = build_model(config.arch, len(config.labels))
        self.init_report: dict[str, int] | None = None
        if config.init_weights:
            rep = load_weights(self.model, config.init_weights)
            self.init_report = {k: len(v) for k, v in rep.items()}
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.position = Position()
        self._stores: dict[str, SliceStore] = {}
        self._data_summary: dict[str, Any] = {}
        self._git = git_revision()

    # -- data ----------------------------------------------------------------------------------
    def _store(self, spec: DataSpec) -> SliceStore:
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._stores:
            from tqdm import tqdm

            with tqdm(desc=f"loading {spec.source_name}", unit="slice", file=sys.stderr,
                      disable=not self.progress, leave=False) as bar:
                self._stores[key] = SliceStore.from_samples(iter_spec(spec), progress=bar.update)
            if len(self._stores[key]) == 0:
                raise ValueError(f"{spec.path}: no labelled slices")
        return self._stores[key]

    def stage_data(self, stage: Stage) -> tuple[SliceStore, SliceStore]:
        """(train, validation) stores of a stage, split by group."""
        train_parts, val_parts = [], []
        frac = 0.0 if stage.val_data else self.config.val_fraction
        for spec in stage.data:
            store = self._store(spec)
            tr, va = grouped_split(store.groups, store.sources, store.labels[:, 0], frac,
                                   self.config.seed)
            leaked = leaked_groups(store.groups, store.sources, tr, va)
            if leaked:  # cannot happen by construction; a guard against future edits
                raise AssertionError(f"groups on both sides of the split: {len(leaked)}")
            train_parts.append(store.subset(tr))
            val_parts.append(store.subset(va))
        val_parts += [self._store(spec) for spec in stage.val_data]
        train, val = SliceStore.concat(train_parts), SliceStore.concat(val_parts)
        self._data_summary[stage.name or f"stage{self.stages.index(stage) + 1}"] = {
            "train": _counts(train), "val": _counts(val)}
        return train, val

    # -- optimization --------------------------------------------------------------------------
    def _optimizer(self, stage: Stage, total_steps: int):
        lr = stage.lr or self.config.lr
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr,
                                weight_decay=self.config.weight_decay)
        if self.config.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=max(total_steps, 2), pct_start=0.15)
        else:
            warm = max(1, min(200, total_steps // 20))

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                t = (step - warm) / max(1, total_steps - warm)
                return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return opt, sched

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, : len(self.config.labels)]

    def _step(self, batch: dict[str, torch.Tensor], opt, scaler) -> float:
        cfg = self.config
        x = batch["image"].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = self._targets(batch["labels"].to(self.device))
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            if isinstance(self.model, LesionNet):
                logits, feats, lesion, pooled = self.model.forward_dense(x)
            else:
                (logits, feats), lesion = self.model.forward_all(x), None
            loss = masked_bce(logits.float(), y, cfg.pos_weight)
            if lesion is not None and cfg.seg_weight > 0:
                loss = loss + cfg.seg_weight * lesion_loss(
                    lesion, pooled, batch["region"].to(self.device),
                    batch["region_kind"].to(self.device), y[:, 0])
            if cfg.loc_weight > 0:
                use = batch["has_region"].to(self.device) & (y[:, 0] >= 0.5)
                loss = loss + cfg.loc_weight * cam_share_loss(
                    self.model, feats, batch["region"].to(self.device), use)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, store: SliceStore) -> tuple[np.ndarray, float]:
        """(probabilities (N, labels), mean masked loss) on a store, without augmentation."""
        self.model.eval()
        ds = SliceDataset(store, self.contract, augment=None)
        loader = make_loader(ds, self.config.batch_size, workers=self.config.workers)
        probs, loss_sum, count = [], 0.0, 0
        for batch in loader:
            x = batch["image"].to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype,
                                enabled=self.amp_dtype is not None):
                logits = self.model(x).float()
            y = self._targets(batch["labels"].to(self.device))
            known = int((~torch.isnan(y)).sum())
            loss_sum += float(masked_bce(logits, y, self.config.pos_weight)) * known
            count += known
            probs.append(torch.sigmoid(logits).cpu().numpy())
        self.model.train()
        return np.concatenate(probs), loss_sum / max(count, 1)

    def validate(self, val: SliceStore) -> dict[str, Any]:
        if len(val) == 0:
            return {"val_loss": None}
        probs, loss = self.predict(val)
        labels = val.labels[:, : len(self.config.labels)]
        return {"val_loss": loss, "n_val": len(val),
                **evaluation_metrics(labels, probs, val.sources, self.config.labels,
                                     self.config.threshold)}

    # -- persistence ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """What export needs besides the weights: config, contract, provenance."""
        return {
            "config": asdict(self.config),
            "contract": self.contract.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "provenance": {
                "data": self._data_summary,
                "stages": [s.to_dict() for s in self.stages],
                "command": self.command,
                "git": self._git,
                "augment": repr(self.augment),
                "seed": self.config.seed,
                "init_weights": self.config.init_weights,
                "init_report": self.init_report,
                "class_mapping": {d.source_name: m for s in self.stages for d in s.data
                                  if (m := class_mapping(d)) is not None},
            },
            "versions": versions(),
        }

    def _save(self, opt, sched, scaler, stage_index: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "meta": self.meta(),
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "optimizer_stage": stage_index,
            "position": asdict(self.position),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "history": self.history,
            "best": self.best,
        }
        _atomic_save(state, self.run_dir / CHECKPOINT)
        _atomic_write("".join(json.dumps(h) + "\n" for h in self.history),
                      self.run_dir / METRICS)

    def _record(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        score = (metrics.get("auc") or {}).get("any")
        key = score if score is not None else -(metrics.get("val_loss") or 0.0)
        if self.best is None or key > self.best["key"]:
            self.best = {"key": key, "metrics": metrics}
            _atomic_save({"format": CHECKPOINT_FORMAT, "meta": self.meta(),
                          "model": self.model.state_dict(), "metrics": metrics},
                         self.run_dir / BEST)

    def resume(self) -> dict[str, Any]:
        """Load ``checkpoint.pt``; returns it (optimizer state is applied by :meth:`run`)."""
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not an ichrt training checkpoint")
        saved = state["meta"]["config"]
        for key in ("arch", "head", "image_size", "windows", "framing", "seed", "batch_size"):
            if _norm(saved[key]) != _norm(asdict(self.config)[key]):
                raise ValueError(f"{path}: checkpoint has {key}={saved[key]!r}, this run "
                                 f"{asdict(self.config)[key]!r}; resume with the same settings")
        self.model.load_state_dict(state["model"])
        self.position = Position(**state["position"])
        self.history, self.best = list(state["history"]), state["best"]
        self._data_summary = dict(state["meta"]["provenance"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return state

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train through every stage; returns the last validation metrics."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self.resume() if resume else None
        cfg, pos = self.config, self.position
        last: dict[str, Any] = self.history[-1] if self.history else {}
        self.model.train()
        for s in range(pos.stage, len(self.stages)):
            stage = self.stages[s]
            train_store, val_store = self.stage_data(stage)
            self._write_run_json()
            dense = isinstance(self.model, LesionNet)
            insertion = None
            if cfg.insert_p > 0 or cfg.hard_p > 0:
                insertion = InsertionConfig(donor_bank(train_store), cfg.insert_p, cfg.hard_p)
                self._data_summary.setdefault("insertion", {})[stage.name or str(s)] = {
                    "donors": len(insertion.bank), "p_insert": cfg.insert_p,
                    "p_hard": cfg.hard_p}
            dataset = SliceDataset(train_store, self.contract, self.augment,
                                   with_regions=cfg.loc_weight > 0 or dense, insertion=insertion,
                                   look=AppearanceConfig() if cfg.appearance else None)
            shares = {d.source_name: d.weight for d in stage.data}
            sampler = EpochSampler(len(train_store), weights=balance_weights(train_store,
                                                                            cfg.balance, shares),
                                   seed=(cfg.seed, s))
            steps_per_epoch = math.ceil(len(train_store) / cfg.batch_size)
            opt, sched = self._optimizer(stage, steps_per_epoch * stage.epochs)
            scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
            if state is not None and state["optimizer_stage"] == s and (pos.epoch or pos.step):
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                if scaler is not None and state["scaler"] is not None:
                    scaler.load_state_dict(state["scaler"])
            state = None
            for epoch in range(pos.epoch, stage.epochs):
                if cfg.max_steps is not None and pos.global_step >= cfg.max_steps:
                    return last
                sampler.set_epoch(epoch, skip=pos.step * cfg.batch_size)
                seen, seconds = self._epoch(dataset, sampler, opt, sched, scaler,
                                            desc=f"stage {s + 1}/{len(self.stages)} epoch "
                                                 f"{epoch + 1}/{stage.epochs}")
                stopped = cfg.max_steps is not None and pos.global_step >= cfg.max_steps
                last = {"stage": s, "stage_name": stage.name, "epoch": epoch,
                        "global_step": pos.global_step,
                        "complete": pos.step * cfg.batch_size >= len(train_store),
                        "train_loss": pos.loss_sum / max(pos.loss_count, 1),
                        "n_train": len(train_store), "lr": sched.get_last_lr()[0],
                        "seconds": seconds, "images_per_s": seen / seconds if seconds else None,
                        **self.validate(val_store)}
                self._record(last)
                if stopped and not last["complete"]:
                    self._save(opt, sched, scaler, s)
                    return last
                pos.epoch, pos.step, pos.loss_sum, pos.loss_count = epoch + 1, 0, 0.0, 0
                if pos.epoch == stage.epochs:
                    pos.stage, pos.epoch = s + 1, 0
                self._save(opt, sched, scaler, s)
        return last

    def _epoch(self, dataset: SliceDataset, sampler: EpochSampler, opt, sched, scaler,
               desc: str) -> tuple[int, float]:
        """Train the rest of one epoch (or up to ``max_steps``); returns (images, seconds)."""
        from tqdm import tqdm

        cfg, pos = self.config, self.position
        loader = make_loader(dataset, cfg.batch_size, sampler, cfg.workers,
                             pin_memory=self.device.type == "cuda")
        started, seen = time.perf_counter(), 0
        with tqdm(loader, total=math.ceil(sampler.num_samples / cfg.batch_size),
                  initial=pos.step, file=sys.stderr, disable=not self.progress, unit="batch",
                  desc=desc) as bar:
            for batch in bar:
                n = len(batch["image"])
                loss = self._step(batch, opt, scaler)
                sched.step()
                seen += n
                pos.step += 1
                pos.global_step += 1
                pos.loss_sum += loss * n
                pos.loss_count += n
                bar.set_postfix(loss=f"{pos.loss_sum / pos.loss_count:.4f}")
                if cfg.max_steps is not None and pos.global_step >= cfg.max_steps:
                    break
                if cfg.checkpoint_every and pos.global_step % cfg.checkpoint_every == 0:
                    self._save(opt, sched, scaler, self.position.stage)
        return seen, time.perf_counter() - started

    def _write_run_json(self) -> None:
        meta = self.meta()
        _atomic_write(json.dumps(meta, indent=2, sort_keys=True, default=str),
                      self.run_dir / RUN_JSON)


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal (JSON and checkpoints turn tuples into lists)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _counts(store: SliceStore) -> dict[str, dict[str, int]]:
    return count_by_source(store.labels[:, 0], store.groups, store.sources)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch and Python; deterministic kernels on the CPU, autotuned cuDNN on CUDA."""
    random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def resume_run(run_dir: str | Path, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Continue the run in ``run_dir`` with its saved configuration and stages.

    Only settings that do not change the result may be overridden: ``max_steps``, ``workers``,
    ``device``, ``checkpoint_every``.
    """
    allowed = {"max_steps", "workers", "device", "checkpoint_every"}
    if set(overrides) - allowed:
        raise ValueError(f"cannot change {sorted(set(overrides) - allowed)} when resuming")
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
    config = TrainConfig(**{**meta["config"], **overrides})
    stages = [Stage.from_dict(s) for s in meta["stages"]]
    command = meta["provenance"].get("command")
    return train(config, stages, run_dir, resume=True, command=command, progress=progress)


def train(
    config: TrainConfig,
    stages: list[Stage],
    run_dir: str | Path,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
    augment: AugmentConfig | None = None,
) -> dict[str, Any]:
    """Train a model through ``stages`` into ``run_dir``; returns the last validation metrics.

    ``augment`` overrides ``config.augment`` with a ready :class:`AugmentConfig` (Python API).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    device = resolve_device(config.device)
    seed_everything(config.seed, device)
    try:
        trainer = Trainer(config, stages, run_dir, command=command, progress=progress,
                          augment=augment)
        return trainer.run(resume=resume)
    finally:
        torch.use_deterministic_algorithms(previous)
