"""The training loop: one run from a TrainConfig to a run directory, on one process or many (torchrun).

Data flow: data splits -> model (new, or pretrained and adapted) -> batch plan and loaders -> optimizer, schedule,
mixing, EMA -> (resume) -> per epoch: train steps, validation, checkpoint and files -> final weights -> the test split
scored once with the weights selected on validation -> summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..data.folder import BadFile, collate_skipping_bad_files
from ..data.sources import build_data_splits
from ..models.config import ViLConfig
from ..models.vision_lstm import VisionLSTM
from ..precision import amp_dtype, autocast
from ..utils.optional import EXTRA, available
from ..weights.classifier import load_classifier, save_classifier
from . import run_files
from .batching import plan_batches
from .config import TrainConfig
from .distributed import DistEnv, ShardedEvalSampler, all_gather_objects, all_reduce_sum, training_process
from .errors import Diverged, OutOfMemory
from .evaluate import evaluate
from .model_setup import ADAPTABLE_FIELDS, adapt_pretrained, run_model_config
from .optim import create_optimizer, create_scheduler, current_lr, optimizer_step
from .recipes import NEEDS_INIT
from .state import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything

logger = logging.getLogger(__name__)

TENSORBOARD_EVERY = 10  # optimizer steps between TensorBoard points of the training loss and lr
# Config fields a resumed checkpoint need not share with the run: those fine-tuning adapts, but the classes (the head)
RESUME_ADAPTABLE_FIELDS = tuple(name for name in ADAPTABLE_FIELDS if name != "num_classes")
PLOT_EVERY_SECONDS = 60.0  # curves.png is redrawn at most this often (a plot takes ~0.3 s) and at the end


class Trainer:
    """Sets up a run (``__init__``) and trains it (``fit``). Rank 0 writes the run directory."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, env: DistEnv, resume: bool = False, progress=None):
        self.config, self.env, self.run_dir = config, env, Path(run_dir)
        self.progress = progress if env.is_main else None
        self.device = env.device
        self.amp_dtype = amp_dtype(config.precision, self.device)
        self._check_run_dir(resume)
        seed_everything(config.seed)

        self.data = build_data_splits(config.data, config.img_size, config.augmentation, **_augment_args(config))
        self.model = self._build_model().to(self.device)
        if config.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.plan = plan_batches(config.batch_size, env.world_size, config.max_device_batch_size, even=config.mixing)
        self._build_loaders()
        self.optimizer = create_optimizer(self.model, config)
        self.scheduler = create_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.mixup = self._build_mixup()
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay) if config.ema_decay else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.epoch = self.step = 0
        self.seconds = 0.0
        self.history: list[dict] = []
        self.skipped: dict[str, str] = {bad.path: bad.reason for bad in self.data.skipped}
        self.best = {"val_top1": -1.0, "val_loss": math.inf, "epoch": 0}
        self.best_state: dict | None = None  # the weights of the best epoch on validation (CPU), tested at the end
        self.last_plot = -math.inf
        self.plots = available("matplotlib")
        if not self.plots and env.is_main:
            logger.warning("no %s: matplotlib is not installed (pip install 'vil[%s]')", run_files.CURVES, EXTRA)
        if resume:
            self._resume()
        else:
            seed_everything(config.seed + env.rank)  # same model on every process, different augmentations
        self.forward_model = self._wrap_model()
        self.tensorboard = self._open_tensorboard(purge_step=self.step if resume else None)
        if env.is_main:
            run_files.write_config(self.run_dir, config, self.facts())

    # ----------------------------------------------------------------------------------------------------------
    # setup

    def _check_run_dir(self, resume: bool) -> None:
        checkpoint = self.run_dir / run_files.CHECKPOINT
        if resume and not checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        if not resume and checkpoint.exists():
            raise ValueError(
                f"{self.run_dir} already holds a run ({run_files.CHECKPOINT}); continue it with --resume, "
                "or choose another --out"
            )
        if self.config.recipe in NEEDS_INIT and not self.config.init:
            raise ValueError(f"recipe {self.config.recipe!r} fine-tunes pretrained weights: pass --init FILE")

    def _build_model(self) -> VisionLSTM:
        num_classes, in_chans = len(self.data.classes), self.data.preprocessing.in_chans
        if not self.config.init:
            return VisionLSTM(run_model_config(self.config, num_classes, in_chans))
        source = load_classifier(self.config.init).model
        target = run_model_config(self.config, num_classes, in_chans, init=source.config)
        logger.info("initialised from %s", self.config.init)
        return adapt_pretrained(source, target, self.config.init)

    def _build_loaders(self) -> None:
        env, plan, workers = self.env, self.plan, self.config.workers
        # One shuffling for all world sizes: DistributedSampler permutes with (seed, epoch), and each process takes
        # every world_size-th index, so a resumed run, or one on another number of processes, sees the same batches.
        self.train_sampler = DistributedSampler(
            self.data.train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=self.config.seed,
            drop_last=True,
        )  # fmt: skip
        common = dict(
            num_workers=workers,
            collate_fn=collate_skipping_bad_files,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        self.train_loader = DataLoader(
            self.data.train, batch_size=plan.device_batch, sampler=self.train_sampler, drop_last=True, **common
        )
        self.val_loader = self._eval_loader(self.data.val, common)
        self.test_loader = self._eval_loader(self.data.test, common) if self.data.test is not None else None
        self.steps_per_epoch = len(self.train_loader) // plan.accumulation
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {len(self.data.train)} images, fewer than one global batch of "
                f"{plan.global_batch}; lower batch_size"
            )

    def _eval_loader(self, dataset, common: dict) -> DataLoader:
        sampler = ShardedEvalSampler(len(dataset), self.env.rank, self.env.world_size)
        return DataLoader(dataset, batch_size=self.plan.device_batch, sampler=sampler, **common)

    def _build_mixup(self) -> Mixup | None:
        c = self.config
        if not c.mixing:
            return None
        return Mixup(
            mixup_alpha=c.mixup, cutmix_alpha=c.cutmix, prob=c.mix_prob, switch_prob=c.mix_switch_prob,
            mode="batch", label_smoothing=c.label_smoothing, num_classes=len(self.data.classes),
        )  # fmt: skip

    def _wrap_model(self) -> torch.nn.Module:
        model = self.model
        if self.env.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        self.ddp_model = model
        return torch.compile(model) if self.config.compile else model

    def _open_tensorboard(self, purge_step: int | None):
        return run_files.open_tensorboard(self.run_dir, purge_step) if self.env.is_main else None

    def facts(self) -> dict:
        """What config.json records next to the config: how the run was laid out on this machine."""
        return dict(
            model_name=self.config.model
            or ("the --init weights" if self.config.init else f"the {self.config.recipe} recipe's model"),
            model_config=self.model.config.to_dict(),
            params=sum(p.numel() for p in self.model.parameters()),
            classes=self.data.classes,
            dataset=self.data.name,
            train_images=len(self.data.train),
            val_images=len(self.data.val),
            val_source=self.data.val_source,
            test_images=len(self.data.test) if self.data.test is not None else 0,
            world_size=self.env.world_size,
            device=str(self.device),
            amp_dtype=str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "float32",
            peak_lr=self.config.scaled_lr(),
            steps_per_epoch=self.steps_per_epoch,
            batch_plan=self.plan.describe(),
            torch_version=torch.__version__,
            threads=torch.get_num_threads(),
        )

    # ----------------------------------------------------------------------------------------------------------
    # resume

    def _resume(self) -> None:
        payload = load_checkpoint(self.run_dir / run_files.CHECKPOINT)
        saved = ViLConfig.from_dict(payload["model_config"])
        mismatch = saved.differences(self.model.config, ignore=RESUME_ADAPTABLE_FIELDS)
        if mismatch:
            details = "; ".join(f"{name}: {a!r} in the checkpoint vs {b!r}" for name, (a, b) in mismatch.items())
            raise ValueError(f"the checkpoint in {self.run_dir} holds another architecture than this run: {details}")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        if self.scaler is not None and payload.get("grad_scaler"):
            self.scaler.load_state_dict(payload["grad_scaler"])
        self.epoch, self.step, self.seconds = payload["epoch"], payload["step"], payload["seconds"]
        self.history, self.best = payload["history"], payload["best"]
        if "val_top1" not in self.best:
            raise ValueError(
                f"{self.run_dir} was trained by an older vil, without a validation split: it cannot be resumed by "
                "this one; start a new run (another --out)"
            )
        if self.best["epoch"]:
            self.best_state = load_classifier(self.run_dir / run_files.MODEL_BEST).model.state_dict()
        self.skipped.update({path: reason for path, reason in payload["skipped"]})
        rng = payload["rng"]
        if len(rng) == self.env.world_size:
            restore_rng(rng[self.env.rank])
        else:  # another number of processes: the data order is unchanged, augmentations draw new random numbers
            logger.warning(
                "resuming with %d processes instead of %d: new augmentation seeds", self.env.world_size, len(rng)
            )
            seed_everything(self.config.seed + 1000 * self.epoch + self.env.rank)
        logger.debug("resumed %s after epoch %d (step %d)", self.run_dir, self.epoch, self.step)  # progress says so

    def _checkpoint_payload(self, rng_states: list[dict]) -> dict:
        return dict(
            epoch=self.epoch, step=self.step, seconds=self.seconds, history=self.history, best=self.best,
            model=self.model.state_dict(), model_config=self.model.config.to_dict(),
            optimizer=self.optimizer.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            grad_scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=rng_states, skipped=[[path, reason] for path, reason in self.skipped.items()],
            classes=self.data.classes, preprocessing=self.data.preprocessing.to_dict(), dataset=self.data.name,
            config=self.config.to_dict(),
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------------------------
    # training

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until the configured number of epochs (or until ``stop_after_epoch``, checkpointed, to be
        continued with ``resume=True``); returns the summary (also written to summary.json).
        """
        if self.env.is_main and self.history:
            self._write_epoch_files(final=True)
        if self.progress is not None:
            self.progress.run_started(self.facts(), self.epoch)
        try:
            while self.epoch < self.config.epochs:
                self._run_epoch(self.epoch + 1, stop_after_epoch)
                if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                    break
        except torch.OutOfMemoryError as error:
            raise self._out_of_memory(error) from error
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            raise self._out_of_memory(error) from error
        finally:
            if self.progress is not None:
                self.progress.close()
        finished = self.epoch >= self.config.epochs
        if finished and self.env.is_main:
            self._save_model(run_files.MODEL_FINAL, self.model)
            if self.ema is not None:
                self._save_model(run_files.MODEL_EMA, self.ema.module)
        test = self._test() if finished else None
        summary = self.summary(finished, test)
        if self.env.is_main:
            run_files.write_summary(self.run_dir, summary)
            if self.tensorboard is not None:
                self.tensorboard.close()
        return summary

    def _run_epoch(self, epoch: int, stop_after: int | None) -> None:
        start = time.perf_counter()
        train_loss, train_seconds = self._train_epoch(epoch)
        metrics = self._evaluate(self.model)
        row = dict(
            epoch=epoch, step=self.step, lr=current_lr(self.optimizer), train_loss=train_loss,
            val_loss=metrics["loss"], val_top1=metrics["top1"], val_top5=metrics["top5"],
        )  # fmt: skip
        if self.ema is not None:
            ema_metrics = self._evaluate(self.ema.module)
            row.update(ema_val_top1=ema_metrics["top1"], ema_val_top5=ema_metrics["top5"])
        epoch_seconds = time.perf_counter() - start
        row.update(
            images_per_second=self.steps_per_epoch * self.plan.global_batch / train_seconds,
            epoch_seconds=epoch_seconds,
            skipped_files=len(self.skipped),
        )
        self.epoch, self.seconds = epoch, self.seconds + epoch_seconds
        self.history.append(row)
        # the best epoch: highest validation top-1, ties broken by the lower validation loss
        if (row["val_top1"], -row["val_loss"]) > (self.best["val_top1"], -self.best["val_loss"]):
            self.best = {"val_top1": row["val_top1"], "val_loss": row["val_loss"], "epoch": epoch}
            self.best_state = {name: t.detach().to("cpu", copy=True) for name, t in self.model.state_dict().items()}
            if self.env.is_main:  # before the checkpoint that records it, so a crash in between loses nothing
                self._save_model(run_files.MODEL_BEST, self.model)
        self._save_checkpoint()
        if self.env.is_main:
            self._write_epoch_files(final=self.epoch == self.config.epochs or self.epoch == stop_after)
            if self.progress is not None:
                self.progress.epoch_finished(row)

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training set; returns the mean training loss over all processes and the seconds."""
        self.train_sampler.set_epoch(epoch)
        self.forward_model.train()
        if self.progress is not None:
            self.progress.epoch_started(epoch, self.config.epochs, self.steps_per_epoch, self.plan.global_batch)
        start = time.perf_counter()
        loss_sum, count = 0.0, 0
        batches = iter(self.train_loader)
        # Each step's loss is read (a wait for the device) only once the next step is queued, so that a GPU never
        # idles while the host reads it; a non-finite loss then stops training one step later than it arose.
        pending = None
        for _ in range(self.steps_per_epoch):
            self.scheduler.step_update(self.step)
            step_loss, step_count = torch.zeros((), dtype=torch.float64, device=self.device), 0
            for micro in range(self.plan.accumulation):
                images, labels, bad = next(batches)
                self._note_skipped(bad)
                loss, n = self._forward_backward(images, labels, last_micro=micro == self.plan.accumulation - 1)
                step_loss += loss.detach().double() * n
                step_count += n
            self._optimizer_step()
            if pending is not None:
                loss_sum += self._finish_step(*pending)
            pending = (step_loss, step_count, self.step)
            count += step_count
        if pending is not None:
            loss_sum += self._finish_step(*pending)
        del batches  # stops loader workers still holding the dropped tail of the epoch
        total_loss, total_count = all_reduce_sum([loss_sum, float(count)], self.env)
        return total_loss / total_count, time.perf_counter() - start

    def _forward_backward(self, images, labels, last_micro: bool) -> tuple[torch.Tensor, int]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            if len(images) % 2 and len(images) > 1:  # a skipped file left an odd batch; mixing pairs the images
                images, labels = images[:-1], labels[:-1]
            if len(images) > 1:
                images, targets = self.mixup(images, labels)
            else:  # nothing to mix with: the soft-target loss gets the one-hot target
                targets = F.one_hot(labels, len(self.data.classes)).float()
        # Gradients are all-reduced once per optimizer step, on the last accumulation pass.
        sync = last_micro or not self.env.distributed
        with self.ddp_model.no_sync() if not sync else contextlib.nullcontext():
            with autocast(self.device, self.amp_dtype):
                logits = self.forward_model(images)
            loss = self._loss(logits.float(), targets)
            scaled = loss / self.plan.accumulation
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss, len(images)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            return SoftTargetCrossEntropy()(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)

    def _optimizer_step(self) -> None:
        optimizer_step(self.optimizer, self.scaler, self.model.parameters(), self.config.clip_grad)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def _finish_step(self, step_loss: torch.Tensor, step_count: int, step: int) -> float:
        """Read a step's summed loss (the one read of the step), check it and report it; -> the sum."""
        summed = step_loss.item()
        if not math.isfinite(summed):
            where = f"{self.run_dir / run_files.CHECKPOINT} (epoch {self.epoch})" if self.epoch else "no checkpoint yet"
            raise Diverged(
                f"the training loss became {summed} at step {step}; the last good state is in "
                f"{where}. Lower the learning rate (--set lr=...) or clip gradients (--set clip_grad=1.0)."
            )
        self._report_step(summed / step_count, step)
        return summed

    def _report_step(self, mean_loss: float, step: int) -> None:
        lr = current_lr(self.optimizer)
        if self.tensorboard is not None and step % TENSORBOARD_EVERY == 0:
            self.tensorboard.add_scalar("train/loss", mean_loss, step)
            self.tensorboard.add_scalar("train/lr", lr, step)
        if self.progress is not None:
            self.progress.step(mean_loss, lr)

    def _note_skipped(self, bad: list[BadFile]) -> None:
        for item in bad:
            if item.path not in self.skipped:
                logger.warning("skipping %s: %s", item.path, item.reason)
                self.skipped[item.path] = item.reason

    def _evaluate(self, model: torch.nn.Module, loader: DataLoader | None = None) -> dict:
        metrics = evaluate(model, loader or self.val_loader, self.device, self.amp_dtype, self.env)
        self._note_skipped(metrics["skipped"])
        return metrics

    def _test(self) -> dict | None:
        """The test split, scored once, with the weights of the best epoch on validation; None without a test split."""
        if self.test_loader is None:
            return None
        final = {name: t.detach().clone() for name, t in self.model.state_dict().items()}
        self.model.load_state_dict(self.best_state)
        try:
            return self._evaluate(self.model, self.test_loader)
        finally:
            self.model.load_state_dict(final)

    # ----------------------------------------------------------------------------------------------------------
    # files

    def _save_checkpoint(self) -> None:
        # every process contributes its random state; skipped files found by any process are merged
        rng_states = all_gather_objects(capture_rng(), self.env)
        for found in all_gather_objects(sorted(self.skipped.items()), self.env):
            self.skipped.update(found)
        if self.env.is_main:
            save_checkpoint(self.run_dir / run_files.CHECKPOINT, self._checkpoint_payload(rng_states))

    def _write_epoch_files(self, final: bool = False) -> None:
        run_files.write_history(self.run_dir, self.history)
        run_files.write_skipped(self.run_dir, [BadFile(p, r) for p, r in self.skipped.items()])
        if self.plots and (final or time.monotonic() - self.last_plot >= PLOT_EVERY_SECONDS):
            from .plot import plot_curves

            plot_curves(self.history, self.run_dir / run_files.CURVES)
            self.last_plot = time.monotonic()
        self._write_tensorboard_epoch(self.history[-1])
        run_files.write_summary(self.run_dir, self.summary(finished=False))

    def _write_tensorboard_epoch(self, row: dict) -> None:
        if self.tensorboard is None:
            return
        keys = (
            "train_loss",
            "val_loss",
            "val_top1",
            "val_top5",
            "ema_val_top1",
            "ema_val_top5",
            "lr",
            "images_per_second",
        )
        for key in keys:
            if row.get(key) is not None:
                self.tensorboard.add_scalar(f"epoch/{key}", row[key], row["step"])
        self.tensorboard.flush()

    def _save_model(self, name: str, model: VisionLSTM) -> None:
        save_classifier(self.run_dir / name, model, self.data.classes, self.data.preprocessing, self.data.name)

    def summary(self, finished: bool, test: dict | None = None) -> dict:
        """The outcome: ``top1``/``top5`` on the test split (scored once, with the weights of ``best_epoch``; None
        until the run has finished or when the data has no test split), ``val_*`` of the last epoch, ...
        """
        last = self.history[-1] if self.history else {}
        throughput = [row["images_per_second"] for row in self.history]
        summary = dict(
            top1=test["top1"] if test else None, top5=test["top5"] if test else None,
            test_loss=test["loss"] if test else None,
            val_top1=last.get("val_top1"), val_top5=last.get("val_top5"), val_loss=last.get("val_loss"),
            best_val_top1=self.best["val_top1"] if self.history else None, best_epoch=self.best["epoch"],
            epochs=self.config.epochs, epochs_completed=self.epoch, steps=self.step, seconds=self.seconds,
            images_per_second=sum(throughput) / len(throughput) if throughput else None,
            skipped_files=len(self.skipped), finished=finished, recipe=self.config.recipe,
        )  # fmt: skip
        if "ema_val_top1" in last:
            summary.update(ema_val_top1=last["ema_val_top1"], ema_val_top5=last["ema_val_top5"])
        summary.update(self.facts())
        del summary["classes"]
        return summary

    def _out_of_memory(self, error: BaseException) -> OutOfMemory:
        plan, device_batch = self.plan, self.plan.device_batch
        if self.epoch:
            checkpoint = self.run_dir / run_files.CHECKPOINT
            kept = f"Nothing trained is lost: the run up to epoch {self.epoch} is in {checkpoint}."
            how = f"vil train --out {self.run_dir} --resume --set max_device_batch_size={max(1, device_batch // 2)}"
        else:
            kept = "No epoch had finished yet."
            how = f"rerun with --set max_device_batch_size={max(1, device_batch // 2)}"
        advice = (
            f"Lower the images per forward pass; gradient accumulation keeps the global batch: {how}"
            if device_batch > 1
            else "Even one image per pass does not fit: use a smaller model or image size, or"
            " --set grad_checkpointing=true."
        )
        return OutOfMemory(
            f"out of memory on {self.device} with {device_batch} images per forward pass ({plan.describe()}). "
            f"{kept} {advice} (original error: {str(error).splitlines()[0][:200]})"
        )


def _augment_args(config: TrainConfig) -> dict:
    return dict(crop_scale=config.crop_scale, hflip=config.hflip, color_jitter=config.color_jitter)


def _is_out_of_memory(error: RuntimeError) -> bool:
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress=None,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train a run (see :class:`Trainer`) in this process, joining torchrun's process group if there is one."""
    with training_process(config.threads, config.device) as env:
        return Trainer(config, run_dir, env, resume=resume, progress=progress).fit(stop_after_epoch)
