"""The segmentation training loop: iteration-based, on the classification trainer's machinery (batch plans,
torchrun DDP, atomic checkpoints with every process's RNG state, run files, TensorBoard, progress).

Data flow: data (digit scenes or ADE20K layout) -> segmenter (random, or the backbone from classification weights)
-> batch plan, step sampler and loaders -> AdamW with layer-wise lr decay, warm-up + cosine per step -> (resume) ->
steps; every ``eval_every`` steps and at the end: validation, checkpoint, files -> final weights, summary.json.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.folder import BadFile
from ..io_utils import write_json
from ..precision import amp_dtype, autocast
from ..train import run_files
from ..train.batching import plan_batches
from ..train.distributed import DistEnv, ShardedEvalSampler, all_gather_objects, all_reduce_sum, training_process
from ..train.errors import Diverged
from ..train.optim import current_lr, optimizer_step
from ..train.state import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything
from .data import IGNORE_INDEX, check_bad_samples, collate_samples
from .files import CHECKPOINT, MODEL_FINAL, save_segmenter
from .inference import InferenceSettings, evaluate
from .metric import SegmentationMetric
from .optim import create_optimizer
from .segmenter import Segmenter, create_segmenter
from .sources import SeededSamples, StepSampler, build_seg_data
from .train_config import RELEASED, SegTrainConfig

logger = logging.getLogger(__name__)

TENSORBOARD_EVERY = 10
MAX_NONFINITE_IN_A_ROW = 20  # non-finite losses are skipped (official recipe); this many in a row end the run


def sync_batchnorm(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm for data-parallel GPU training (statistics over the global batch; PyTorch's
    SyncBatchNorm runs on GPUs only, so CPU processes keep per-process statistics)."""
    if env.distributed and env.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if env.distributed:
        logger.warning("BatchNorm statistics stay per process: SyncBatchNorm needs GPUs")
    return model


class SegTrainer:
    def __init__(self, config: SegTrainConfig, run_dir, env: DistEnv, resume: bool = False, progress=None):
        self.config, self.env, self.run_dir = config, env, Path(run_dir)
        self.progress = progress if env.is_main else None
        self.device = env.device
        self.amp_dtype = amp_dtype(config.precision, self.device)
        self._check_run_dir(resume)
        seed_everything(config.seed)
        self.data = build_seg_data(config, self.run_dir)
        self.model = self._build_model().to(self.device)
        if config.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.plan = plan_batches(config.batch_size, env.world_size, config.max_device_batch_size)
        self.optimizer = create_optimizer(
            self.model, config.scaled_lr(), config.weight_decay, config.betas, config.layer_decay
        )
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=config.iters - config.warmup_iters,
            lr_min=config.min_lr,
            warmup_t=config.warmup_iters,
            warmup_lr_init=config.warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.step, self.seconds = 0, 0.0
        self.nonfinite = self.nonfinite_total = 0  # non-finite losses: in a row, and in all
        self.history: list[dict] = []
        self.skipped = {bad.path: bad.reason for bad in self.data.skipped}
        if resume:
            self._resume()
        else:
            seed_everything(config.seed + env.rank)
        self.forward_model = self._wrap_model()
        self.tensorboard = self._open_tensorboard(purge_step=self.step if resume else None)
        if env.is_main:
            write_json(self.run_dir / run_files.CONFIG, {"config": config.to_dict(), "run": self.facts()})

    # ----------------------------------------------------------------------------------------------------------
    # setup

    def _check_run_dir(self, resume: bool) -> None:
        checkpoint = self.run_dir / CHECKPOINT
        if resume and not checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        if not resume and checkpoint.exists():
            raise ValueError(f"{self.run_dir} already holds a run; continue it with --resume, or choose another --out")

    def _build_model(self) -> Segmenter:
        c = self.config
        pretrained = True if c.init == RELEASED else (c.init or False)
        model = create_segmenter(
            c.model, len(self.data.classes), pretrained=pretrained, img_size=c.crop_size, **c.model_args
        )
        return sync_batchnorm(model, self.env)

    def _wrap_model(self) -> torch.nn.Module:
        model = self.model
        if self.env.distributed:
            model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.ddp_model = model
        return torch.compile(model) if self.config.compile else model

    def _loaders(self):
        c, env = self.config, self.env
        sampler = StepSampler(
            len(self.data.train), self.plan.global_batch, env.rank, env.world_size, c.seed, self.step, c.iters
        )
        # the loaders get their own generators: drawing their seeds from the global RNG would make dropout depend on
        # when loaders were created (a resumed run creates one more)
        train = DataLoader(
            SeededSamples(self.data.train, c.seed),
            batch_size=self.plan.device_batch,
            sampler=sampler,
            num_workers=c.workers,
            collate_fn=collate_samples,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(c.seed),
        )
        return train

    def _val_loader(self) -> DataLoader:
        sampler = ShardedEvalSampler(len(self.data.val), self.env.rank, self.env.world_size)
        return DataLoader(
            self.data.val,
            batch_size=self.config.eval_batch_size,
            sampler=sampler,
            num_workers=self.config.workers,
            collate_fn=collate_samples,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _open_tensorboard(self, purge_step: int | None):
        return run_files.open_tensorboard(self.run_dir, purge_step) if self.env.is_main else None

    def facts(self) -> dict:
        return dict(
            segmenter_config=self.model.config.to_dict(),
            params=self.model.count_parameters(),
            params_with_aux=self.model.count_parameters(aux=True),
            classes=self.data.classes,
            dataset=self.data.name,
            train_images=len(self.data.train),
            val_images=len(self.data.val),
            world_size=self.env.world_size,
            device=str(self.device),
            amp_dtype=str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "float32",
            peak_lr=self.config.scaled_lr(),
            batch_plan=self.plan.describe(),
            torch_version=torch.__version__,
            threads=torch.get_num_threads(),
        )

    # ----------------------------------------------------------------------------------------------------------
    # resume and checkpoints

    def _resume(self) -> None:
        payload = load_checkpoint(self.run_dir / CHECKPOINT)
        if payload["segmenter_config"] != self.model.config.to_dict():
            raise ValueError(f"the checkpoint in {self.run_dir} holds another segmenter than this run's config")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("grad_scaler"):
            self.scaler.load_state_dict(payload["grad_scaler"])
        self.step, self.seconds = payload["step"], payload["seconds"]
        self.nonfinite, self.nonfinite_total = payload["nonfinite"]
        self.history = payload["history"]
        self.skipped.update(dict(payload["skipped"]))
        rng = payload["rng"]
        if len(rng) == self.env.world_size:
            restore_rng(rng[self.env.rank])
        else:
            logger.warning("resuming with %d processes instead of %d: new dropout seeds", self.env.world_size, len(rng))
            seed_everything(self.config.seed + 1000 * self.step + self.env.rank)
        logger.info("resumed %s after step %d", self.run_dir, self.step)

    def _save_checkpoint(self) -> None:
        rng_states = all_gather_objects(capture_rng(), self.env)
        for found in all_gather_objects(sorted(self.skipped.items()), self.env):
            self.skipped.update(found)
        if not self.env.is_main:
            return
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            dict(
                step=self.step,
                seconds=self.seconds,
                nonfinite=[self.nonfinite, self.nonfinite_total],
                history=self.history,
                model=self.model.state_dict(),
                segmenter_config=self.model.config.to_dict(),
                optimizer=self.optimizer.state_dict(),
                grad_scaler=self.scaler.state_dict() if self.scaler is not None else None,
                rng=rng_states,
                skipped=[[p, r] for p, r in self.skipped.items()],
                classes=self.data.classes,
                mean=self.data.mean,
                std=self.data.std,
                dataset=self.data.name,
                inference=self.inference(),
                config=self.config.to_dict(),
            ),
        )

    # ----------------------------------------------------------------------------------------------------------
    # training

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to ``config.iters`` steps (or to step ``stop_after``, checkpointed, for a later resume)."""
        c = self.config
        end = c.iters if stop_after is None else min(stop_after, c.iters)
        if self.progress is not None:
            self.progress.run_started(self.facts(), self.step, c.iters)
        batches = iter(self._loaders())
        start = time.perf_counter()
        try:
            while self.step < end:
                self.scheduler.step_update(self.step)
                self._train_step(batches)
                if self.step % c.eval_every == 0 or self.step in (end, c.iters):
                    self.seconds += time.perf_counter() - start
                    self._validate_and_save()
                    start = time.perf_counter()
        finally:
            if self.progress is not None:
                self.progress.close()
        finished = self.step >= c.iters
        if finished and self.env.is_main:
            save_segmenter(
                self.run_dir / MODEL_FINAL,
                self.model,
                self.data.classes,
                self.data.mean,
                self.data.std,
                self.data.name,
                self.inference(),
            )
        summary = self.summary(finished)
        if self.env.is_main:
            write_json(self.run_dir / run_files.SUMMARY, summary)
            if self.tensorboard is not None:
                self.tensorboard.close()
        return summary

    def _train_step(self, batches) -> None:
        self.forward_model.train()
        step_loss, step_count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for micro in range(self.plan.accumulation):
            images, masks, bad = next(batches)
            self._note_skipped(check_bad_samples(bad))
            if not len(images):
                continue
            loss = self._forward_backward(images, masks, last=micro == self.plan.accumulation - 1)
            step_loss += loss.detach().double() * len(images)
            step_count += len(images)
        step_loss = step_loss.item() / max(step_count, 1)
        if not math.isfinite(step_loss):  # skipped, as the official recipe; the scaler would skip fp16 overflows too
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            self.nonfinite_total += 1
            if self.nonfinite >= MAX_NONFINITE_IN_A_ROW:
                raise Diverged(
                    f"{self.nonfinite} non-finite losses in a row at step {self.step + 1}; the last good state is in "
                    f"{self.run_dir / CHECKPOINT}. Lower the learning rate (--set lr=...)."
                )
        else:
            self.nonfinite = 0
            self._optimizer_step()
        self.step += 1
        if self.tensorboard is not None and self.step % TENSORBOARD_EVERY == 0 and math.isfinite(step_loss):
            self.tensorboard.add_scalar("train/loss", step_loss, self.step)
            self.tensorboard.add_scalar("train/lr", current_lr(self.optimizer), self.step)
        if self.progress is not None:
            self.progress.step(step_loss, current_lr(self.optimizer))

    def _forward_backward(self, images, masks, last: bool) -> torch.Tensor:
        images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
        sync = last or not self.env.distributed
        with self.ddp_model.no_sync() if not sync else contextlib.nullcontext():
            with autocast(self.device, self.amp_dtype):
                logits, aux = self.forward_model(images, with_aux=True)
            loss = _cross_entropy(logits, masks)
            if aux is not None:
                loss = loss + self.config.aux_weight * _cross_entropy(aux, masks)
            scaled = loss / self.plan.accumulation
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss

    def _optimizer_step(self) -> None:
        optimizer_step(self.optimizer, self.scaler, self.model.parameters(), self.config.clip_grad)

    def _note_skipped(self, bad) -> None:
        for item in bad:
            if item.path not in self.skipped:
                logger.warning("skipping %s: %s", item.path, item.reason)
                self.skipped[item.path] = item.reason

    # ----------------------------------------------------------------------------------------------------------
    # validation and files

    def inference(self) -> dict:
        c = self.config
        return dict(scale=list(c.scale), mode=c.eval_mode, crop_size=c.crop_size, stride=c.eval_stride)

    def _validate_and_save(self) -> None:
        c = self.config
        settings = InferenceSettings(mode=c.eval_mode, crop_size=c.crop_size, stride=c.eval_stride)
        metrics = evaluate(self.model, self._val_loader(), self.device, self.amp_dtype, settings, self.data.classes)
        self._note_skipped(metrics["skipped"])
        areas = torch.tensor(all_reduce_sum(metrics["areas"].flatten().tolist(), self.env)).view(3, -1)
        merged = SegmentationMetric(len(self.data.classes))
        merged.merge(areas.double())
        result = merged.compute(self.data.classes)
        row = dict(
            step=self.step,
            lr=current_lr(self.optimizer),
            miou=result["miou"],
            aacc=result["aacc"],
            macc=result["macc"],
            seconds=self.seconds,
            iou=result["iou"],
        )
        self.history.append(row)
        self._save_checkpoint()
        if not self.env.is_main:
            return
        run_files.write_history(self.run_dir, [{k: v for k, v in r.items() if k != "iou"} for r in self.history])
        run_files.write_skipped(self.run_dir, [BadFile(p, r) for p, r in self.skipped.items()])
        if self.tensorboard is not None:
            for key in ("miou", "aacc", "macc"):
                if row[key] is not None:
                    self.tensorboard.add_scalar(f"val/{key}", row[key], self.step)
            self.tensorboard.flush()
        write_json(self.run_dir / run_files.SUMMARY, self.summary(finished=False))
        if self.progress is not None:
            self.progress.evaluated(row)

    def summary(self, finished: bool) -> dict:
        last = self.history[-1] if self.history else {}
        summary = dict(
            miou=last.get("miou"),
            aacc=last.get("aacc"),
            macc=last.get("macc"),
            iou=last.get("iou"),
            iters=self.config.iters,
            iters_completed=self.step,
            seconds=self.seconds,
            finished=finished,
            eval_mode=self.config.eval_mode,
            skipped_files=len(self.skipped),
            nonfinite_steps_skipped=self.nonfinite_total,
            recipe=self.config.recipe,
        )
        summary.update(self.facts())
        del summary["classes"]
        return summary


def _cross_entropy(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over the labelled pixels (0 if a batch has none)."""
    labelled = (masks != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum") / labelled


def train_segmenter(config: SegTrainConfig, run_dir, resume: bool = False, progress=None, stop_after=None) -> dict:
    """Train a segmentation run in this process, joining torchrun's process group if there is one."""
    with training_process(config.threads, config.device) as env:
        return SegTrainer(config, run_dir, env, resume=resume, progress=progress).fit(stop_after)
